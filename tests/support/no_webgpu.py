"""A sitecustomize.py for a child process where no WebGPU runtime is found, whatever this venv
has: the plugin's package cannot be imported and onnxruntime lists no built-in WebGPU provider."""

from support.hidden_modules import hiding

NO_WEBGPU_SITECUSTOMIZE = (
    hiding("onnxruntime_ep_webgpu")
    + """
import onnxruntime
_providers = onnxruntime.get_available_providers
onnxruntime.get_available_providers = lambda: [p for p in _providers() if p != "WebGpuExecutionProvider"]
"""
)
