"""More cases of the property-based input checks than the suite runs (tests/fuzz_inputs.py).

    PYTHONPATH=$PWD python scripts/fuzz_inputs.py --cases 500 [--only header,batch] [--seed 1]

Prints, per target, how many cases ran and how they ended (refused with a one-line
error, built or read, valid). Any traceback or broken property fails the run with
hypothesis' shrunk example.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from builder.verify import missing_modules

# hypothesis and the checkpoints' torch come with the test extra only, which a plain install leaves out.
if missing := missing_modules(("hypothesis", "torch", "tokenizers", "safetensors")):
    print(
        f"fuzz_inputs.py: error: it needs {', '.join(missing)}, which only the test venv has: run "
        "bash scripts/setup.sh and then .venv/bin/python scripts/fuzz_inputs.py",
        file=sys.stderr,
    )
    raise SystemExit(2)

import fuzz_inputs as fz
from hypothesis import given, seed, settings

TARGETS = {
    "config": (fz.config_files, fz.check_config_file),
    "header": (fz.header_edits, fz.check_header_edits),
    "index": (fz.index_edits, fz.check_index_edit),
    "batch": (fz.yaml_files, fz.check_batch_file),
}


def run(name: str, cases: int, random_seed: int) -> collections.Counter:
    strategy, check = TARGETS[name]
    outcomes = collections.Counter()

    @seed(random_seed)
    @settings(max_examples=cases, database=None, **fz.FUZZ_SETTINGS)
    @given(strategy)
    def target(case):
        outcomes[check(case)] += 1

    target()
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=500, help="Cases per target (default: 500).")
    parser.add_argument("--only", default=",".join(TARGETS), help="Comma-separated targets: " + ", ".join(TARGETS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    unknown = sorted(set(args.only.split(",")) - set(TARGETS))
    if unknown or args.cases < 1:
        parser.error(f"--only {unknown[0]} is no target" if unknown else "--cases must be at least 1")
    for name in args.only.split(","):
        start = time.perf_counter()
        outcomes = run(name, args.cases, args.seed)
        total = sum(outcomes.values())
        print(
            f"{name}: {total} cases in {time.perf_counter() - start:.0f}s: "
            + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    from interrupt import run_main

    run_main(main, "the targets finished before are those printed above")
