#!/usr/bin/env bash
# The test command: set up .venv if needed, then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Lint and format first: ruff is pinned in the test extra, so the check is the same everywhere.
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# One pytest worker a core, at most 4 (TEST_WORKERS overrides; 0 runs in this process): the suite
# is mostly one core's work at a time (builds, subprocesses, browsers), so on CI's 2 cores two
# workers take about half of one's time. On a 2-core AVX2 EPYC (session 47) the test files run one
# after another took about 1720 s; this command took 14.0 minutes with two workers (pytest 836 s, 24
# minutes of CPU) and 13.7 with three: the suite is CPU-bound, so more workers than cores buy next
# to nothing. Whole files go to one worker
# (--dist loadfile): a file's tests share its module fixtures, and the Ray tests, all in
# tests/test_batch_ray.py, start one local cluster at a time. Files go out in collection order, which
# tests/conftest.py starts with the slowest. The cores are the ones this process
# may use (its CPU affinity and a cgroup's CPU quota), not the host's.
workers=${TEST_WORKERS:-$(.venv/bin/python - <<'PY'
import math, os
cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
try:
    quota, period = open("/sys/fs/cgroup/cpu.max").read().split()
    if quota != "max":
        cores = min(cores, math.ceil(int(quota) / int(period)))
except (OSError, ValueError):
    pass
print(max(1, min(cores, 4)))
PY
)}
exec .venv/bin/python -m pytest -n "$workers" --dist loadfile --no-loadscope-reorder "$@"
