#!/usr/bin/env python
"""How close a build comes to the speed of the disk (issue 17).

    python scripts/bench_build.py --before bca5e53 [--checkpoint DIR] [--rounds 2]

A build reads every checkpoint byte once, so on a cold page cache its floor is the
time to read the checkpoint. Per round this script:

1. drops the checkpoint from the page cache (os.sync(), then
   posix_fadvise(DONTNEED) on every file) and times `cat` of all its files; then
   drops it again and times reading it with O_DIRECT, the disk's own floor (a cold
   `cat` also pays the kernel for filling the page cache, which the build does not);
2. for each variant, in an order that alternates between rounds: drops the cache
   again and times a cold build, then a warm build (after a `cat` that warms the
   cache), each `python -m builder -m CK -p int4 -e webgpu -o OUT` in its own
   process under /usr/bin/time -v (peak RSS).

Variants: `after` (this checkout), `off` (this checkout with --read-ahead-mb 0)
and, with --before REF, `before` (REF checked out with `git worktree add`). It
prints cold build / cold read, warm build, peak RSS, the build report's phase
times and the load average before each step (other processes share the machine:
rerun when it is quiet). The checkpoint is made with scripts/make_checkpoint.py
when missing (qwen3-4b: 8 GB; --delete-checkpoint removes it at the end, if this run made it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from writable import can_write


def weight_files(checkpoint: Path) -> list[Path]:
    return sorted(p for p in checkpoint.iterdir() if p.is_file())


def drop_cache(files: list[Path]) -> None:
    os.sync()
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def load() -> float:
    return os.getloadavg()[0]


def cat(files: list[Path]) -> float:
    t = time.perf_counter()
    subprocess.run(["cat", *map(str, files)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t


def direct_read(files: list[Path]) -> float:
    """The disk's own floor: every byte read with O_DIRECT in 32 MB requests, as the
    build reads what the page cache lacks (builder/kit/disk_io.py), without the kernel
    CPU a cold `cat` spends filling the cache."""
    from builder.kit.disk_io import aligned_buffer, read_range

    buffer = aligned_buffer((32 << 20) + (8 << 10))
    t = time.perf_counter()
    for f in files:
        size = f.stat().st_size
        for begin in range(0, size, 32 << 20):
            read_range(f, begin, min(32 << 20, size - begin), buffer)
    return time.perf_counter() - t


def build(variant: dict, checkpoint: Path, out: Path, log: Path, nice: int = 0) -> dict:
    if out.exists():
        shutil.rmtree(out)
    command = [
        sys.executable,
        "-m",
        "builder",
        "-m",
        str(checkpoint),
        "-p",
        "int4",
        "-e",
        "webgpu",
        "-o",
        str(out),
        *variant["args"],
    ]
    env = {**os.environ, "PYTHONPATH": str(variant["root"])}
    timed = ["/usr/bin/time", "-v", *command] if Path("/usr/bin/time").exists() else command
    if nice:
        timed = ["nice", "-n", str(nice), *timed]
    started_load = load()
    t = time.perf_counter()
    proc = subprocess.run(timed, cwd=variant["root"], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode:  # the builder's own error line says why (the log ends in /usr/bin/time's figures)
        why = next((line for line in reversed(proc.stderr.splitlines()) if line.startswith("error: ")), "")
        why = f": {why.removeprefix('error: ')}" if why else ""
        raise SystemExit(f"error: {variant['name']} build failed (exit {proc.returncode}){why}; see {log}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    cpu = [re.search(rf"{k} time \(seconds\): ([\d.]+)", proc.stderr) for k in ("User", "System")]
    report = json.loads((out / "build_report.json").read_text())
    data = out / "model.onnx.data"
    result = {
        "wall_s": round(wall, 2),
        "load_before": round(started_load, 2),
        "peak_rss_bytes": int(rss[1]) * 1024 if rss else report.get("peak_rss_bytes"),
        "cpu_s": round(sum(float(m[1]) for m in cpu if m), 2),
        "timings": report.get("timings", {}),
        "data_bytes": data.stat().st_size,
    }
    return result


def fmt_phases(timings: dict) -> str:
    phases = timings.get("phases")
    if not phases:
        return "(no phase times: before this change)"
    return " ".join(f"{k}={v:.1f}" for k, v in phases.items())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=Path("/tmp/bench-build/qwen3-4b"))
    ap.add_argument("--size", default="qwen3-4b", help="what scripts/make_checkpoint.py makes when missing")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-build/work"))
    ap.add_argument("--before", metavar="REF", help="git ref of the code to compare against")
    ap.add_argument("--no-off", action="store_true", help="skip the --read-ahead-mb 0 variant")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run the builds at this niceness (negative needs root): on a machine others keep "
        "busy, a build otherwise measures the scheduler more than itself",
    )
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument(
        "--delete-checkpoint", action="store_true", help="remove the checkpoint at the end, if this run made it"
    )
    args = ap.parse_args()
    if args.rounds < 1:  # checked before a checkpoint is made: a run of 0 rounds has nothing to report
        ap.error("--rounds must be at least 1")
    # The builds run in the checkout (cwd=ROOT, for the `before` tree's code): a relative path given
    # here named a folder there, and every build failed on a checkpoint that "does not exist".
    args.checkpoint, args.work = args.checkpoint.absolute(), args.work.absolute()
    # Each of these failed only after the checkpoint was made (8 GB) or every round was run.
    if args.before:
        found = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{args.before}^{{commit}}"],
            capture_output=True,
        )
        if found.returncode:
            ap.error(f"--before {args.before}: no such commit in {ROOT}; pass a commit, branch or tag of it")
    if args.json:
        if not can_write(args.json, make_parents=False):
            ap.error(f"--json {args.json}: not a file this run can write; pass one in an existing folder")
    try:
        args.work.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        ap.error(f"--work {args.work}: cannot create it ({e.strerror or e}); pass a folder you can write")
    made_here = not (args.checkpoint / "config.json").is_file()  # only such a checkpoint is ever deleted
    if made_here:
        maker = ROOT / "scripts" / "make_checkpoint.py"
        made = subprocess.run([sys.executable, str(maker), args.size, str(args.checkpoint)])
        if made.returncode:  # it printed why
            raise SystemExit(f"error: {maker.name} could not make {args.checkpoint} (exit {made.returncode})")
    files = weight_files(args.checkpoint)
    size = sum(f.stat().st_size for f in files)

    variants = [{"name": "after", "root": ROOT, "args": []}]
    if not args.no_off:
        variants.append({"name": "off", "root": ROOT, "args": ["--read-ahead-mb", "0"]})
    if args.before:
        tree = args.work / "before"
        if tree.exists():
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), args.before],
            check=True,
            capture_output=True,
        )
        variants.insert(0, {"name": "before", "root": tree, "args": []})

    rounds = []
    try:
        for r in range(args.rounds):
            order = variants if r % 2 == 0 else variants[::-1]
            drop_cache(files)
            read_load = load()
            cold_read = cat(files)
            drop_cache(files)
            direct = direct_read(files)
            round_ = {
                "cold_read_s": round(cold_read, 2),
                "read_load_before": round(read_load, 2),
                "cold_direct_read_s": round(direct, 2),
                "builds": {},
            }
            print(
                f"round {r + 1}: cold read of {size / 1e9:.2f} GB: {cold_read:.1f} s with cat "
                f"({size / cold_read / 1e6:.0f} MB/s, load {read_load:.1f}), {direct:.1f} s with O_DIRECT "
                f"({size / direct / 1e6:.0f} MB/s)",
                flush=True,
            )
            for v in order:
                out = args.work / f"out-{v['name']}"
                drop_cache(files)
                cold = build(v, args.checkpoint, out, args.work / f"{v['name']}-cold.log", args.nice)
                cat(files)
                warm = build(v, args.checkpoint, out, args.work / f"{v['name']}-warm.log", args.nice)
                round_["builds"][v["name"]] = {"cold": cold, "warm": warm}
                print(
                    f"  {v['name']:>6}: cold {cold['wall_s']:.1f} s = {cold['wall_s'] / cold_read:.2f}x read "
                    f"({cold['wall_s'] / direct:.2f}x the O_DIRECT read) "
                    f"(load {cold['load_before']:.1f}), warm {warm['wall_s']:.1f} s "
                    f"(load {warm['load_before']:.1f}), peak RSS cold {cold['peak_rss_bytes'] / 1e9:.2f} GB "
                    f"warm {warm['peak_rss_bytes'] / 1e9:.2f} GB; CPU time cold {cold['cpu_s']:.1f} s "
                    f"warm {warm['cpu_s']:.1f} s",
                    flush=True,
                )
                print(f"          cold phases: {fmt_phases(cold['timings'])}", flush=True)
                print(f"          warm phases: {fmt_phases(warm['timings'])}", flush=True)
                if cold["timings"].get("read_ahead"):
                    print(f"          read-ahead: {cold['timings']['read_ahead']}", flush=True)
            rounds.append(round_)
        sizes = {v: {b["builds"][v]["cold"]["data_bytes"] for b in rounds} for v in rounds[0]["builds"]}
        print(f"model.onnx.data sizes: {sizes}")
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "checkpoint": str(args.checkpoint),
                        "checkpoint_bytes": size,
                        "nice": args.nice,
                        "cores": os.cpu_count(),
                        "rounds": rounds,
                    },
                    indent=2,
                )
                + "\n"
            )
    finally:
        if args.before:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(args.work / "before")],
                check=False,
                capture_output=True,
            )
        if args.delete_checkpoint and made_here:
            shutil.rmtree(args.checkpoint, ignore_errors=True)
    return 0


if __name__ == "__main__":
    from interrupt import run_main

    run_main(main, "the rounds finished before are those printed above; --json was not written")
