"""builder: Hugging Face LLM checkpoints -> ONNX Runtime GenAI model folders.

    from builder import build, BuildOptions
    result = build(BuildOptions(model="Qwen/Qwen3-4B", precision="int4", ep="webgpu"))
    result.output, result.report["nodes"]

Per-architecture builder classes live in the `architectures` package.
"""

from builder.errors import BuilderError
from builder.options import BuildOptions
from builder.pipeline import BuildResult, build
from builder.version import __version__

__all__ = ["BuildOptions", "BuildResult", "BuilderError", "build", "__version__"]
