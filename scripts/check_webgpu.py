"""Run tiny builds on the WebGPU EP and compare them with transformers (GPU machine).

    python scripts/check_webgpu.py --json $OUT/webgpu-parity.json

For each layout: logits of a 12-token prefill + 4 decode steps through
onnxruntime's WebGpuExecutionProvider against transformers running the same
(dequantized) weights, and onnxruntime-genai greedy tokens (provider webgpu)
against transformers' greedy tokens. Builds that the runtime refuses are
reported with the error.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # synthetic checkpoints

from builder import BuildOptions, build  # noqa: E402
from support.synthetic import TINY_CONFIGS, make_checkpoint  # noqa: E402
from builder.verify import dequantized_reference, genai_greedy, transformers_greedy, verify_build  # noqa: E402

CASES = [  # (tiny config, precision, qkv packing, mlp packing, target ort)
    ("qwen3", "int4", "auto", "auto", None),
    ("qwen3", "fp16", "auto", "auto", None),
    ("qwen3", "int4", "separate", "separate", None),
    ("qwen3", "int4", "packed-split", "packed", None),
    ("qwen3", "fp32", "auto", "auto", None),
    ("qwen3", "int8", "auto", "auto", None),
    ("qwen3", "int4", "fused-norm", "auto", "1.28"),  # expected to be refused by 1.27
    ("llama", "int4", "auto", "auto", None),
    ("qwen3-untied", "int4", "auto", "auto", None),
    ("qwen2", "int4", "auto", "auto", None),
    ("qwen3-moe", "int4", "auto", "auto", None),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    rows = []
    for config, precision, qkv, mlp, target in CASES:
        ckpt = work / config
        if not ckpt.exists():
            make_checkpoint(ckpt, TINY_CONFIGS[config])
        options = BuildOptions(model=str(ckpt), precision=precision, ep="webgpu", qkv_packing=qkv, mlp_packing=mlp,
                               target_ort=target, output=str(work / f"{config}-{precision}-{qkv}-{mlp}-{target}"),
                               accuracy_level=0)
        row = {"config": config, "precision": precision, "qkv": qkv, "mlp": mlp, "target_ort": target}
        try:
            result = build(options, show_progress=False)
            row["layout"] = result.report["layout"]["qkv_packing"] + "/" + result.report["layout"]["mlp_packing"]
            row["nodes"] = result.report["nodes"]["total"]
            parity = verify_build(result.output, ckpt, options, prompt_length=12, decode_steps=4,
                                  provider="WebGpuExecutionProvider")
            row.update(parity.as_dict())
            prompt = [5, 17, 42, 99, 120, 7, 64, 300]
            ours = genai_greedy(result.output, prompt, 16, provider="webgpu")
            io_dtype = np.float32 if precision == "fp32" else np.float16
            theirs = transformers_greedy(dequantized_reference(ckpt, options, io_dtype=io_dtype), prompt, 16)
            row["genai_tokens_equal"] = ours == theirs
            row["genai_first_mismatch"] = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
        except Exception as e:
            row["error"] = str(e).splitlines()[0][:300]
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
