"""builder: Hugging Face LLM checkpoints -> ONNX Runtime GenAI model folders.

    from builder import build, BuildOptions
    result = build(BuildOptions(model="Qwen/Qwen3-4B", precision="int4", ep="webgpu"))
    result.output, result.report["nodes"]

Per-architecture builder classes live in the `architectures` package. The
app (cli, pipeline, batch, verify) sits in this package; builder.kit holds
what families are built from.
"""

import os

# Before anything loads OpenMP (numpy's BLAS, or torch in verify): passive waiting. With
# active spinning, a 0.6B int4 build took 28.3 s instead of 5.9 s while another process
# held one of two cores; idle, the two policies measured the same.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from builder.version import __version__

__all__ = ["BuildOptions", "BuildResult", "BuilderError", "build", "__version__"]

# Loaded on first use: `import builder.kit.graph` (as architectures/ does) must not pull
# in the app, so the package's own imports stay one way (app -> architectures -> kit).
_LAZY = {
    "BuildOptions": "builder.kit.options",
    "BuilderError": "builder.kit.errors",
    "BuildResult": "builder.pipeline",
    "build": "builder.pipeline",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'builder' has no attribute {name!r}")
