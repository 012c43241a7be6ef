"""WebGPU without a GPU: the plugin EP on SwiftShader, the Vulkan driver on the CPU that Chromium
ships (Debian's chromium package: /usr/lib/chromium; scripts/setup.sh installs it).

SwiftShader has no shader-f16, so only builds with fp32 activations run there; it is slow and says
nothing of speed, but the kernels, graph capture and onnxruntime-genai's loop are the EP's own."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

# Where Chromium keeps vk_swiftshader_icd.json beside its Vulkan loader: Debian's package, Google
# Chrome's, and next to a $CHROMIUM binary.
_CANDIDATES = ("/usr/lib/chromium", "/usr/lib64/chromium", "/opt/google/chrome")


def swiftshader_icd() -> Path | None:
    """$SWIFTSHADER_ICD, else the first vk_swiftshader_icd.json of an installed Chromium, else None."""
    if os.environ.get("SWIFTSHADER_ICD"):
        return Path(os.environ["SWIFTSHADER_ICD"])
    folders = list(_CANDIDATES)
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        binary = name and shutil.which(name)
        if binary:
            folders.append(str(Path(binary).resolve().parent))
    icds = (Path(folder) / "vk_swiftshader_icd.json" for folder in folders)
    return next((icd for icd in icds if icd.is_file()), None)


def swiftshader_env(icd: Path) -> dict:
    """A child process's environment whose WebGPU adapter is SwiftShader. The library path must be
    set before the child starts (Dawn opens libvulkan.so.1 through the dynamic loader; Chromium's
    folder has one), and the plugin EP offers a CPU device only when told that it may."""
    library_path = os.pathsep.join(filter(None, [str(icd.parent), os.environ.get("LD_LIBRARY_PATH")]))
    return {
        **os.environ,
        "VK_ICD_FILENAMES": str(icd),
        "LD_LIBRARY_PATH": library_path,
        "ORT_WEBGPU_EP_ALLOW_SOFTWARE_ADAPTER": "1",
    }


def plugin_ready() -> Path:
    """The SwiftShader ICD for a test that runs the WebGPU plugin EP; fails naming what is missing.
    Skips only on Python < 3.11, where onnxruntime-ep-webgpu has no wheel (conftest still counts the
    skip as a failure, so it cannot pass unseen)."""
    import pytest

    if sys.version_info < (3, 11):
        pytest.skip("onnxruntime-ep-webgpu needs Python >= 3.11")
    try:
        import onnxruntime_ep_webgpu  # noqa: F401
    except ImportError:
        pytest.fail("onnxruntime-ep-webgpu is missing: run `bash scripts/setup.sh` (the test extra has it)")
    icd = swiftshader_icd()
    if icd is None:
        pytest.fail("no vk_swiftshader_icd.json: run `bash scripts/setup.sh` (apt-get install chromium)")
    return icd


def no_driver_env(icd: Path, missing_icd: Path, python_path: str) -> dict:
    """A child process's environment with a Vulkan loader (Chromium's, beside `icd`) and no driver:
    `missing_icd` names a file that does not exist, and the plugin EP is not told to take a CPU device."""
    env = {
        **os.environ,
        "LD_LIBRARY_PATH": str(icd.parent),
        "VK_ICD_FILENAMES": str(missing_icd),
        "PYTHONPATH": python_path,
    }
    env.pop("ORT_WEBGPU_EP_ALLOW_SOFTWARE_ADAPTER", None)
    return env
