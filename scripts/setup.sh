#!/usr/bin/env bash
# Create .venv (if missing) and install the project with its test extras and Ray
# (the batch --executor ray tests need it).
# torch is pinned to the 2.13.0 CPU build in pyproject.toml.
# Then the browser side of the tests: Node.js, transformers.js (pinned in
# examples/web/package-lock.json) and Debian's chromium. A step that fails here
# warns; the tests that need it then fail and name what is missing. A stamp per
# pyproject.toml / package-lock.json skips the installs a rerun does not need.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
# A venv this script already filled from the same pyproject.toml is left as it is (a rerun, or an
# offline one, need not reach the package index again).
digest() { python3 -c "import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], 'rb').read()).hexdigest()[:16])" "$1"; }
stamp=.venv/.builder-setup-$(digest pyproject.toml)
if ! { [ -f "$stamp" ] && .venv/bin/python -c "import importlib.util as u, sys
sys.exit(not all(u.find_spec(m) for m in ('builder', 'torch', 'transformers', 'ray')))" 2>/dev/null; }; then
    rm -f .venv/.builder-setup-*
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    # torch: on Linux, PyPI's wheel is the CUDA build (several GB of nvidia-* packages), and the
    # tests and --verify need only the CPU one, which PyTorch's own index serves. Where that index
    # cannot be reached in 5 s (a mirror, an offline CI with a local wheel), pip takes torch from
    # what its configuration offers.
    if [ "$(uname -s)" = Linux ] && ! .venv/bin/python -c "import torch" 2>/dev/null \
        && .venv/bin/python -c "import urllib.request as u; u.urlopen('https://download.pytorch.org/whl/cpu/', timeout=5)" 2>/dev/null; then
        .venv/bin/python -m pip install -q "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
    fi
    .venv/bin/python -m pip install -q -e ".[test,ray]"
    touch "$stamp"
fi

# onnxruntime-webgpu 1.27 (WebGPU built in) with genai 0.18, in a folder of its own: the package installs
# an `onnxruntime` module that must not meet the venv's. tests/test_webgpu_swiftshader.py loads the
# --target-ort 1.27 builds there (PYTHONPATH first).
ort127=.venv/onnxruntime-webgpu-1.27
if [ ! -f "$ort127/.builder-setup" ]; then
    rm -rf "$ort127"
    if .venv/bin/python -m pip install -q --no-deps --target "$ort127" onnxruntime-webgpu==1.27.0 onnxruntime-genai==0.18.0; then
        touch "$ort127/.builder-setup"
    else
        echo "setup: WARNING: onnxruntime-webgpu 1.27 did not install; its tests will fail" >&2
    fi
fi

# onnxruntime 1.20.1, the oldest pyproject.toml allows, also in a folder of its own: tests/test_targets.py
# builds for it and runs the folders there (its GatherBlockQuantized and MatMulNBits lack what newer
# targets get).
ort120=.venv/onnxruntime-1.20
if [ ! -f "$ort120/.builder-setup" ]; then
    rm -rf "$ort120"
    if .venv/bin/python -m pip install -q --no-deps --target "$ort120" onnxruntime==1.20.1; then
        touch "$ort120/.builder-setup"
    else
        echo "setup: WARNING: onnxruntime 1.20.1 did not install; its tests will fail" >&2
    fi
fi

apt_updated=0
apt_install() {
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "setup: cannot install $* (needs apt-get as root); install it by hand" >&2
        return 1
    fi
    if [ "$apt_updated" = 0 ]; then
        apt-get update -qq >/dev/null || true
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    apt_install nodejs npm || echo "setup: WARNING: no Node.js; the transformers.js tests will fail" >&2
fi
web_stamp=examples/web/node_modules/.builder-setup-$(digest examples/web/package-lock.json)
if command -v npm >/dev/null && [ ! -f "$web_stamp" ]; then
    # --ignore-scripts: onnxruntime-node's install script downloads binaries (not allowed
    # here); its CPU binaries ship inside the npm package.
    if (cd examples/web && npm install --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null); then
        rm -f examples/web/node_modules/.builder-setup-*
        touch "$web_stamp"
    else
        echo "setup: WARNING: npm install in examples/web failed; the transformers.js tests will fail" >&2
    fi
fi
if [ -z "${CHROMIUM:-}" ] && ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null \
    && ! command -v google-chrome >/dev/null; then
    apt_install chromium || echo "setup: WARNING: no chromium (or set CHROMIUM=path); the browser test will fail" >&2
fi
