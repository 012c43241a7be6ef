"""Where decode time goes: ONNX Runtime's per-operator kernel time, as onnxruntime-genai runs the model.

    python scripts/profile_genai.py DIR [--prompt 128] [--new 32] [--session-option intra_op_num_threads=0]

Runs one greedy generation in a child process with session profiling switched on
through a symlinked copy of the folder (the folder itself is not touched), then
sums the kernel time of the decode steps by op type. The child process is needed
because ONNX Runtime writes the profile only when the session ends.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from writable import can_write


def generate(folder: str, prompt_len: int, new_tokens: int) -> dict:
    import onnxruntime_genai as og

    sys.path.insert(0, str(HERE.parent))
    from builder.ep_runtime import genai_model

    model = genai_model(og, folder)
    params = og.GeneratorParams(model)
    total = prompt_len + new_tokens
    params.set_search_options(do_sample=False, max_length=total, min_length=total)
    generator = og.Generator(model, params)
    generator.append_tokens([(7 * i + 3) % 400 + 1 for i in range(prompt_len)])
    generator.generate_next_token()
    start, steps = time.perf_counter(), 0
    while not generator.is_done():
        generator.generate_next_token()
        steps += 1
    return {"ms_per_token": 1000 * (time.perf_counter() - start) / steps, "steps": steps}


def summarize(profile: Path, steps: int) -> dict:
    """Per-op host time of the decode steps ("Node" events: on a GPU EP this is the time
    to record and dispatch the kernel) and, where the EP profiles the GPU (the WebGPU EP
    writes timestamp-query events of other categories), GPU time per kernel."""
    events = json.loads(profile.read_text())
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])[-steps:]
    start = runs[0]["ts"]
    time_by_op, calls = collections.Counter(), collections.Counter()
    gpu_time, gpu_calls, categories = collections.Counter(), collections.Counter(), collections.Counter()
    for e in events:
        if e.get("ts", 0) < start or "dur" not in e:
            continue
        categories[e.get("cat")] += 1
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            time_by_op[e["args"]["op_name"]] += e["dur"]
            calls[e["args"]["op_name"]] += 1
        elif e.get("cat") not in ("Node", "Session"):
            gpu_time[e["name"]] += e["dur"]
            gpu_calls[e["name"]] += 1
    return {
        "model_run_ms": sum(r["dur"] for r in runs) / steps / 1000,
        "model_run_ms_each": [r["dur"] / 1000 for r in runs],
        "event_categories": dict(categories),
        "ops": {
            op: {"ms_per_token": us / steps / 1000, "nodes": calls[op] // steps} for op, us in time_by_op.most_common()
        },
        "gpu_kernels": {
            name: {"ms_per_token": us / steps / 1000, "calls_per_token": gpu_calls[name] / steps}
            for name, us in gpu_time.most_common()
        },
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument(
        "--session-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Extra genai session option for this run (value '-' removes the key).",
    )
    ap.add_argument("--json", help="Write the summary here.")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.prompt < 1 or args.new < 2:  # else the child divides by 0 decode steps, reported as genai failing
        ap.error("--prompt must be at least 1 token and --new at least 2 (the first closes the prefill)")
    if any(o.partition("=")[0] == "enable_profiling" for o in args.session_option):  # no profile: max() of nothing
        ap.error("--session-option enable_profiling is this script's own: it switches profiling on to read it")
    if args.json and not args.child:  # found unwritable only after the run: a traceback
        if not can_write(Path(args.json), make_parents=False):
            ap.error(f"--json {args.json}: not a file this run can write; pass one in an existing folder")
    if args.child:
        print(json.dumps(generate(args.child, args.prompt, args.new)))
        return 0

    with tempfile.TemporaryDirectory(prefix="profile-genai-") as tmp:
        variant = Path(tmp) / "model"
        prefix = Path(tmp) / "ort_profile"
        made = subprocess.run(
            [
                sys.executable,
                str(HERE / "with_session_options.py"),
                args.folder,
                str(variant),
                f"enable_profiling={prefix}",
                *args.session_option,
            ],
            stdout=subprocess.DEVNULL,
        )
        if made.returncode:  # it printed why
            return made.returncode
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                args.folder,
                "--child",
                str(variant),
                "--prompt",
                str(args.prompt),
                "--new",
                str(args.new),
            ],
            capture_output=True,
            text=True,
        )
        lines = [line for line in child.stdout.splitlines() if line.startswith("{")]
        if child.returncode or not lines:
            tail = (child.stderr.strip().splitlines() or ["no output"])[-1]
            raise SystemExit(f"error: {args.folder} did not run in onnxruntime-genai (exit {child.returncode}): {tail}")
        timing = json.loads(lines[-1])
        profile = max(Path(tmp).glob("ort_profile*.json"), key=os.path.getmtime)
        summary = summarize(profile, timing["steps"])
    kernels = sum(o["ms_per_token"] for o in summary["ops"].values())
    gpu = sum(o["ms_per_token"] for o in summary["gpu_kernels"].values())
    print(
        f"{args.folder}: {timing['ms_per_token']:.2f} ms/token in genai, model run "
        f"{summary['model_run_ms']:.2f} ms, host kernel calls {kernels:.2f} ms, GPU kernels {gpu:.3f} ms"
    )
    print(f"  event categories after the prefill: {summary['event_categories']}")
    for op, o in list(summary["ops"].items())[:15]:
        print(
            f"  {op:34s} {o['ms_per_token']:8.3f} ms  {100 * o['ms_per_token'] / max(kernels, 1e-9):5.1f}%  "
            f"{o['nodes']} nodes"
        )
    for name, o in list(summary["gpu_kernels"].items())[:15]:
        print(f"  GPU {name[:60]:60s} {o['ms_per_token']:8.4f} ms  {o['calls_per_token']:.1f} calls")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"folder": args.folder, **timing, **summary, "host_kernel_ms": kernels, "gpu_kernel_ms": gpu}, indent=2
            )
        )
    return 0


if __name__ == "__main__":
    from interrupt import run_main

    run_main(main, "nothing was written")
