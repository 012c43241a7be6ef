"""builder: Hugging Face LLM checkpoints -> ONNX Runtime GenAI model folders.

    from builder import build, BuildOptions
    result = build(BuildOptions(model="Qwen/Qwen3-4B", precision="int4", ep="webgpu"))
    result.output, result.report["nodes"]

Per-architecture builder classes live in the `architectures` package.
"""

import os

# Before torch loads OpenMP: passive waiting. With active spinning, a 0.6B int4 build
# took 28.3 s instead of 5.9 s while another process held one of two cores; idle, the
# two policies measured the same (4.5-5.5 s). Users can still set their own policy.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from builder.errors import BuilderError  # noqa: E402
from builder.options import BuildOptions  # noqa: E402
from builder.pipeline import BuildResult, build  # noqa: E402
from builder.version import __version__  # noqa: E402

__all__ = ["BuildOptions", "BuildResult", "BuilderError", "build", "__version__"]
