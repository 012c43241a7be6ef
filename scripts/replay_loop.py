"""A captured decode step replayed by plain onnxruntime, without onnxruntime-genai (GPU machine).

    python scripts/replay_loop.py FOLDER [--past 256] [--steps 200] [--json OUT]

Splits a genai decode step's time into what the WebGPU EP needs and what genai adds: the
folder's model (a capture-ready webgpu build) runs in one onnxruntime session with
`enableGraphCapture`, every input and output bound to GPU buffers and the KV cache shared in
place, as genai binds them. Three loops over the same captured step (past length fixed, so
every step does the same work):
- `replay`: Run after Run, no readback until the end: the EP's replay, host and GPU overlapped;
- `replay_readback`: each step also copies the logits to the host and takes their argmax, the
  least a generation loop must do before it can feed the next token;
- `replay_readback_upload`: also writes the next input_ids and attention mask from the host,
  as genai does (through OrtValue copies, which on the H200 cost more than genai's own writes).
genai's own time per token (scripts/bench_genai.py) against `replay` is what the per-token
host round trip costs (docs/webgpu-decode.md). `replay_readback` is only a rough stand-in for
genai: on some H200 hosts and at 4B each `OrtValue.numpy()` copy slowed the next Run, which
genai's copies do not.

Then each part of a step is timed on its own (`*_run_returns`, `split_*`, `idle_*`; medians
over the steps): how long Run takes to return, back to back and in a loop that reads each
step's logits (Run encodes and submits the replay; the GPU starts on the first chunk
meanwhile); how long the logits then take to reach the host (the GPU finishing, then the
copy); and, with the GPU idle, a copy of the logits and one of 8 bytes: the readback alone,
and how much of it is latency rather than bytes.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from writable import can_write

from builder import BuilderError
from builder.ep_runtime import ort_session

ONNX_TO_NUMPY = {
    "tensor(float16)": np.float16,
    "tensor(float)": np.float32,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,  # input_ids and attention_mask of --int32-inputs builds
}


def uncaptured_logits(model_path: str, provider_options: dict, tokens, past: int, kv_heads: int, head_size: int):
    """The step for each token, run uncaptured on the WebGPU EP: a KV cache of `past` zeros, as the
    replays see it (WebGPU zero-fills new buffers; each replay writes only its own position)."""
    session = ort_session(model_path, "WebGpuExecutionProvider", provider_options=provider_options)
    types = {spec.name: ONNX_TO_NUMPY[spec.type] for spec in session.get_inputs()}
    feeds = {"attention_mask": np.ones((1, past + 1), types["attention_mask"])}
    for name, dtype in types.items():
        if name.startswith("past_key_values."):
            feeds[name] = np.zeros([1, kv_heads, past, head_size], dtype)
    return [
        session.run(["logits"], {**feeds, "input_ids": np.array([[token]], types["input_ids"])})[0]
        .reshape(-1)
        .astype(np.float32)
        for token in tokens
    ]


def median_ms(seconds: list[float]) -> float:
    return round(statistics.median(seconds) * 1e3, 3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("--past", type=int, default=256, help="Tokens already in the KV cache.")
    parser.add_argument("--steps", type=int, default=200, help="Timed steps per loop.")
    parser.add_argument("--json")
    args = parser.parse_args()
    # Each failed only after the WebGPU sessions: a ZeroDivisionError, a mask of no tokens, a traceback.
    if args.steps < 1 or args.past < 0:
        parser.error("--steps must be at least 1 and --past at least 0")
    if args.json and not can_write(Path(args.json), make_parents=False):
        parser.error(f"--json {args.json}: not a file this run can write; pass one in an existing folder")
    try:
        return replay(parser, args)
    except BuilderError as e:  # no WebGPU runtime or adapter here: it was a traceback from the pool
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code


def replay(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    import onnxruntime as ort

    folder = Path(args.folder)
    if not (folder / "genai_config.json").is_file():
        parser.error(f"{folder} has no genai_config.json; pass a built model folder")
    config = json.loads((folder / "genai_config.json").read_text())
    # The folder's own WebGPU options (enableGraphCapture, validationMode), as genai passes them.
    provider_options = next(
        (o["webgpu"] for o in config["model"]["decoder"]["session_options"]["provider_options"] if "webgpu" in o), {}
    )
    if provider_options.get("enableGraphCapture") != "1":
        parser.error(f"{folder} is not a capture build (genai_config enableGraphCapture)")
    max_length = config["search"]["max_length"]
    if args.past + 1 > max_length:
        parser.error(f"--past {args.past} leaves no room in max_length {max_length}")
    # From genai_config, not the inputs' shapes: the reference builder leaves its dims symbolic.
    kv_heads, head_size = config["model"]["decoder"]["num_key_value_heads"], config["model"]["decoder"]["head_size"]
    # What the replays must give, computed first and in a child process: on the H200 a second
    # WebGPU session did not start while the captured one was open, in this process or another.
    tokens = (17, 99)
    uncaptured = {k: v for k, v in provider_options.items() if k != "enableGraphCapture"}
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        expected = pool.apply(
            uncaptured_logits, (str(folder / "model.onnx"), uncaptured, tokens, args.past, kv_heads, head_size)
        )
    session = ort_session(folder / "model.onnx", "WebGpuExecutionProvider", provider_options=provider_options)
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}

    def device(shape, onnx_type):
        return ort.OrtValue.ortvalue_from_shape_and_type(shape, ONNX_TO_NUMPY[onnx_type], "webgpu", 0)

    ids_host = np.array([[17]], ONNX_TO_NUMPY[inputs["input_ids"].type])
    mask_host = np.zeros((1, max_length), ONNX_TO_NUMPY[inputs["attention_mask"].type])
    mask_host[0, : args.past + 1] = 1
    ids, mask = device([1, 1], inputs["input_ids"].type), device([1, max_length], inputs["attention_mask"].type)
    ids.update_inplace(ids_host)
    mask.update_inplace(mask_host)
    binding = session.io_binding()
    binding.bind_ortvalue_input("input_ids", ids)
    binding.bind_ortvalue_input("attention_mask", mask)
    for name, spec in inputs.items():
        if name.startswith("past_key_values."):
            cache = device([1, kv_heads, max_length, head_size], spec.type)
            binding.bind_ortvalue_input(name, cache)
            binding.bind_ortvalue_output(name.replace("past_key_values.", "present."), cache)
    vocab = config["model"]["vocab_size"]
    logits = device([1, 1, vocab], outputs["logits"].type)
    binding.bind_ortvalue_output("logits", logits)
    run_options = ort.RunOptions()
    run_options.add_run_config_entry("gpu_graph_id", "1")

    run_returns = []

    def step(readback: bool, upload: bool) -> None:
        if upload:
            ids.update_inplace(ids_host)
            mask.update_inplace(mask_host)
        start = time.perf_counter()
        session.run_with_iobinding(binding, run_options)
        run_returns.append(time.perf_counter() - start)
        if readback:
            int(np.argmax(logits.numpy()))

    for _ in range(5):  # the first run captures the step
        step(True, False)
    result = {"folder": str(folder), "past": args.past, "steps": args.steps, "max_length": max_length}
    result["provider_options"] = provider_options
    for name, readback, upload in [
        ("replay", False, False),
        ("replay_readback", True, False),
        ("replay_readback_upload", True, True),
    ]:
        times = []
        run_returns.clear()
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(args.steps):
                step(readback, upload)
            logits.numpy()  # wait for the GPU
            times.append((time.perf_counter() - start) / args.steps)
        result[f"{name}_ms"] = median_ms(times)
        result[f"{name}_run_returns_ms"] = median_ms(run_returns)
        print(
            f"{name}: {result[f'{name}_ms']:.3f} ms a step (median of 3 x {args.steps}); "
            f"Run returns in {result[f'{name}_run_returns_ms']:.3f} ms",
            flush=True,
        )
    split = {"run_returns": [], "logits_on_host": []}
    for _ in range(args.steps):
        t0 = time.perf_counter()
        session.run_with_iobinding(binding, run_options)
        t1 = time.perf_counter()
        int(np.argmax(logits.numpy()))
        split["run_returns"].append(t1 - t0)
        split["logits_on_host"].append(time.perf_counter() - t1)
    small = device([1, 1], "tensor(int64)")
    small.update_inplace(ids_host.astype(np.int64))  # ids_host is int32 in int32-input builds
    idle = {"logits_readback": [], "8_bytes_readback": []}
    for _ in range(args.steps):
        for key, value in zip(idle, (logits, small)):
            start = time.perf_counter()
            value.numpy()
            idle[key].append(time.perf_counter() - start)
    for prefix, parts in (("split", split), ("idle", idle)):
        for key, values in parts.items():
            result[f"{prefix}_{key}_ms"] = median_ms(values)
        print(f"{prefix}: " + ", ".join(f"{k} {result[f'{prefix}_{k}_ms']:.3f} ms" for k in parts), flush=True)
    if args.json:  # the timings stand even if the check below cannot run
        Path(args.json).write_text(json.dumps(result, indent=2))
    # The replays compute: each token's replay against the same step run uncaptured, and the two
    # tokens' logits differ.
    worst, chosen = 0.0, []
    for token, want in zip(tokens, expected):
        ids_host[0, 0] = token
        step(True, True)
        replayed = logits.numpy().reshape(-1).astype(np.float32)
        if int(np.argmax(replayed)) != int(np.argmax(want)):
            raise SystemExit(f"the replayed step chose another token than an uncaptured run for input {token}")
        worst = max(worst, float(np.abs(replayed - want).max()))
        chosen.append(replayed)
    if np.array_equal(*chosen):
        raise SystemExit("the replayed step gave the same logits for two inputs: it did not read them")
    result["check_max_abs_vs_uncaptured"] = worst
    print(f"replayed logits vs an uncaptured run: max |d| {worst:.2e}, same argmax")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    from interrupt import run_main

    run_main(main, "the loops timed before are those printed above")
