"""Output folder layouts: where the model, its data and its configs go.

Every format is written by the same build (one graph writer, one staging folder
that is published whole); a format only names the files and writes the configs
its runtime reads.
"""

from __future__ import annotations

from builder.formats.genai import GenaiFolder
from builder.formats.transformers_js import TransformersJsFolder

FORMATS = {"genai": GenaiFolder, "transformers.js": TransformersJsFolder}


def folder_format(arch):
    """The layout for an architecture builder's options (raises BuilderError if it cannot hold the build)."""
    return FORMATS[arch.options.format](arch)


__all__ = ["FORMATS", "GenaiFolder", "TransformersJsFolder", "folder_format"]
