"""How busy the GPU is while onnxruntime-genai decodes a folder (NVIDIA GPUs, through NVML).

    python scripts/gpu_busy.py NAME=DIR [NAME=DIR ...] --prompt 256 --new 512 [--json PATH]

NVML's utilization.gpu is the share of a sample period in which at least one kernel
ran; its mean over the decode loop times ms/token estimates the GPU's busy time per
token, and the rest is host time (dispatch, genai's sampling, synchronization). Coarse
(NVML's period is 1/6 s to 1 s), so decode runs long enough for several periods. The
WebGPU plugin EP writes no GPU timestamps into onnxruntime's profile, hence this.
To compare global WebGPU provider options (maxNumPendingDispatches, ...), measure each
folder in a process of its own: genai keeps the first model's WebGPU context until exit.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from writable import can_write

from builder import BuilderError


def measure(folder: str, prompt_len: int, new_tokens: int) -> dict:
    import onnxruntime_genai as og
    import pynvml

    from builder.ep_runtime import genai_model

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    model = genai_model(og, folder)
    samples, stop = [], threading.Event()

    def sample():
        while not stop.is_set():
            samples.append((time.perf_counter(), pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))
            time.sleep(0.01)

    def generate(n):
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=prompt_len + n, min_length=prompt_len + n)
        generator = og.Generator(model, params)
        generator.append_tokens([(7 * i + 3) % 400 + 1 for i in range(prompt_len)])
        generator.generate_next_token()
        start, steps = time.perf_counter(), 0
        while not generator.is_done():
            generator.generate_next_token()
            steps += 1
        return start, time.perf_counter(), steps

    generate(8)  # shaders compiled, graph captured
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:  # Ctrl-C or a failed generation must not leave the sampler holding the process open
        time.sleep(1.2)
        idle = [u for _, u in samples]
        start, end, steps = generate(new_tokens)
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join()
    # Samples well inside the loop (NVML averages over the period before each sample).
    busy = [u for t, u in samples if start + 0.5 < t < end]
    ms = 1000 * (end - start) / steps
    util = statistics.mean(busy) if busy else float("nan")
    return {
        "ms_per_token": ms,
        "tok_s": 1000 / ms,
        "gpu_util_pct": util,
        "gpu_ms_per_token_est": ms * util / 100,
        "util_samples": len(busy),
        "idle_util_pct": statistics.mean(idle) if idle else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", metavar="NAME=DIR")
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--new", type=int, default=512)
    ap.add_argument("--json")
    args = ap.parse_args()
    for pair in args.models:
        name, _, folder = pair.partition("=")
        if not name or not (Path(folder) / "genai_config.json").is_file():
            ap.error(f"{pair!r}: pass NAME=DIR, DIR a built model folder")
    # Each failed only after the decode loops: a ZeroDivisionError (no decode step) or a traceback.
    if args.prompt < 1 or args.new < 2:
        ap.error("--prompt must be at least 1 token and --new at least 2 (the first closes the prefill)")
    if args.json and not can_write(Path(args.json), make_parents=False):
        ap.error(f"--json {args.json}: not a file this run can write; pass one in an existing folder")
    try:
        import pynvml  # noqa: F401
    except ImportError:
        ap.error("needs pynvml, NVIDIA's NVML bindings: pip install nvidia-ml-py (on a machine with an NVIDIA GPU)")
    results = {}
    for pair in args.models:
        name, folder = pair.split("=", 1)
        try:
            results[name] = measure(folder, args.prompt, args.new)
        except BuilderError as e:  # no WebGPU runtime or adapter for a webgpu folder: it was a traceback
            print(f"error: {name}: {e}", file=sys.stderr)
            return e.exit_code
        r = results[name]
        print(
            f"{name}: {r['tok_s']:.1f} tok/s, {r['ms_per_token']:.2f} ms/token, GPU busy {r['gpu_util_pct']:.0f}% "
            f"-> ~{r['gpu_ms_per_token_est']:.2f} ms GPU per token ({r['util_samples']} samples)",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    from interrupt import run_main

    run_main(main, "the folders measured before are those printed above")
