"""int4/int8 builds at the quantizer's edges, against transformers running the dequantized weights.

The parity suite's tiny configs keep in_features a multiple of 32 (only test_int4_block_sizes' block
128 pads rows: hidden 64, intermediate 192), a vocabulary of 480 and random normal weights. Here:
rows padded to whole blocks (K = 72 or 100 with block 32, K under one block), odd counts of blocks
(the 4-bit zero points' filler nibble, in MatMulNBits and in the embedding's GatherBlockQuantized,
whose Slice drops the padding), odd out_features (a 1001-token vocabulary, tied and untied), and
blocks of zeros, negative zeros, identical values, tiny values and one large outlier, in every matrix
and in the embedding rows the prompt gathers. At accuracy_level 0 with fp32 activations the graph
computes what the reference holds: max |d| 2e-6 to 2e-5 measured, against logits of about 15."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.torch import load_file, save_file
from test_errors import assert_clean_failure, cli

from builder import BuildOptions
from builder.pipeline import build
from builder.verify import compare, dequantized_reference, onnx_logits, onnx_session, torch_logits
from support.synthetic import TINY_CONFIGS, make_checkpoint

BOUND = 1e-4
ODD = {
    # hidden 72: 3 blocks of 32 (the last padded), 5 of 16, one of 128/256; intermediate 100; tied.
    "h72": ("qwen3", dict(hidden_size=72, intermediate_size=100, vocab_size=1001)),
    # hidden 40 and intermediate 24: in_features under one block for most block sizes; untied.
    "h40": ("qwen3-untied", dict(hidden_size=40, intermediate_size=24, head_dim=16, vocab_size=1001)),
}
# Token ids that read the embedding rows edge_weights() rewrites, then ordinary ones.
EDGE_IDS = list(range(12)) + [500, 1000]


def edge_weights(folder):
    """Rewrite rows 0-11 of every matrix of a checkpoint into the blocks a quantizer gets wrong first."""
    path = folder / "model.safetensors"
    tensors = load_file(path)
    for w in tensors.values():
        if w.ndim != 2:
            continue
        k = w.shape[1]
        w[0, :16] = 0.0  # a block of zeros
        w[1, : min(32, k)] = 0.0
        w[1, 3] = 50.0  # one large outlier among zeros
        w[2, 5] = 30 * w[2].abs().max()  # one large outlier among ordinary values
        w[3] = 0.0123  # identical values (asymmetric: a zero range above 0)
        w[4, :16] = -0.0123
        w[5] = 1e-30  # tiny: a scale far below the values' own
        w[6] = -0.0  # negative zeros: a zero scale whose sign follows the first value
        w[7, 16:] = -0.0
        w[8, -1] = -8 * w[8].abs().max()  # the outlier in the last, padded block
        w[9, : k // 2] = w[9, : k // 2].abs()
        w[10] = -w[10].abs()  # all negative: asymmetric zero point at the top
        w[11] = w[11].abs()  # all positive: asymmetric zero point 0
    save_file(tensors, path, metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module")
def odd_checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("odd")
    made = {}

    def get(name: str, edges: bool = False):
        key = (name, edges)
        if key not in made:
            family, overrides = ODD[name]
            folder = make_checkpoint(root / f"{name}-{edges}", {**TINY_CONFIGS[family], **overrides}, seed=0)
            made[key] = edge_weights(folder) if edges else folder
        return made[key]

    return get


def parity(folder, out, ids=EDGE_IDS, **options):
    """Logits of an accuracy-level-0 build for a prefill of `ids` and 3 decode steps, against the reference."""
    result = build(model=str(folder), output=str(out), accuracy_level=0, logits="all", show_progress=False, **options)
    session = onnx_session(result.output)
    reference = dequantized_reference(folder, BuildOptions(**result.report["options"]))
    prompt, decode = np.array([ids]), [5, 6, ids[-1]]
    return compare(torch_logits(reference, prompt, decode), onnx_logits(session, prompt, decode))


@pytest.mark.parametrize("name", sorted(ODD))
@pytest.mark.parametrize(
    "precision,symmetric,block_size",
    [
        ("int4", True, 16),
        ("int4", False, 16),
        ("int4", False, 32),
        ("int4", True, 64),
        ("int4", False, 128),
        ("int4", False, 256),
        ("int8", True, 32),
        ("int8", False, 64),
        ("int8", False, 256),
    ],
)
def test_padded_blocks_and_odd_vocabulary(odd_checkpoints, tmp_path, name, precision, symmetric, block_size):
    result = parity(
        odd_checkpoints(name), tmp_path / "o", precision=precision, symmetric=symmetric, block_size=block_size
    )
    assert result.max_abs < BOUND and result.argmax_agree == 1.0, result


@pytest.mark.parametrize(
    "options",
    [
        dict(precision="int4", symmetric=True),
        dict(precision="int4", symmetric=False),
        dict(precision="int4", symmetric=False, block_size=16),
        dict(precision="int8", symmetric=False),
        # the tied int4 table gathered beside an int8 and a float lm_head
        dict(precision="int4", symmetric=False, int8_layers=["lm_head"]),
        dict(precision="int4", symmetric=False, float_layers=["lm_head"]),
        # the webgpu graph with fp32 activations runs on the CPU EP too
        dict(precision="int4", symmetric=False, ep="webgpu", io_dtype="fp32"),
        dict(precision="int8", symmetric=False, ep="webgpu", io_dtype="fp32"),
    ],
)
@pytest.mark.parametrize("name", sorted(ODD))
def test_edge_values_in_every_matrix_and_embedding_row(odd_checkpoints, tmp_path, name, options):
    """The prompt gathers the rewritten embedding rows; the rewritten lm_head rows are logits."""
    result = parity(odd_checkpoints(name, edges=True), tmp_path / "o", **options)
    assert result.max_abs < BOUND and result.argmax_agree == 1.0, result


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
