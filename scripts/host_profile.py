"""Where onnxruntime-genai's time goes in a decode step, from native stack samples (py-spy).

    python scripts/host_profile.py NAME=DIR [NAME=DIR ...] --prompt 256 --new 1024 [--rate 200] [--json OUT]

With graph capture on, a WebGPU decode step is one onnxruntime Run (the EP replays the captured
graph) plus what genai does around it on the host; neither onnxruntime's profiler nor NVML can
split the latter. This script samples the main thread's native stacks while genai decodes
(`py-spy record --native --idle`: waiting counts too) and files each sample under the genai call
it is in, outermost first:

- `run`: `State::Run`, the onnxruntime Run: the EP encodes and submits the replay;
- `logits_readback`: `WebGPUMemory::CopyDeviceToCpu` under `SetLogits`: waits for the GPU to
  finish the step, then copies the logits to the host;
- `logits_cast`: `Logits::Get` / `ExecuteCastOp`: the fp16 logits cast to fp32 in a second
  onnxruntime session;
- `input_ids`, `attention_mask`, `position_ids`: genai's uploads for the next step;
- `search`: the greedy search on the CPU; `other`: the rest (Python, genai's bookkeeping).

Each phase is also split by the library the sample's innermost frame is in (genai, onnxruntime,
the WebGPU EP with Dawn, the Vulkan driver, libc: mostly system calls that wait). Shares become
milliseconds with the profiled run's own time per token; the same loop without the profiler is
timed first, so the profiler's cost shows. py-spy pauses the process for each sample, which the
GPU does not notice, so waits read a little short: use a low --rate.

Needs py-spy (`pip install py-spy`; --py-spy PATH otherwise) and the WebGPU plugin EP.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LOOP = "decode_loop"  # the child's Python function; samples outside it (load, prefill) are dropped
PHASES = (  # (genai frame, phase); the outermost frame on a stack decides
    ("Generators::State::Run", "run"),
    ("CopyDeviceToCpu", "logits_readback"),
    ("Generators::Logits::Get", "logits_cast"),
    ("ExecuteCastOp", "logits_cast"),
    ("DefaultInputIDs::Update", "input_ids"),
    ("UpdateAttentionMask", "attention_mask"),
    ("UpdatePositionIds", "position_ids"),
    ("Search_Cpu", "search"),
    ("GreedySearch", "search"),
)
LIBRARIES = (  # (part of the innermost frame's file, label)
    ("libonnxruntime-genai", "genai"),
    ("onnxruntime_genai", "genai"),
    ("providers_webgpu", "webgpu_ep"),
    ("libonnxruntime.so", "onnxruntime"),
    ("libnvidia", "vulkan_driver"),
    ("libvulkan", "vulkan_driver"),
    ("libc.so", "libc"),
    (".py", "python"),
)


def child(folder: str, prompt: int, new: int) -> None:
    import onnxruntime_genai as og

    from builder.ep_runtime import genai_model

    model = genai_model(og, folder)

    def generator(n):
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=prompt + n, min_length=prompt + n)
        g = og.Generator(model, params)
        g.append_tokens([(7 * i + 3) % 400 + 1 for i in range(prompt)])
        g.generate_next_token()
        return g

    def warm_up(g):
        # Its own function, not decode_loop: classify keeps only stacks with a decode_loop frame, so
        # the warm-up's graph capture and shader compiles stay out of the timed run's phases.
        while not g.is_done():
            g.generate_next_token()

    def decode_loop(g):
        start, steps = time.perf_counter(), 0
        while not g.is_done():
            g.generate_next_token()
            steps += 1
        return (time.perf_counter() - start) * 1e3 / steps

    warm_up(generator(8))  # shaders compiled, graph captured
    print(json.dumps({"ms_per_token": round(decode_loop(generator(new)), 3)}), flush=True)


def run_child(command: list[str]) -> dict:
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]  # the exception's line
        raise SystemExit(f"error: {' '.join(command[:3])}... failed (exit {done.returncode}): {tail}")
    return json.loads(lines[-1])


def classify(raw: str) -> tuple[collections.Counter, dict]:
    phases, libraries = collections.Counter(), collections.defaultdict(collections.Counter)
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not count.isdigit() or not any(frame.split(" (")[0].endswith(LOOP) for frame in frames):
            continue
        phase = next((name for frame in frames for mark, name in PHASES if mark in frame), "other")
        library = next((label for part, label in LIBRARIES if part in frames[-1]), "other")
        phases[phase] += int(count)
        libraries[phase][library] += int(count)
    return phases, libraries


def profile(name: str, folder: str, args) -> dict:
    me = [sys.executable, __file__, "--child", folder, "--prompt", str(args.prompt), "--new", str(args.new)]
    plain = run_child(me)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.txt"
        spy = [args.py_spy, "record", "--native", "--idle", "--rate", str(args.rate), "--format", "raw"]
        sampled = run_child([*spy, "--output", str(raw), "--", *me])
        phases, libraries = classify(raw.read_text())
    total = sum(phases.values())
    if not total:
        raise SystemExit(f"error: py-spy recorded no samples inside {LOOP} for {folder}")
    step = sampled["ms_per_token"]
    row = {
        "name": name,
        "folder": folder,
        "ms_per_token": plain["ms_per_token"],
        "ms_per_token_profiled": step,
        "samples": total,
        "phases_ms": {p: round(step * n / total, 3) for p, n in phases.most_common()},
        "phases_by_library_ms": {
            p: {lib: round(step * n / total, 3) for lib, n in libraries[p].most_common()}
            for p, _ in phases.most_common()
        },
    }
    print(f"{name}: {row['ms_per_token']} ms/token ({row['ms_per_token_profiled']} profiled, {total} samples)")
    for phase, ms in row["phases_ms"].items():
        parts = ", ".join(f"{lib} {v}" for lib, v in row["phases_by_library_ms"][phase].items())
        print(f"  {phase:16s} {ms:6.3f} ms   ({parts})")
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="NAME=DIR (a webgpu build with graph capture)")
    parser.add_argument("--prompt", type=int, default=256, help="Prompt tokens.")
    parser.add_argument("--new", type=int, default=1024, help="Decode steps sampled.")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples a second.")
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy")))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.child:
        child(args.models[0], args.prompt, args.new)
        return 0
    if not Path(args.py_spy).is_file():
        parser.error(f"py-spy not found at {args.py_spy}: pip install py-spy, or pass --py-spy PATH")
    models = [model.split("=", 1) for model in args.models]
    for given, (name, *folder) in zip(args.models, models):
        if not name or not folder or not (Path(folder[0]) / "genai_config.json").is_file():
            parser.error(f"{given}: pass NAME=DIR, DIR a folder that python -m builder built (with genai_config.json)")
    rows = [profile(name, folder, args) for name, folder in models]
    if args.json:
        summary = {"prompt": args.prompt, "new": args.new, "rate": args.rate, "rows": rows}
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
