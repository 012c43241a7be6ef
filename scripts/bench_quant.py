"""Throughput of quant.quantize_blockwise on Qwen3-4B-sized bf16 weights.

    python scripts/bench_quant.py              # int4, block 32, symmetric
    python scripts/bench_quant.py --ort        # also time ORT's quantize_matmul_4bits (slow)
    python scripts/bench_quant.py --bits 8 --block-size 128 --asymmetric

Prints one row per weight: best-of-`--repeat` wall time, parameters/second,
and the peak memory the call adds (its outputs included). The ORT column
includes what using ORT's helper costs us: bf16 -> float32 and the transpose
to its [K, N] layout.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import ml_dtypes
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quant import QuantScheme, get_num_threads, ort_quantize_blockwise, quantize_blockwise

SHAPES = {  # Qwen3-4B: hidden 2560, intermediate 9728, vocab 151936
    "mlp.gate/up_proj-like 9728x2560": (9728, 2560),  # [out, in]: hidden 2560 -> intermediate 9728
    "embed/lm_head 151936x2560": (151936, 2560),
}


def rss_mb(field: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_extra_mb(fn) -> float:
    """Peak RSS during fn() above the RSS before it (Linux: resets the peak first)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return float("nan")
    before = rss_mb("VmRSS")
    fn()
    return rss_mb("VmHWM") - before


def best_time(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bits", type=int, default=4, help="4 or 8 (default: %(default)s)")
    p.add_argument("--block-size", type=int, default=32, help="16, 32, 64, 128 or 256 (default: %(default)s)")
    p.add_argument("--asymmetric", action="store_true", help="zero points too (default: symmetric)")
    p.add_argument("--scale-dtype", default="float32", choices=["float32", "float16"], help="(default: %(default)s)")
    p.add_argument("--repeat", type=int, default=3, help="timed calls per weight, the best kept (default: %(default)s)")
    p.add_argument("--ort", action="store_true", help="also time ORT's own quantizer")
    args = p.parse_args()
    if args.repeat < 1:  # best-of-0 is no timing (it printed inf)
        p.error("--repeat must be at least 1")

    try:
        scheme = QuantScheme(args.bits, args.block_size, not args.asymmetric)
    except ValueError as e:  # a traceback that named QuantScheme's fields, not the flags
        p.error(str(e).replace("QuantScheme.bits=", "--bits ").replace("QuantScheme.block_size=", "--block-size "))
    print(f"{scheme}, scale_dtype={args.scale_dtype}, threads={get_num_threads()}")
    header = f"{'weight (bf16)':32s} {'params':>12s} {'time s':>8s} {'Mparams/s':>10s} {'peak +MB':>9s}"
    if args.ort:
        header += f" {'ORT s':>8s} {'ORT Mparams/s':>14s}"
    print(header)
    rng = np.random.default_rng(0)
    for name, (n, k) in SHAPES.items():
        w = (rng.standard_normal((n, k), np.float32) * np.float32(0.02)).astype(ml_dtypes.bfloat16)
        extra = peak_extra_mb(lambda: quantize_blockwise(w, scheme, args.scale_dtype))
        t = best_time(lambda: quantize_blockwise(w, scheme, args.scale_dtype), args.repeat)
        row = f"{name:32s} {n * k:12,d} {t:8.3f} {n * k / t / 1e6:10.0f} {extra:9.0f}"
        if args.ort:
            t_ort = best_time(lambda: ort_quantize_blockwise(w, scheme, args.scale_dtype), 1)
            row += f" {t_ort:8.3f} {n * k / t_ort / 1e6:14.0f}"
        print(row, flush=True)


if __name__ == "__main__":
    from interrupt import run_main

    run_main(main, "the weights timed before are those printed above")
