"""Open a built folder on its execution provider, registering the WebGPU plugin EP when needed.

onnxruntime-genai >= 0.18 runs on onnxruntime >= 1.31, whose PyPI wheel has no WebGPU
EP built in: WebGPU comes as a plugin (`onnxruntime-ep-webgpu`) that every process
registers before it opens a model. The older `onnxruntime-webgpu` package (up to 1.27)
has WebGPU built in and needs no registration. Everything that runs a folder (scripts,
verify) goes through here so a missing runtime is one line saying what to install.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from pathlib import Path

from builder.interruptible import import_native
from builder.kit.errors import BuilderError
from builder.kit.genai_config import CONFIG_NAME

WEBGPU_INSTALL = (
    "pip install onnxruntime-genai onnxruntime-ep-webgpu (onnxruntime >= 1.31), and on Linux "
    "the Vulkan loader libvulkan.so.1 (Debian/Ubuntu: apt install libvulkan1)"
)
_registered: set[str] = set()


def webgpu_plugin_library() -> str | None:
    """Path of the installed WebGPU plugin EP library, or None."""
    try:
        plugin = import_native("onnxruntime_ep_webgpu")
    except ImportError:
        return None
    return plugin.get_library_path()


def _webgpu_built_in() -> bool:
    """Whether the installed onnxruntime has WebGPU built in (onnxruntime-webgpu 1.27). Once this
    process has registered the plugin and it found a device, onnxruntime lists it among its
    providers too."""
    if "ort" in _registered:
        return False
    try:
        ort = import_native("onnxruntime")
    except ImportError:
        return False
    return "WebGpuExecutionProvider" in ort.get_available_providers()


def folder_provider(folder: str | Path) -> str:
    """The provider a built folder's genai_config.json asks for ('cpu' when none)."""
    config = json.loads((Path(folder) / CONFIG_NAME).read_text())
    options = config["model"]["decoder"]["session_options"].get("provider_options") or []
    return next(iter(options[0]), "cpu") if options else "cpu"


def prepare_genai(og, provider: str) -> None:
    """Make `provider` usable by onnxruntime-genai in this process, or raise a one-line BuilderError."""
    if provider != "webgpu" or "genai" in _registered or _webgpu_built_in():
        # An onnxruntime with WebGPU built in (onnxruntime-webgpu 1.27) refuses the plugin under the
        # same name ("library is already registered"), even where both packages are installed.
        return
    library = webgpu_plugin_library()
    if not library:
        raise BuilderError(f"this folder runs on WebGPU, and no WebGPU runtime is installed: {WEBGPU_INSTALL}")
    og.register_execution_provider_library("WebGpuExecutionProvider", library)
    _registered.add("genai")


def genai_model(og, folder: str | Path, provider: str | None = None):
    """og.Model for a folder on `provider` (default: the folder's own)."""
    provider = provider or folder_provider(folder)
    prepare_genai(og, provider)
    config = og.Config(str(folder))
    config.clear_providers()
    if provider != "cpu":
        config.append_provider(provider)
    try:
        return og.Model(config)
    except Exception as e:
        if provider == "webgpu" and _found_no_webgpu_device(e):
            raise BuilderError(f"{no_webgpu_device()} (the runtime said: {_runtime_reason(e)})") from None
        raise


def _runtime_reason(error: Exception) -> str:
    """The runtime's own words: 1.27's first line puts a source path and an assertion before them;
    genai's with the plugin EP is one short sentence."""
    line = (str(error).splitlines() or [""])[0]
    start = line.lower().find("failed to get a webgpu adapter")
    return line[start:] if start >= 0 else line


def _found_no_webgpu_device(error: Exception) -> bool:
    """Whether a webgpu folder failed to open for want of a device: built-in WebGPU says so itself;
    the plugin EP offers none ("not supported in this build" is all genai says then)."""
    if _webgpu_built_in():
        return "failed to get a webgpu adapter" in str(error).lower()  # 1.27: "... No supported adapters"
    try:
        return not webgpu_plugin_devices()
    except Exception:  # a failed lookup must not hide the load error
        return False


def webgpu_plugin_devices() -> list:
    """The WebGPU devices that the installed plugin EP offers onnxruntime ([] when none or no plugin).
    The plugin registers without complaint on a machine with no adapter; onnxruntime-genai then
    says only that WebGPU 'is not supported in this build', which would blame the folder."""
    library = webgpu_plugin_library()
    if not library:
        return []
    ort = import_native("onnxruntime")

    if "ort" not in _registered:
        ort.register_execution_provider_library("webgpu", library)
        _registered.add("ort")
    return [d for d in ort.get_ep_devices() if d.ep_name == "WebGpuExecutionProvider"]


def no_webgpu_device() -> str:
    """What to install when WebGPU finds no device: the Vulkan loader, else a GPU driver."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libvulkan.so.1")
        except OSError:
            return (
                "WebGPU found no GPU: the Vulkan loader libvulkan.so.1 is missing "
                "(Debian/Ubuntu: apt install libvulkan1), and a GPU driver with Vulkan is needed too"
            )
    message = "WebGPU found no GPU adapter: install a GPU driver with Vulkan (Linux), D3D12 (Windows) or Metal (macOS)"
    if not _webgpu_built_in() and os.environ.get("ORT_WEBGPU_EP_ALLOW_SOFTWARE_ADAPTER") != "1":
        # The plugin EP passes over a CPU driver unless told: a machine set up for SwiftShader as the
        # README shows, but without this variable, was told to install a GPU driver and no more.
        message += (
            ", or for a CPU Vulkan driver such as SwiftShader set ORT_WEBGPU_EP_ALLOW_SOFTWARE_ADAPTER=1 "
            "(README: Running a webgpu folder)"
        )
    return message


def ort_session(
    model_path: str | Path, provider: str = "CPUExecutionProvider", provider_options=None, session_options=None
):
    """onnxruntime.InferenceSession on `provider`, through the WebGPU plugin EP when that is installed."""
    ort = import_native("onnxruntime")

    so = session_options or ort.SessionOptions()
    if provider == "WebGpuExecutionProvider" and not _webgpu_built_in():
        if not webgpu_plugin_library():
            raise BuilderError(f"no WebGPU runtime is installed: {WEBGPU_INSTALL}")
        devices = webgpu_plugin_devices()
        if not devices:
            raise BuilderError(no_webgpu_device())
        so.add_provider_for_devices(devices[:1], provider_options or {})
        session = ort.InferenceSession(str(model_path), so)
    else:
        options = [provider_options] if provider_options else None
        session = ort.InferenceSession(str(model_path), so, providers=[provider], provider_options=options)
    # onnxruntime's Python API falls back to the CPU EP when the asked-for EP fails to
    # start; a check on "WebGPU" must not quietly measure the CPU instead.
    if provider not in session.get_providers():
        raise BuilderError(
            f"{provider} did not start (onnxruntime fell back to {session.get_providers()}); see the EP error above"
        )
    return session
