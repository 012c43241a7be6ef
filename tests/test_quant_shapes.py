"""int4/int8 builds at the quantizer's edges, against transformers running the dequantized weights."""

from __future__ import annotations

import numpy as np
from test_errors import assert_clean_failure, cli

from builder import BuildOptions
from builder.pipeline import build
from builder.verify import compare, dequantized_reference, onnx_logits, onnx_session, torch_logits
from support.synthetic import TINY_CONFIGS, make_checkpoint

BOUND = 1e-4
EDGE_IDS = list(range(12)) + [500, 1000]


def parity(folder, out, ids=EDGE_IDS, **options):
    """Logits of an accuracy-level-0 build for a prefill of `ids` and 3 decode steps, against the reference."""
    result = build(model=str(folder), output=str(out), accuracy_level=0, logits="all", show_progress=False, **options)
    session = onnx_session(result.output)
    reference = dequantized_reference(folder, BuildOptions(**result.report["options"]))
    prompt, decode = np.array([ids]), [5, 6, ids[-1]]
    return compare(torch_logits(reference, prompt, decode), onnx_logits(session, prompt, decode))


def test_experts_that_split_into_no_whole_blocks_are_refused_with_the_options_that_build(tmp_path):
    """QMoE takes no padded blocks: such experts were refused without a word of what builds them.
    The refusal names a block size that divides both sizes, where one does, and float experts; the
    block size it names builds."""
    config = {**TINY_CONFIGS["qwen3-moe"], "hidden_size": 80, "moe_intermediate_size": 48}
    folder = make_checkpoint(tmp_path / "moe", config, seed=0)
    out = tmp_path / "out"
    refused = cli("-m", folder, "-p", "int4", "--block-size", "32", "-o", out)
    assert_clean_failure(
        refused,
        "hidden_size 80 and moe_intermediate_size 48",
        "--block-size 32",
        "build with --block-size 16, or --float-layers '*.experts'",
        out=out,
    )
    assert refused.returncode == 2
    int8 = cli("-m", folder, "-p", "int8", "--block-size", "32", "-o", out)
    assert_clean_failure(int8, "--block-size 16, or --accuracy-level 0", out=out)
    result = parity(folder, out, ids=[1, 2, 3, 4], precision="int4", block_size=16)
    assert result.max_abs < BOUND, result
