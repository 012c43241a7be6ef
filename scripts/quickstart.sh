#!/usr/bin/env bash
# Fresh machine -> built models -> generated tokens, on the tiny Qwen3 that ships in examples/.
set -euo pipefail
cd "$(dirname "$0")/.."
# Only what building and running need: the builder and onnxruntime-genai (no torch, Ray, Node or
# Chromium; scripts/test.sh adds those to the same .venv).
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
# A venv that this script or setup.sh (a superset) filled from the same pyproject.toml is left as it
# is: a rerun, or an offline one, need not reach the package index again.
digest() { python3 -c "import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], 'rb').read()).hexdigest()[:16])" "$1"; }
key=$(digest pyproject.toml)
if ! { [ -f .venv/.builder-quickstart-"$key" ] || [ -f .venv/.builder-setup-"$key" ]; } \
    || ! .venv/bin/python -c "import builder, onnxruntime_genai" 2>/dev/null; then
    rm -f .venv/.builder-quickstart-*
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    # 0.8.0 refuses Qwen3 (Unsupported model_type); Python 3.10 stops at 0.11.4, so no higher bound here:
    # the build keeps every position's logits for a genai older than 0.12.2.
    .venv/bin/python -m pip install -q -e . "onnxruntime-genai>=0.8.1"
    touch .venv/.builder-quickstart-"$key"
fi
. .venv/bin/activate
python -m builder -m examples/tiny-qwen3 -p int4 -e cpu -o out/tiny-qwen3-int4-cpu --overwrite
python -m builder -m examples/tiny-qwen3 -p int4 -e webgpu -o out/tiny-qwen3-int4-webgpu --overwrite
python -m builder inspect out/tiny-qwen3-int4-cpu out/tiny-qwen3-int4-webgpu
python scripts/generate.py out/tiny-qwen3-int4-cpu --prompt "The quick brown fox" --max-new-tokens 12
