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
genai's own time per token (scripts/bench_genai.py) against `replay_readback` is genai's
per-step work; against `replay`, what the per-token host round trip costs
(docs/webgpu-decode.md).
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

from builder.ep_runtime import ort_session  # noqa: E402

ONNX_TO_NUMPY = {"tensor(float16)": np.float16, "tensor(float)": np.float32, "tensor(int64)": np.int64}


def uncaptured_logits(model_path: str, provider_options: dict, feeds: dict) -> np.ndarray:
    session = ort_session(model_path, "WebGpuExecutionProvider", provider_options=provider_options)
    return session.run(["logits"], feeds)[0].reshape(-1).astype(np.float32)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("--past", type=int, default=256, help="Tokens already in the KV cache.")
    parser.add_argument("--steps", type=int, default=200, help="Timed steps per loop.")
    parser.add_argument("--json")
    args = parser.parse_args()

    import onnxruntime as ort

    folder = Path(args.folder)
    config = json.loads((folder / "genai_config.json").read_text())
    max_length = config["search"]["max_length"]
    if args.past + 1 > max_length:
        parser.error(f"--past {args.past} leaves no room in max_length {max_length}")
    # The folder's own WebGPU options (enableGraphCapture, validationMode), as genai passes them.
    provider_options = next(
        (o["webgpu"] for o in config["model"]["decoder"]["session_options"]["provider_options"] if "webgpu" in o), {}
    )
    if provider_options.get("enableGraphCapture") != "1":
        parser.error(f"{folder} is not a capture build (genai_config enableGraphCapture)")
    session = ort_session(folder / "model.onnx", "WebGpuExecutionProvider", provider_options=provider_options)
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}

    def device(shape, onnx_type):
        return ort.OrtValue.ortvalue_from_shape_and_type(shape, ONNX_TO_NUMPY[onnx_type], "webgpu", 0)

    ids_host = np.array([[17]], np.int64)
    mask_host = np.zeros((1, max_length), np.int64)
    mask_host[0, : args.past + 1] = 1
    ids, mask = device([1, 1], inputs["input_ids"].type), device([1, max_length], inputs["attention_mask"].type)
    ids.update_inplace(ids_host)
    mask.update_inplace(mask_host)
    binding = session.io_binding()
    # From genai_config, not the input's shape: the reference builder leaves its dims symbolic.
    kv_heads, head_size = config["model"]["decoder"]["num_key_value_heads"], config["model"]["decoder"]["head_size"]
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

    def step(readback: bool, upload: bool) -> None:
        if upload:
            ids.update_inplace(ids_host)
            mask.update_inplace(mask_host)
        session.run_with_iobinding(binding, run_options)
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
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(args.steps):
                step(readback, upload)
            logits.numpy()  # wait for the GPU
            times.append((time.perf_counter() - start) / args.steps * 1e3)
        result[f"{name}_ms"] = round(statistics.median(times), 3)
        print(f"{name}: {result[f'{name}_ms']:.3f} ms a step (median of 3 x {args.steps})", flush=True)
    if args.json:  # the timings stand even if the check below cannot run
        Path(args.json).write_text(json.dumps(result, indent=2))
    # The replays compute: two tokens, each against the same step run uncaptured on the same EP
    # (a KV cache of zeros but the step's own entry, as the loops leave it). The uncaptured session
    # runs in a child process: on the H200 a second WebGPU session with other options in the same
    # process did not start.
    uncaptured = {k: v for k, v in provider_options.items() if k != "enableGraphCapture"}
    worst, chosen = 0.0, []
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        for token in (17, 99):
            ids_host[0, 0] = token
            step(True, True)
            replayed = logits.numpy().reshape(-1).astype(np.float32)
            feeds = {"input_ids": ids_host.copy(), "attention_mask": mask_host[:, : args.past + 1].copy()}
            for name, spec in inputs.items():
                if name.startswith("past_key_values."):
                    feeds[name] = np.zeros([1, kv_heads, args.past, head_size], ONNX_TO_NUMPY[spec.type])
            expected = pool.apply(uncaptured_logits, (str(folder / "model.onnx"), uncaptured, feeds))
            if int(np.argmax(replayed)) != int(np.argmax(expected)):
                raise SystemExit(f"the replayed step chose another token than an uncaptured run for input {token}")
            worst = max(worst, float(np.abs(replayed - expected).max()))
            chosen.append(replayed)
    if np.array_equal(*chosen):
        raise SystemExit("the replayed step gave the same logits for two inputs: it did not read them")
    result["check_max_abs_vs_uncaptured"] = worst
    print(f"replayed logits vs an uncaptured run: max |d| {worst:.2e}, same argmax")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
