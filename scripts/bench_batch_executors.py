"""Wall time of one batch file under the local executor and under Ray, back to back.

    python scripts/bench_batch_executors.py [configs/tiny.yaml] [--jobs N] [--ray-address ADDR] [--repeat 2]

Each run is a fresh `python -m builder batch FILE --force` into its own temporary
output root, so every job builds. Without --ray-address the Ray run starts (and
stops) a local Ray instance itself, which is part of its time; with one, it joins
that cluster (start it first: ray start --head --num-cpus 2 --include-dashboard=false).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(file: Path, extra: list[str]) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "builder", "batch", str(file), "--force", "--output-root", out, *extra],
            stdout=subprocess.DEVNULL,
            cwd=ROOT,
        )
        if done.returncode:  # batch printed its errors
            raise SystemExit(f"error: python -m builder batch {file} {' '.join(extra)} failed (exit {done.returncode})")
        wall = time.perf_counter() - t
        summary = json.loads((Path(out) / f"{file.stem}-summary.json").read_text())
    return wall, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", default=str(ROOT / "configs" / "tiny.yaml"))
    parser.add_argument("--jobs", default="1")
    parser.add_argument("--ray-address")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1 (a median needs one)")
    file = Path(args.file).absolute()
    ray = ["--executor", "ray"] + (["--ray-address", args.ray_address] if args.ray_address else [])
    times = {"local": [], "ray": []}
    for i in range(args.repeat):  # alternate, so load changes hit both alike
        for name, extra in (("local", []), ("ray", ray)):
            wall, summary = run(file, ["--jobs", args.jobs, *extra])
            build_s = sum(j.get("seconds", 0) for j in summary["jobs"])
            times[name].append(wall)
            print(
                f"run {i + 1} {name:5}: {wall:6.1f} s wall, {summary['counts']['built']} built, "
                f"sum of job times {build_s:.1f} s",
                flush=True,
            )
    for name, walls in times.items():
        print(
            f"{name:5}: median {statistics.median(walls):.1f} s over {len(walls)} runs "
            f"({', '.join(f'{w:.1f}' for w in walls)})"
        )


if __name__ == "__main__":
    main()
