"""sitecustomize.py sources for a child process that must not find some packages, whatever this venv
has: a plain install's view (no torch, no transformers), or a machine without the WebGPU plugin."""

from __future__ import annotations

import textwrap


def hiding(*packages: str, why: str = "hidden by the test") -> str:
    """A sitecustomize.py whose import hook refuses the top-level `packages` with ImportError."""
    return textwrap.dedent(f"""
        import sys

        class _Hidden:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {sorted(packages)!r}:
                    raise ImportError(f"{{name}} is {why}")
                return None

        sys.meta_path.insert(0, _Hidden())
    """)
