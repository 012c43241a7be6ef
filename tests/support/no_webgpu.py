"""A sitecustomize.py for a child process where no WebGPU runtime is found, whatever this venv
has: the plugin's package cannot be imported and onnxruntime lists no built-in WebGPU provider."""

NO_WEBGPU_SITECUSTOMIZE = """
import sys

class _NoPlugin:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "onnxruntime_ep_webgpu":
            raise ImportError(f"{name} is hidden by the test")
        return None

sys.meta_path.insert(0, _NoPlugin())
import onnxruntime
_providers = onnxruntime.get_available_providers
onnxruntime.get_available_providers = lambda: [p for p in _providers() if p != "WebGpuExecutionProvider"]
"""
