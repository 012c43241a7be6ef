"""YaRN rope scaling (rope_type "yarn"), as Qwen3's model cards enable long context with it.

transformers (modeling_rope_utils._compute_yarn_parameters) blends the original and the
interpolated frequencies along a ramp between the beta_fast and beta_slow correction dims of the
original window, and its models multiply cos and sin by attention_factor; the graph's caches carry
both. Logit parity of every precision and genai's tokens are in tests/test_parity.py (the
"qwen3-yarn" and "llama-yarn" tiny configs, a 32-position original window); here: prompts past that
window, the other families and layouts that read the caches, and the config's keys.
"""

from __future__ import annotations

import copy
import re

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from builder import BuildOptions
from builder.kit import hf_config
from builder.kit.errors import BuilderError
from builder.kit.rope import RopeSpec
from builder.pipeline import build
from builder.verify import (
    compare,
    dequantized_reference,
    genai_greedy_logits,
    torch_step_logits,
    transformers_greedy,
    verify_build,
)
from support.synthetic import TINY_CONFIGS, make_checkpoint

YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}
# Past the 32-position original window, and within the 128 positions of the tiny configs.
LONG_PROMPT, DECODE = 40, 8


def parity(output, checkpoint_dir, options: BuildOptions, bound=1e-4):
    p = verify_build(output, checkpoint_dir, options, prompt_length=LONG_PROMPT, decode_steps=DECODE)
    assert p.steps == DECODE + 1 and p.max_abs < bound and p.argmax_agree == 1.0, p
    return p


def with_config(checkpoint, tmp_path, **changes):
    """qwen3-yarn's checkpoint with config.json changed (one the family refuses cannot be made)."""
    import json
    import shutil

    folder = tmp_path / "changed"
    shutil.copytree(checkpoint("qwen3-yarn"), folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))
    return folder


def build_fp32(checkpoint_dir, tmp_path, **options):
    opts = BuildOptions(
        model=str(checkpoint_dir), output=str(tmp_path / "out"), precision="fp32", logits="all", **options
    )
    return build(opts, show_progress=False), opts


# ---- the numbers, against transformers ------------------------------------------


def llama_config(**extra) -> dict:
    return {"hidden_size": 128, "num_attention_heads": 4, "head_dim": 32, "max_position_embeddings": 128, **extra}


@pytest.mark.parametrize(
    "extra",
    [
        dict(rope_scaling=YARN),  # Qwen3's model card, scaled down
        dict(rope_scaling={**YARN, "factor": None}),  # factor = max_position_embeddings / original
        dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}),  # original = max_position_embeddings
        dict(rope_scaling=YARN, original_max_position_embeddings=16),  # the top-level window wins
        dict(rope_scaling={**YARN, "truncate": False}),
        dict(rope_scaling={**YARN, "mscale": 1.0, "mscale_all_dim": 0.5}),
        dict(rope_scaling={**YARN, "mscale": 0.707, "mscale_all_dim": 0.707}),  # DeepSeek-V3's: factor 1
        dict(rope_scaling={**YARN, "mscale": 2.0}),  # without mscale_all_dim transformers ignores it
        dict(rope_scaling={**YARN, "attention_factor": 1.25, "beta_fast": 8, "beta_slow": 0.5}),
        dict(rope_scaling={**YARN, "beta_fast": None, "beta_slow": None, "attention_factor": None}),
        dict(rope_scaling={**YARN, "factor": 1.0}),  # no stretch: attention_factor 1
        dict(rope_parameters={**YARN, "rope_theta": 5e5, "partial_rotary_factor": 0.25}),  # transformers 5 files
        dict(
            rope_scaling={**YARN, "factor": 2.5, "original_max_position_embeddings": 4096},
            rope_theta=1e6,
            max_position_embeddings=10240,
        ),
    ],
)
def test_inv_freq_and_attention_factor_match_transformers(extra):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = llama_config(**copy.deepcopy(extra))
    inv_freq, attention_factor = ROPE_INIT_FUNCTIONS["yarn"](LlamaConfig(**copy.deepcopy(config)))
    spec = RopeSpec.from_config(config, config["head_dim"])
    assert spec.attention_factor == attention_factor
    # numpy's float32 pow and torch's differ in the last bit for some bases (as for every rope type)
    np.testing.assert_allclose(spec.inv_freq(), inv_freq.numpy(), rtol=3e-7, atol=0)


def test_caches_are_transformers_cos_and_sin_times_the_attention_factor():
    import torch
    from transformers import Qwen3Config
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

    config = {k: v for k, v in TINY_CONFIGS["qwen3-yarn"].items() if k != "torch_dtype"}
    positions = config["max_position_embeddings"]
    rotary = Qwen3RotaryEmbedding(Qwen3Config(**config))
    assert rotary.attention_scaling != 1.0
    cos, sin = rotary(torch.zeros(1, dtype=torch.float32), torch.arange(positions)[None])
    ours = RopeSpec.from_config(config, config["head_dim"]).caches(positions, np.float32)
    half = config["head_dim"] // 2
    np.testing.assert_allclose(ours[0], cos[0, :, :half].numpy(), atol=2e-6, rtol=0)
    np.testing.assert_allclose(ours[1], sin[0, :, :half].numpy(), atol=2e-6, rtol=0)


# ---- prompts past the original window -------------------------------------------


@pytest.mark.parametrize("name", ["qwen3-yarn", "llama-yarn"])
def test_fp32_logits_past_the_original_window_match_transformers(built, checkpoint, name):
    result = built(name, precision="fp32", logits="all")
    parity(result.output, checkpoint(name), BuildOptions(**result.report["options"]))


@pytest.mark.parametrize("name", ["qwen3-yarn", "llama-yarn"])
def test_genai_greedy_tokens_past_the_original_window_match_transformers(built, checkpoint, name):
    result = built(name, precision="fp32")
    prompt = [int(t) for t in np.random.default_rng(1).integers(10, 400, size=LONG_PROMPT)]
    new_tokens = 24
    ours, logits = genai_greedy_logits(result.output, prompt, new_tokens)
    reference = dequantized_reference(checkpoint(name), BuildOptions(model="x", precision="fp32"))
    assert ours == transformers_greedy(reference, prompt, new_tokens)
    steps = compare(torch_step_logits(reference, ours, len(prompt)), logits)
    assert steps.steps == new_tokens and steps.max_abs < 1e-4, steps


@pytest.mark.parametrize(
    "scaling",
    [
        {**YARN, "mscale": 1.0, "mscale_all_dim": 0.5},  # attention_factor from the two mscales
        {**YARN, "factor": None},  # factor from max_position_embeddings / original
    ],
)
def test_attention_factor_from_mscale_and_a_null_factor_match_transformers(checkpoint, tmp_path, scaling):
    folder = checkpoint("qwen3-yarn", rope_scaling=scaling)
    result, options = build_fp32(folder, tmp_path)
    parity(result.output, folder, options)


# ---- other families and layouts -------------------------------------------------


def test_rotary_embedding_nodes_outside_attention_take_the_scaled_caches(checkpoint, tmp_path):
    """head_dim 24 (no multiple of 16): the rotary runs in RotaryEmbedding nodes from position_ids,
    the layout of dml and of such heads everywhere, on the same caches."""
    folder = checkpoint("qwen3-yarn", head_dim=24)
    result, options = build_fp32(folder, tmp_path)
    assert result.report["layout"]["rotary_in_gqa"] is False
    parity(result.output, folder, options)


def test_qwen3_5_partial_rotary_yarn_matches_transformers(checkpoint, tmp_path):
    """Qwen3.5 rotates a quarter of each head: yarn's ramp runs over those 16 dims."""
    rope = {**TINY_CONFIGS["qwen3_5-text"]["rope_parameters"], **YARN}
    folder = checkpoint("qwen3_5-text", rope_parameters=rope, max_position_embeddings=128)
    result, options = build_fp32(folder, tmp_path)
    parity(result.output, folder, options, bound=1e-3)  # tests/parity_cases.py: linear attention's bound


@pytest.mark.parametrize(
    "rope",
    [
        # hub style: the global layers' scaling in rope_scaling
        dict(rope_scaling=YARN),
        # transformers 5 style, keyed by layer type: yarn on both, the sliding layers' with an attention_factor
        dict(
            rope_parameters={
                "full_attention": {**YARN, "rope_theta": 1e6},
                "sliding_attention": {**YARN, "factor": 2.0, "attention_factor": 1.3, "rope_theta": 1e4},
            },
            rope_scaling=None,
            rope_theta=None,
            rope_local_base_freq=None,
            sliding_window_pattern=None,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        ),
    ],
)
def test_gemma3_per_layer_type_yarn_matches_transformers(tmp_path, rope):
    config = {**TINY_CONFIGS["gemma3"], "max_position_embeddings": 128, **rope}
    config = {k: v for k, v in config.items() if v is not None or k == "rope_scaling"}
    folder = make_checkpoint(tmp_path / "ckpt", config)
    result, options = build_fp32(folder, tmp_path)
    parity(result.output, folder, options)


@pytest.mark.parametrize("ep,io_dtype", [("webgpu", "fp32"), ("webgpu", "fp16"), ("dml", "fp16")])
def test_gpu_graphs_hold_the_scaled_caches(built, ep, io_dtype):
    """The webgpu capture-ready graph (rotary in GroupQueryAttention) and dml's (RotaryEmbedding
    nodes) read cos_cache / sin_cache made as the cpu graph's: transformers' cos and sin times
    attention_factor, in the activations' dtype."""
    import torch
    from transformers import Qwen3Config
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

    result = built("qwen3-yarn", precision="int4", ep=ep, io_dtype=io_dtype)
    if ep == "webgpu":
        assert result.report["target"]["graph_capture"] is True
    model = onnx.load(str(result.model_path))
    caches = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name.endswith("_cache")}
    assert sorted(caches) == ["cos_cache", "sin_cache"]
    config = {k: v for k, v in TINY_CONFIGS["qwen3-yarn"].items() if k != "torch_dtype"}
    dtype = torch.float16 if io_dtype == "fp16" else torch.float32
    positions = config["max_position_embeddings"]
    cos, sin = Qwen3RotaryEmbedding(Qwen3Config(**config))(torch.zeros(1, dtype=dtype), torch.arange(positions)[None])
    half = config["head_dim"] // 2
    for ours, theirs in ((caches["cos_cache"], cos), (caches["sin_cache"], sin)):
        assert ours.dtype == (np.float16 if io_dtype == "fp16" else np.float32)
        expected = theirs[0, :, :half].float().numpy()
        np.testing.assert_allclose(ours.astype(np.float32), expected, atol=1e-3 if io_dtype == "fp16" else 2e-6)


# ---- config.json ----------------------------------------------------------------


def test_context_up_to_the_scaled_window_needs_no_allow_long_context(checkpoint, tmp_path):
    """Qwen3's card: 32768 positions x factor 4 = 131072, above config.json's 40960 (here 32 x 4
    = 128 above 64)."""
    import json

    card = {"max_position_embeddings": 40960, "rope_scaling": {**YARN, "original_max_position_embeddings": 32768}}
    assert RopeSpec.from_config(card, 128).max_positions(40960) == 131072
    folder = checkpoint("qwen3-yarn", max_position_embeddings=64)
    result = build(
        BuildOptions(model=str(folder), output=str(tmp_path / "o"), precision="fp32", context_length=128),
        show_progress=False,
    )
    assert json.loads((result.output / "genai_config.json").read_text())["model"]["context_length"] == 128
    with pytest.raises(
        BuilderError, match=re.escape("context_length=129 is more than this model supports (128 positions")
    ):
        build(BuildOptions(model=str(folder), output=str(tmp_path / "p"), context_length=129), show_progress=False)


@pytest.mark.parametrize("rope_type", ["dynamic", "longrope", "proportional"])
def test_other_rope_types_are_still_refused_naming_yarn_as_supported(checkpoint, tmp_path, rope_type):
    folder = with_config(checkpoint, tmp_path, rope_scaling={**YARN, "rope_type": rope_type})
    message = (
        f"{folder}/config.json: rope type '{rope_type}' is not supported yet (supported: default, linear, llama3, yarn)"
    )
    with pytest.raises(BuilderError, match=re.escape(message)):
        build(BuildOptions(model=str(folder), output=str(tmp_path / "o")), show_progress=False)


@pytest.mark.parametrize(
    "scaling,message",
    [
        (
            {"rope_type": "yarn", "original_max_position_embeddings": 32},
            "yarn rope scaling needs factor; it lacks factor",
        ),
        ({**YARN, "truncate": None}, "rope_scaling: truncate is null; it must be true or false"),
        ({**YARN, "truncate": "yes"}, "rope_scaling: truncate = 'yes' is not valid; it must be true or false"),
        ({**YARN, "attention_factor": 0}, "rope_scaling: attention_factor = 0 is not valid; it must be a positive"),
        ({**YARN, "beta_fast": "32"}, "rope_scaling: beta_fast = '32' is not valid"),
        ({**YARN, "mscale": float("inf")}, "rope_scaling: mscale = inf is not valid; it must be a finite number"),
        ({**YARN, "original_max_position_embeddings": 0}, "original_max_position_embeddings = 0 is not valid"),
        ({"rope_type": "linear", "factor": None}, "rope_scaling: factor is null"),  # null only for yarn
    ],
)
def test_bad_yarn_keys_are_refused_naming_the_key(checkpoint, tmp_path, scaling, message):
    folder = with_config(checkpoint, tmp_path, rope_scaling=scaling)
    with pytest.raises(BuilderError, match=message.replace("(", r"\(")):
        build(BuildOptions(model=str(folder), output=str(tmp_path / "o")), show_progress=False)
    assert not (tmp_path / "o").exists()


def test_top_level_original_window_is_read_not_warned_about():
    """transformers takes a top-level original_max_position_embeddings over rope_scaling's (Phi-3
    keeps it there): the build reads it, so no warning says it goes unread."""
    config = {**TINY_CONFIGS["qwen3-yarn"], "original_max_position_embeddings": 16}
    assert hf_config.unread_keys(config) == []
    assert RopeSpec.from_config(config, 32).original_max_position_embeddings == 16
    with pytest.raises(BuilderError, match="original_max_position_embeddings is null"):
        hf_config.check_config({**config, "original_max_position_embeddings": None})


def test_yarn_over_part_of_the_head_is_refused_where_the_family_rotates_the_whole_head(checkpoint, tmp_path):
    """transformers' Llama and Qwen3 make yarn's cos/sin for partial_rotary_factor of the head and
    then fail applying them to all of it: there is no model to build."""
    folder = with_config(checkpoint, tmp_path, partial_rotary_factor=0.5)
    with pytest.raises(BuilderError, match="yarn rope scaling with partial_rotary_factor < 1 \\(16 of head_dim 32\\)"):
        build(BuildOptions(model=str(folder), output=str(tmp_path / "o")), show_progress=False)


def test_gemma3_yarn_without_truncation_is_refused():
    """transformers reads truncate beside Gemma 3's per-layer-type parameters, where it never is:
    truncate false would build another model than the one it runs."""
    from test_gemma3 import spec_of

    config = {**TINY_CONFIGS["gemma3"], "rope_scaling": {**YARN, "truncate": False}}
    with pytest.raises(BuilderError, match="Gemma 3 yarn rope scaling with truncate False \\(full_attention layers\\)"):
        spec_of(config)
    assert spec_of({**config, "rope_scaling": {**YARN, "truncate": True}}).rope.truncate is True
