#!/usr/bin/env bash
# Create .venv (if missing) and install the project with its test extras.
# torch is pinned to the 2.13.0 CPU build in pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".[test]"
