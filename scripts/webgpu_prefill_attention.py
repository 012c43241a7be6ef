"""A lone GroupQueryAttention on the WebGPU EP against the CPU EP, over prompt and cache lengths.

    python scripts/webgpu_prefill_attention.py [--swiftshader] [--json OUT]

The graph is the op alone (no rotary, random q/k/v, opset 17, IR 10 so onnxruntime-webgpu 1.27
loads it), at the head counts of the tiny test models and of Qwen3's shapes. It shows where the
EP's attention kernels part from the CPU's: on SwiftShader (subgroups 4 wide) the flash-attention
prefill goes wrong from 32 new tokens on the plugin EP and from 5 on onnxruntime-webgpu 1.27 (session
22, docs/packing.md#webgpu-without-a-gpu); on an NVIDIA H100 every length matched (session 23). Decode
steps over pasts of 1000-4095 positions matched on SwiftShader (session 44).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "scripts"))

HEADS = [(4, 2, 32), (2, 1, 64), (16, 8, 128), (32, 8, 128)]  # (num_heads, kv_num_heads, head_size)
LENGTHS = [
    (4, 0),
    (5, 0),
    (12, 0),
    (17, 0),
    (24, 0),
    (25, 0),
    (31, 0),
    (32, 0),
    (64, 0),
    (256, 0),
    (1, 40),
    (8, 40),
    (40, 8),
    # Decode over the pasts of long generations, up to the last position of a 4096 max_length: every
    # check above ran at most a few hundred positions.
    (1, 1000),
    (1, 4095),
    (16, 2000),
]


def gqa_model(num_heads: int, kv_heads: int, head_size: int) -> bytes:
    from onnx import TensorProto, helper

    f = TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info("query", f, [1, "S", num_heads * head_size]),
        helper.make_tensor_value_info("key", f, [1, "S", kv_heads * head_size]),
        helper.make_tensor_value_info("value", f, [1, "S", kv_heads * head_size]),
        helper.make_tensor_value_info("past_key", f, [1, kv_heads, "P", head_size]),
        helper.make_tensor_value_info("past_value", f, [1, kv_heads, "P", head_size]),
        helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [1]),
        helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, [1]),
    ]
    node = helper.make_node(
        "GroupQueryAttention",
        [i.name for i in inputs],
        ["output", "present_key", "present_value"],
        domain="com.microsoft",
        num_heads=num_heads,
        kv_num_heads=kv_heads,
    )
    outputs = [helper.make_tensor_value_info(n, f, None) for n in node.output]
    graph = helper.make_graph([node], "gqa", inputs, outputs)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=10).SerializeToString()


def measure() -> dict:
    import onnxruntime

    from builder.ep_runtime import ort_session

    rng = np.random.default_rng(0)
    rows = []
    # The models are written for the sessions to load, then no longer needed: none is left behind.
    with tempfile.TemporaryDirectory(prefix="webgpu-gqa-") as tmp:
        folder = Path(tmp)
        for num_heads, kv_heads, head_size in HEADS:
            path = folder / f"gqa-{num_heads}-{kv_heads}-{head_size}.onnx"
            path.write_bytes(gqa_model(num_heads, kv_heads, head_size))
            cpu = ort_session(path)
            webgpu = ort_session(path, "WebGpuExecutionProvider")
            for new, past in LENGTHS:

                def rand(*shape):
                    return rng.standard_normal(shape, np.float32)

                feeds = {
                    "query": rand(1, new, num_heads * head_size),
                    "key": rand(1, new, kv_heads * head_size),
                    "value": rand(1, new, kv_heads * head_size),
                    "past_key": rand(1, kv_heads, past, head_size),
                    "past_value": rand(1, kv_heads, past, head_size),
                    "seqlens_k": np.array([new + past - 1], np.int32),
                    "total_sequence_length": np.array([new + past], np.int32),
                }
                expected, got = cpu.run(["output"], feeds)[0], webgpu.run(["output"], feeds)[0]
                rows.append(
                    {
                        "heads": [num_heads, kv_heads, head_size],
                        "new_tokens": new,
                        "past": past,
                        "max_abs": float(np.abs(expected - got).max()),
                    }
                )
    return {"onnxruntime": onnxruntime.__version__, "rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--swiftshader", action="store_true", help="Use Chromium's SwiftShader as the adapter.")
    parser.add_argument("--json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        from builder import BuilderError

        try:
            print(json.dumps(measure()))
        except BuilderError as e:  # no WebGPU runtime or adapter: the parent shows this line
            print(f"{e}", file=sys.stderr)
            return e.exit_code
        return 0
    if args.json:  # written after every length was measured: a traceback then
        from writable import can_write

        if not can_write(Path(args.json), make_parents=False):
            parser.error(f"--json {args.json}: not a file this run can write; pass one in an existing folder")
    env = None
    if args.swiftshader:  # the loader path must be in place before the process starts
        from support.swiftshader import swiftshader_env, swiftshader_icd

        icd = swiftshader_icd()
        if icd is None or not icd.is_file():
            print(f"error: --swiftshader: no vk_swiftshader_icd.json ({icd}); install chromium", file=sys.stderr)
            return 2
        env = swiftshader_env(icd)
    child = subprocess.run([sys.executable, __file__, "--child"], capture_output=True, text=True, env=env)
    lines = [line for line in child.stdout.splitlines() if line.startswith("{")]
    if child.returncode or not lines:
        last = child.stderr.strip().splitlines()[-1] if child.stderr.strip() else "no output"
        print(f"error: {last}", file=sys.stderr)
        return 1
    result = json.loads(lines[-1])
    for row in result["rows"]:
        print(f"heads {row['heads']} new {row['new_tokens']:3d} past {row['past']:4d}: max |d| {row['max_abs']:.1e}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
