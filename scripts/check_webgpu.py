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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from builder import BuildOptions, build  # noqa: E402
from builder.synthetic import TINY_CONFIGS, make_checkpoint  # noqa: E402
from builder.verify import dequantized_reference, verify_build  # noqa: E402

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


def genai_tokens(folder: Path, prompt: list[int], new: int) -> list[int]:
    import onnxruntime_genai as og
    config = og.Config(str(folder))
    config.clear_providers()
    config.append_provider("webgpu")
    model = og.Model(config)
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(prompt) + new, min_length=len(prompt) + new)
    gen = og.Generator(model, params)
    gen.append_tokens(prompt)
    while not gen.is_done():
        gen.generate_next_token()
    return [int(t) for t in gen.get_sequence(0)]


def main() -> int:
    import torch
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
            ours = genai_tokens(result.output, prompt, 16)
            reference = dequantized_reference(ckpt, options, io_dtype=__import__("numpy").float16
                                              if precision != "fp32" else __import__("numpy").float32)
            with torch.no_grad():
                theirs = reference.generate(torch.tensor([prompt]), max_new_tokens=16, min_new_tokens=16,
                                            do_sample=False)[0].tolist()
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
