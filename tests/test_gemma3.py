"""Gemma 3 text (Gemma3ForCausalLM, and the text model of Gemma3ForConditionalGeneration): graph
details, config resolution against transformers, other layouts and long genai generation. Logit
parity of every precision is in tests/test_parity.py (the "gemma3" and "gemma3-vl" tiny configs);
bounds here are the same: fp32 against transformers to 1e-4.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from safetensors.torch import load_file

from architectures.gemma3 import Gemma3Builder
from builder import BuildOptions
from builder.kit.checkpoint import Checkpoint
from builder.kit.errors import BuilderError
from builder.pipeline import build, run
from builder.verify import verify_build, verify_output
from support.synthetic import TINY_CONFIGS, make_checkpoint

PROMPT, DECODE = 12, 4
TINY = TINY_CONFIGS["gemma3"]


def parity(result, checkpoint_dir, bound=1e-4):
    # Every prompt position, not only the last: a mask that lets a position see later tokens shows there.
    assert result.report["options"]["logits"] == "all", "build with logits='all' for parity"
    options = BuildOptions(**result.report["options"])
    p = verify_build(result.output, checkpoint_dir, options, prompt_length=PROMPT, decode_steps=DECODE)
    assert p.max_abs < bound and p.argmax_agree == 1.0, p
    return p


def attr(node, name, default=None):
    found = [a for a in node.attribute if a.name == name]
    return onnx.helper.get_attribute_value(found[0]) if found else default


def spec_of(config: dict):
    """Gemma3Builder.make_spec without a checkpoint (it reads only the config)."""
    return Gemma3Builder.__new__(Gemma3Builder).make_spec(config)


# ---- the graph ------------------------------------------------------------------


def test_graph_structure(built, checkpoint):
    result = built("gemma3", precision="fp32")
    model = onnx.load(str(result.model_path))
    nodes = model.graph.node
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    layers = TINY["num_hidden_layers"]

    def named(op):
        return [n.name for n in nodes if n.op_type == op]

    # Four norms a layer: the post-norms are plain SLN (before the residual add), the adds
    # ride on pre_feedforward_layernorm and the next input_layernorm / the final norm.
    assert [n for n in named("SimplifiedLayerNormalization") if "/attn/" not in n] == (
        ["/model/layers.0/input_layernorm/LayerNorm"]
        + [
            f"/model/layers.{i}/{norm}/LayerNorm"
            for i in range(layers)
            for norm in ("post_attention_layernorm", "post_feedforward_layernorm")
        ]
    )
    skip = named("SkipSimplifiedLayerNormalization")
    assert skip[0::2] == [f"/model/layers.{i}/pre_feedforward_layernorm/SkipLayerNorm" for i in range(layers)]
    assert skip[1::2] == (
        [f"/model/layers.{i}/input_layernorm/SkipLayerNorm" for i in range(1, layers)] + ["/model/norm/SkipLayerNorm"]
    )
    assert len(named("FastGelu")) == layers and not named("QuickGelu") and not named("Sigmoid")

    # Embedding * sqrt(hidden) in float32, as transformers' embed_scale.to(float32).
    (mul,) = [n for n in nodes if n.name == "/model/embed_tokens/Mul"]
    assert inits[mul.input[1]] == np.float32(math.sqrt(TINY["hidden_size"]))

    # Attention: query_pre_attn_scalar ** -0.5, the window and local rope on sliding layers only.
    gqa = [n for n in nodes if n.op_type == "GroupQueryAttention"]
    assert [attr(n, "scale") for n in gqa] == [pytest.approx(TINY["query_pre_attn_scalar"] ** -0.5, rel=1e-7)] * 3
    assert [attr(n, "local_window_size", -1) for n in gqa] == [6, 6, -1]
    assert [(n.input[7], n.input[8]) for n in gqa] == [("cos_cache_local", "sin_cache_local")] * 2 + [
        ("cos_cache", "sin_cache")
    ]

    # Norm weights are 1 + w (float32 sum), the per-head q/k norms included.
    weights = load_file(checkpoint("gemma3") / "model.safetensors")
    for name in (
        "model.layers.1.post_feedforward_layernorm.weight",
        "model.norm.weight",
        "model.layers.0.self_attn.k_norm.weight",
    ):
        np.testing.assert_array_equal(inits[name], (weights[name].float() + 1.0).numpy())

    genai = json.loads(result.genai_config_path.read_text())["model"]
    assert genai["type"] == "gemma3_text"
    # No sliding_window entry: genai 0.18 would give those layers window + 16-slot KV buffers.
    assert "sliding_window" not in genai["decoder"]
    assert result.report["layout"]["silu"] == "none"


def test_fused_norm_layout_gets_one_plus_w(built, checkpoint):
    """CUDA puts the q/k norms inside GroupQueryAttention: the weights are 1 + w there too."""
    result = built("gemma3", precision="fp16", ep="cuda")
    assert result.report["layout"]["head_norm"] == "gqa"
    model = onnx.load(str(result.model_path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    weights = load_file(checkpoint("gemma3") / "model.safetensors")
    gqa = [n for n in model.graph.node if n.op_type == "GroupQueryAttention"]
    for i, node in enumerate(gqa):
        for j, kind in ((14, "q"), (15, "k")):
            name = f"model.layers.{i}.self_attn.{kind}_norm.weight"
            assert node.input[j] == name
            np.testing.assert_array_equal(inits[name], (weights[name].float() + 1.0).numpy().astype(np.float16))


@pytest.mark.parametrize(
    "swap,rotary_nodes",
    [
        (dict(rotary_in_gqa=False, packed_qkv_into_gqa=False, qkv="separate", packed=frozenset()), 6),  # dml
        (dict(head_norm="reshape-sln", qkv="separate", mlp="separate", packed=frozenset()), 0),  # webgpu
    ],
    ids=["rotary-nodes", "reshape-sln"],
)
def test_other_target_layouts_match_transformers(checkpoint, tmp_path, swap, rotary_nodes):
    """Layouts of other EPs, run on CPU in fp32 by swapping the layout of a cpu build: each
    layer still picks its rope caches, and the reshaped q/k norms get 1 + w."""
    ckpt = checkpoint("gemma3")
    options = BuildOptions(model=str(ckpt), output=str(tmp_path / "out"), precision="fp32", logits="all")
    builder = Gemma3Builder(Checkpoint(ckpt), options)
    builder.plan = replace(builder.plan, layout=replace(builder.plan.layout, **swap))
    result = run(builder, show_progress=False)
    model = onnx.load(str(result.model_path), load_external_data=False)
    rotary = [n for n in model.graph.node if n.op_type == "RotaryEmbedding"]
    assert len(rotary) == rotary_nodes
    ops = result.report["nodes"]["by_op_type"]
    assert ("BranchwiseRMSNorm" in ops) == (builder.plan.layout.head_norm == "branchwise")
    if rotary:
        assert [n.input[2] for n in rotary] == ["cos_cache_local"] * 4 + ["cos_cache"] * 2
        assert "position_ids" in [i.name for i in model.graph.input]
    parity(result, ckpt)


# ---- config resolution -----------------------------------------------------------


def _saved_style(**changes) -> dict:
    """The tiny config as transformers 5 writes it: rope_parameters keyed by layer type and
    layer_types, without rope_theta / rope_scaling / rope_local_base_freq / the pattern."""
    cfg = {
        k: v
        for k, v in TINY.items()
        if k not in ("rope_theta", "rope_scaling", "rope_local_base_freq", "sliding_window_pattern")
    }
    cfg.update(
        layer_types=["full_attention", "sliding_attention", "sliding_attention"],
        rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 500000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 20000.0},
        },
        sliding_window=5,
    )
    cfg.update(changes)
    return cfg


CONFIG_STYLES = {
    "hub-tiny": TINY,
    "saved-tiny": _saved_style(),
    # Keys left out take Gemma3TextConfig's defaults: pattern 6, rope 1e6 / 1e4, window 4096.
    "defaults": {
        k: v
        for k, v in TINY.items()
        if k
        not in (
            "rope_theta",
            "rope_scaling",
            "rope_local_base_freq",
            "sliding_window_pattern",
            "sliding_window",
            "query_pre_attn_scalar",
        )
    }
    | {"num_hidden_layers": 13},
    # google/gemma-3-27b-it's text config, dims as on the hub.
    "27b": {
        **TINY,
        "hidden_size": 5376,
        "intermediate_size": 21504,
        "num_hidden_layers": 62,
        "num_attention_heads": 32,
        "num_key_value_heads": 16,
        "head_dim": 128,
        "query_pre_attn_scalar": 168,
        "sliding_window": 1024,
        "sliding_window_pattern": 6,
        "max_position_embeddings": 131072,
        "rope_local_base_freq": 10000.0,
        "rope_theta": 1000000.0,
        "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
    },
}


@pytest.mark.parametrize("style", list(CONFIG_STYLES))
def test_config_resolution_follows_transformers(style):
    from transformers import Gemma3TextConfig
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RotaryEmbedding

    config = CONFIG_STYLES[style]
    spec = spec_of(config)
    theirs = Gemma3TextConfig(**{k: v for k, v in config.items() if k not in ("architectures", "model_type")})
    rotary = Gemma3RotaryEmbedding(theirs)
    np.testing.assert_allclose(spec.rope.inv_freq(), rotary.full_attention_inv_freq.numpy(), rtol=1e-6)
    np.testing.assert_allclose(spec.local_rope.inv_freq(), rotary.sliding_attention_inv_freq.numpy(), rtol=1e-6)
    assert spec.sliding_layers == tuple(i for i, t in enumerate(theirs.layer_types) if t == "sliding_attention")
    assert spec.sliding_window == theirs.sliding_window
    assert spec.attention_scale == theirs.query_pre_attn_scalar**-0.5
    assert spec.head_dim == theirs.head_dim and spec.num_kv_heads == theirs.num_key_value_heads
    assert spec.tie_word_embeddings


def test_saved_config_style_matches_transformers(tmp_path):
    """Global layer first, nested rope_parameters with their own thetas and linear factor."""
    ckpt = make_checkpoint(tmp_path / "ckpt", _saved_style())
    result = build(model=str(ckpt), output=str(tmp_path / "out"), logits="all", precision="fp32", show_progress=False)
    model = onnx.load(str(result.model_path), load_external_data=False)
    gqa = [n for n in model.graph.node if n.op_type == "GroupQueryAttention"]
    assert [attr(n, "local_window_size", -1) for n in gqa] == [-1, 5, 5]
    parity(result, ckpt)


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(final_logit_softcapping=30.0), "final_logit_softcapping = 30.0 is not implemented"),
        (dict(attn_logit_softcapping=50.0), "attn_logit_softcapping = 50.0 is not implemented"),
        (dict(use_bidirectional_attention=True), "use_bidirectional_attention"),
        (dict(hidden_activation="gelu"), "hidden_activation 'gelu' is not supported"),
        (dict(attention_bias=True), "attention_bias"),
        (dict(rope_parameters={"rope_type": "default", "rope_theta": 5e5}), "keyed by layer type"),
        (
            dict(rope_scaling={"rope_type": "dynamic", "factor": 4.0}),
            r"'dynamic' is not supported yet \(supported: default, linear, llama3, yarn\).*full_attention",
        ),
        (
            # transformers fails on it (a size mismatch), so nothing should be built from it
            dict(rope_scaling={"rope_type": "linear", "factor": 8.0, "partial_rotary_factor": 0.5}),
            "partial_rotary_factor inside Gemma 3's rope parameters.*16 of head_dim 32",
        ),
        (dict(layer_types=["sliding_attention"]), "must name 3 layers"),
        (dict(sliding_window=None), "sliding_window = None must be a positive integer"),
        (dict(query_pre_attn_scalar=0), "query_pre_attn_scalar"),
    ],
)
def test_unsupported_configs_are_refused(change, message):
    with pytest.raises(BuilderError, match=message):
        spec_of({**TINY, **change})


def test_silu_option_is_refused(built):
    with pytest.raises(BuilderError, match="--silu sigmoid-mul: Gemma 3's MLP has no SiLU"):
        built("gemma3", precision="fp32", silu="sigmoid-mul")


# ---- onnxruntime-genai -------------------------------------------------------------


def test_genai_generates_past_the_window(built, checkpoint):
    """48 tokens: far past the window (6) plus the 16 slots genai 0.18 would give a windowed
    layer had genai_config.json a sliding_window entry (that build fails at token 23)."""
    from builder.verify import dequantized_reference, genai_greedy, transformers_greedy

    result = built("gemma3", precision="fp32")
    prompt, new_tokens = [5, 17, 42, 99, 120, 7, 64, 300], 40
    ours = genai_greedy(result.output, prompt, new_tokens)
    reference = dequantized_reference(checkpoint("gemma3"), BuildOptions(model="x", precision="fp32"))
    theirs = transformers_greedy(reference, prompt, new_tokens)
    assert ours == theirs


def test_the_context_memory_check_counts_every_rotary_cache_the_family_has(checkpoint, tmp_path, monkeypatch):
    """The check counted spec.rope and a spec.local_rope by name: a family with a third cache
    (family.rotary) was bounded by two."""
    import builder.kit.plan as plan
    from builder.kit.checkpoint import Checkpoint
    from builder.kit.errors import BuilderError
    from builder.kit.options import BuildOptions
    from builder.kit.targets import Target

    class ThreeCaches(Gemma3Builder):
        def rotary(self, spec):
            return {**super().rotary(spec), "extra": spec.rope}

    ckpt = Checkpoint(checkpoint("gemma3"))
    options = BuildOptions(
        model=str(ckpt.directory), output=str(tmp_path / "o"), context_length=4096, allow_long_context=True
    )
    two = Gemma3Builder(ckpt, options)
    io = Target.from_options(options).io_dtype
    need_two = sum(r.cache_bytes(4096, io) for r in two.rotary(two.spec).values())
    monkeypatch.setattr(plan, "available_memory_bytes", lambda: 2 * need_two + 2)  # two fit in half, three not
    assert Gemma3Builder(ckpt, options).plan.context_length == 4096
    with pytest.raises(BuilderError, match="GiB of rotary cache"):
        ThreeCaches(ckpt, options).plan  # noqa: B018 (planning is what refuses)


F32, F16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


def stream_dtypes(result) -> dict:
    """The ONNX types of the hidden-size norms' scales and of the per-head q/k norms' scales, and
    the float Casts' targets, in a built graph."""
    model = onnx.load(str(result.model_path), load_external_data=False)
    types = {i.name: i.data_type for i in model.graph.initializer}
    found = {"hidden norms": set(), "head norms": set(), "casts": []}
    for node in model.graph.node:
        if node.op_type in ("SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization"):
            found["head norms" if "/attn/" in node.name else "hidden norms"].add(types[node.input[-1]])
        elif node.op_type == "GroupQueryAttention" and len(node.input) > 14:
            found["head norms"] |= {types[node.input[14]], types[node.input[15]]}
        elif node.op_type == "Cast" and attr(node, "to") in (F32, F16):  # not the mask's int casts
            found["casts"].append(attr(node, "to"))
    return found


def test_fp16_builds_keep_the_residual_stream_in_fp32(built):
    """Gemma 3's residual stream leaves fp16's range on real checkpoints (transformers#36822;
    onnxruntime#26732: q4f16 Gemma 3 is invalid on WebGPU; what overflows there is the residual
    add, onnxruntime#29611). Every build with fp16 activations, webgpu's default included, keeps the
    residual adds and hidden-size norms in fp32 and its blocks in fp16, as the reference builder
    writes Gemma 2/3; --io-dtype fp32 keeps everything in fp32, and the all-fp16 graph is there when
    asked for, with a warning."""
    layers = TINY["num_hidden_layers"]
    for options in (
        dict(precision="int4", ep="webgpu"),
        dict(precision="int4", ep="cuda"),  # q/k norms inside GroupQueryAttention
        dict(precision="fp16", ep="dml", context_length=TINY["sliding_window"]),  # dml: within the window
        dict(precision="fp16", ep="cpu"),
    ):
        result = built("gemma3", **options)
        target = result.report["target"]
        assert (target["io_dtype"], target["residual_dtype"]) == ("float16", "float32"), options
        assert any(n.startswith("residual stream and hidden-size norms in fp32") for n in result.report["notes"])
        assert not any("computes in fp16" in n for n in result.report["notes"])  # warnings are notes too
        found = stream_dtypes(result)
        assert found["hidden norms"] == {F32} and found["head norms"] == {F16}, options
        # Up: the embedding, and each block's output; down: each block's input and the final norm's.
        assert sorted(found["casts"]) == [F32] * (2 * layers + 1) + [F16] * (2 * layers + 1), options

    fp32 = built("gemma3", precision="int4", ep="webgpu", io_dtype="fp32")
    assert (fp32.report["target"]["io_dtype"], fp32.report["target"]["residual_dtype"]) == ("float32",) * 2
    assert stream_dtypes(fp32)["casts"] == []

    asked = built("gemma3", precision="fp16", residual_dtype="fp16")
    assert asked.report["target"]["residual_dtype"] == "float16"
    warned = [n for n in asked.report["notes"] if n.startswith("this build computes in fp16, its residual stream too")]
    assert len(warned) == 1 and "--residual-dtype at auto" in warned[0]
    assert stream_dtypes(asked)["hidden norms"] == {F16} and stream_dtypes(asked)["casts"] == []

    inert = built("qwen3", precision="int4", residual_dtype="fp32")  # cpu: fp32 activations already
    assert any(n.startswith("--residual-dtype fp32 had no effect: ") for n in inert.report["notes"])
    qwen3 = built("qwen3", precision="int4", ep="webgpu")  # no overflow known: all fp16, as before
    assert (qwen3.report["target"]["io_dtype"], qwen3.report["target"]["residual_dtype"]) == ("float16",) * 2
    assert not any("fp16" in n for n in qwen3.report["notes"])


def test_a_residual_stream_past_fp16_s_range_stays_finite(checkpoint, tmp_path):
    """The failure behind that default, on a tiny checkpoint: post_feedforward_layernorm scales of
    about 2e4 put transformers' residual stream past 1e5 and 2e5 after its first two layers (fp32),
    beyond fp16's 65504. The fp16 build with the stream in fp32 matches transformers; the all-fp16
    graph of the same checkpoint gives NaN logits."""
    import shutil

    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoint("gemma3"), ckpt)
    weights = load_file(ckpt / "model.safetensors")
    for name in [n for n in weights if n.endswith("post_feedforward_layernorm.weight")]:
        weights[name] = ((weights[name].float() + 1) * 2e4 - 1).to(weights[name].dtype)
    save_file(weights, ckpt / "model.safetensors", metadata={"format": "pt"})
    with torch.no_grad():
        states = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)(
            torch.arange(3, 3 + PROMPT)[None], output_hidden_states=True
        ).hidden_states
    assert [float(h.abs().max()) > 65504 for h in states] == [False, True, True, False]  # the last is normed

    results, options = {}, {}
    for residual in ("auto", "fp16"):
        options[residual] = BuildOptions(
            model=str(ckpt), output=str(tmp_path / residual), precision="fp16", residual_dtype=residual
        )
        build(options[residual], show_progress=False)
        results[residual] = verify_build(
            tmp_path / residual, ckpt, options[residual], prompt_length=PROMPT, decode_steps=DECODE
        )
    wide = results["auto"]
    assert wide.nmse < 1e-4 and wide.argmax_agree == 1.0, wide
    assert not np.isfinite(results["fp16"].max_abs), results["fp16"]
    # transformers' own model overflows in fp16 here, so --verify holds the graph to the NMSE bound alone.
    assert wide.fp16_reference_median_nmse is None, wide
    verified = verify_output(tmp_path / "auto", ckpt, options["auto"], "cpu", fp32_io=False)
    assert (verified["status"], verified["bound"]) == ("passed", "nmse < 0.01"), verified


def test_the_4b_to_27b_checkpoints_build_their_text_model_from_the_hub_s_names(checkpoint, tmp_path):
    """Gemma3ForConditionalGeneration was refused as an unsupported architecture. The hub's files
    (google/gemma-3-4b-it) keep transformers 4's names (language_model.model.*, vision_tower.*,
    multi_modal_projector.*), transformers 5 saves model.language_model.*: both build the text model,
    the vision tensors left out, and match transformers' whole model on text."""
    from safetensors.torch import save_file

    saved = checkpoint("gemma3-vl")
    hub = tmp_path / "hub"
    hub.mkdir()
    for f in saved.iterdir():
        if f.name != "model.safetensors":
            (hub / f.name).write_bytes(f.read_bytes())
    renames = [("model.language_model.", "language_model.model."), ("model.", "")]
    tensors = {}
    for name, t in load_file(saved / "model.safetensors").items():
        old, new = next((o, n) for o, n in renames if name.startswith(o))
        tensors[new + name[len(old) :]] = t
    assert "language_model.model.embed_tokens.weight" in tensors
    assert {n.split(".")[0] for n in tensors} == {"language_model", "vision_tower", "multi_modal_projector"}
    save_file(tensors, str(hub / "model.safetensors"), metadata={"format": "pt"})
    for ckpt in (saved, hub):
        for precision in ("fp32", "int4"):
            out = tmp_path / f"{ckpt.name}-{precision}"
            result = build(model=str(ckpt), output=str(out), precision=precision, verify=True, show_progress=False)
            assert result.report["verify"]["status"] == "passed" and result.report["verify"]["nmse"] < 1e-9
            note = next(n for n in result.report["notes"] if n.startswith("text model only"))
            assert "the vision tower (" in note and "the multi-modal projector (" in note, note
            assert json.loads((out / "genai_config.json").read_text())["model"]["type"] == "gemma3_text"
    webgpu = build(model=str(hub), output=str(tmp_path / "webgpu"), ep="webgpu", show_progress=False)
    target = webgpu.report["target"]
    assert (target["io_dtype"], target["residual_dtype"]) == ("float16", "float32")  # as the text checkpoints


def test_the_4b_to_27b_token_ids_come_from_the_top_level_first(checkpoint, tmp_path):
    """transformers 5 saves text_config's own ids (eos 1, bos 2, pad 0) beside the top level's
    eos [1, 106]; the text view took text_config's, so genai stopped only at 1 and ran past a chat
    turn's end (106). transformers' generation defaults read the top level first, then
    text_config, then Gemma3TextConfig's (bos 2, pad 0), as the hub's 4B config (eos alone) needs."""
    import shutil

    ckpt = tmp_path / "saved"
    shutil.copytree(checkpoint("gemma3-vl"), ckpt)
    (ckpt / "generation_config.json").unlink()  # genai_config then takes config.json's ids
    config = json.loads((ckpt / "config.json").read_text())
    config["text_config"].update(eos_token_id=1, bos_token_id=2, pad_token_id=0)
    config.update(eos_token_id=[1, 106])
    config.pop("bos_token_id"), config.pop("pad_token_id")
    (ckpt / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    build(model=str(ckpt), output=str(out), precision="fp32", show_progress=False)
    model = json.loads((out / "genai_config.json").read_text())["model"]
    # then the tiny tokenizer's eos (<|im_end|>, 479), which a chat turn ends with
    assert (model["eos_token_id"], model["bos_token_id"], model["pad_token_id"]) == ([1, 106, 479], 2, 0)

    del config["text_config"]["bos_token_id"], config["text_config"]["pad_token_id"]
    (ckpt / "config.json").write_text(json.dumps(config))  # as the hub's: eos at the top level alone
    build(model=str(ckpt), output=str(out), precision="fp32", overwrite=True, show_progress=False)
    model = json.loads((out / "genai_config.json").read_text())["model"]
    assert (model["eos_token_id"], model["bos_token_id"], model["pad_token_id"]) == ([1, 106, 479], 2, 0)


def test_verify_passes_a_window_of_one_that_transformers_caches_wrong(tmp_path):
    """transformers' sliding-window cache keeps every key at a window of 1 while its mask takes it to
    keep none, so its cached decode is ~10 logits off its own full forward; --verify compared with
    it and threw away a build that matches the full forward to 6e-6."""
    import torch

    from builder.verify import (
        dequantized_reference,
        genai_greedy,
        onnx_logits,
        onnx_session,
        torch_logits,
        transformers_greedy,
    )

    ckpt = make_checkpoint(tmp_path / "ckpt", {**TINY_CONFIGS["gemma3"], "sliding_window": 1})
    result = build(
        model=str(ckpt), output=str(tmp_path / "o"), precision="fp32", logits="all", verify=True, show_progress=False
    )
    assert result.report["verify"]["status"] == "passed", result.report["verify"]
    reference = dequantized_reference(ckpt, BuildOptions(**result.report["options"]))
    ids, steps = np.array([[395, 455, 119, 149, 417, 203, 7, 9]]), [11, 12, 13]
    expected = torch_logits(reference, ids, steps)
    with torch.no_grad():
        full = reference(torch.tensor([[*ids[0], *steps]]), use_cache=False).logits.numpy()[0]
    assert np.abs(np.concatenate([e[0] for e in expected]) - full).max() < 1e-5  # the full forward's
    ours = onnx_logits(onnx_session(result.model_path), ids, steps)
    assert max(float(np.abs(e - o).max()) for e, o in zip(expected, ours)) < 1e-4
    assert genai_greedy(result.output, ids[0].tolist(), 6) == transformers_greedy(reference, ids[0].tolist(), 6)
