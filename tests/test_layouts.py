"""Every packing layout is the same model: logits agree with transformers and
with each other, on CPU, wherever the CPU has the kernels."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from builder import BuildOptions
from builder.verify import onnx_logits, onnx_session, verify_build

LAYOUTS = list(
    itertools.product(
        ["packed-split", "separate"],
        ["packed", "separate"],
        ["quickgelu", "sigmoid-mul"],
        ["branchwise", "reshape-sln"],
    )
)


def logits_of(result):
    rng = np.random.default_rng(1)
    return onnx_logits(onnx_session(result.output), rng.integers(0, 480, (1, 12)), [4, 9, 200])


@pytest.mark.parametrize("qkv,mlp,silu,head_norm", LAYOUTS)
def test_layouts_match_transformers_and_each_other(built, checkpoint, qkv, mlp, silu, head_norm):
    options = dict(precision="int4", accuracy_level=0, qkv_packing=qkv, mlp_packing=mlp, silu=silu, head_norm=head_norm)
    result = built("qwen3", **options)
    layout = result.report["layout"]
    assert (layout["qkv_packing"], layout["mlp_packing"], layout["silu"], layout["head_norm"]) == (
        qkv,
        mlp,
        silu,
        head_norm,
    )
    ops = result.report["nodes"]["by_op_type"]
    assert ("Split" in ops) == (qkv == "packed-split" or mlp == "packed")
    parity = verify_build(
        result.output, checkpoint("qwen3"), BuildOptions(**result.report["options"]), prompt_length=12, decode_steps=4
    )
    assert parity.max_abs < 1e-4, parity

    baseline = built(
        "qwen3",
        precision="int4",
        accuracy_level=0,
        qkv_packing="separate",
        mlp_packing="separate",
        silu="sigmoid-mul",
        head_norm="reshape-sln",
    )
    for ours, theirs in zip(logits_of(result), logits_of(baseline)):
        np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_packing_falls_back_when_formats_differ(built, checkpoint):
    """V at int8 in an int4 model (the llama.cpp lesson): q/k/v cannot share one MatMulNBits."""
    result = built(
        "qwen3",
        precision="int4",
        accuracy_level=0,
        qkv_packing="packed-split",
        mlp_packing="packed",
        int8_layers=["*.v_proj", "model.layers.1.mlp.up_proj"],
    )
    notes = " ".join(result.report["layout"]["notes"])
    assert "q/k/v projections differ" in notes and "gate/up projections differ" in notes
    ops = result.report["nodes"]["by_op_type"]
    # Per layer 3 q/k/v + o + down, gate/up packed in layer 0 only, + lm_head.
    assert ops["MatMulNBits"] == 2 * 5 + 1 + 2 + 1
    parity = verify_build(
        result.output, checkpoint("qwen3"), BuildOptions(**result.report["options"]), prompt_length=12, decode_steps=4
    )
    assert parity.max_abs < 1e-4, parity


def test_a_packing_no_layer_can_take_is_reported_as_the_graph_has_it(built):
    """V and up at int8 in every layer: no q/k/v or gate/up group shares one format, so none is packed.
    The report said qkv_packing packed-split, packed_qkv_into_gqa true (Llama has no QK-norm) and
    mlp_packing packed over separate MatMulNBits feeding GroupQueryAttention's query, key and value."""
    import onnx

    result = built("llama", precision="int4", mlp_packing="packed", int8_layers=["*.v_proj", "*.up_proj"])
    graph = onnx.load(str(result.model_path), load_external_data=False).graph
    assert not [n.name for n in graph.node if "qkv_proj" in n.name or "gate_up_proj" in n.name]
    assert all(n.input[1] for n in graph.node if n.op_type == "GroupQueryAttention")  # a key of its own
    layout = result.report["layout"]
    assert (layout["qkv_packing"], layout["packed_qkv_into_gqa"], layout["mlp_packing"]) == (
        "separate",
        False,
        "separate",
    )
    notes = " ".join(layout["notes"])
    assert "q/k/v projections differ in weight format in every layer" in notes and "some layers" not in notes


def test_silu_of_a_model_whose_layers_write_none_is_reported_as_none(built, checkpoint, tmp_path):
    """Qwen3-MoE with every layer sparse: its SwiGLU runs inside QMoE, and the report said silu
    sigmoid-mul (cpu's auto), or quickgelu as --silu asked, over a graph with neither node. A dense
    layer (mlp_only_layers) writes the SiLU --silu picks."""
    from builder import build

    result = built("qwen3-moe", precision="int4", silu="quickgelu")
    ops = result.report["nodes"]["by_op_type"]
    assert "QMoE" in ops and "QuickGelu" not in ops and "Sigmoid" not in ops
    assert result.report["layout"]["silu"] == "none"
    assert any(n.startswith("--silu quickgelu had no effect on this build") for n in result.report["notes"])
    ckpt = checkpoint("qwen3-moe", mlp_only_layers=[0])
    dense = build(
        model=str(ckpt), output=str(tmp_path / "dense"), precision="int4", silu="quickgelu", show_progress=False
    )
    assert dense.report["layout"]["silu"] == "quickgelu" and dense.report["nodes"]["by_op_type"]["QuickGelu"] == 1


@pytest.mark.parametrize("ep", ["webgpu", "dml"])
def test_gpu_layouts_compute_the_same_model_on_cpu(built, checkpoint, ep):
    """The webgpu (target 1.27) and dml graphs have CPU kernels too: fp16-level agreement (NMSE
    2.3e-6 and max |d| 6.5e-3 on logits up to 3.2, measured; the bound leaves 4x)."""
    result = built("qwen3", precision="int4", ep=ep, accuracy_level=0)
    parity = verify_build(
        result.output, checkpoint("qwen3"), BuildOptions(**result.report["options"]), prompt_length=12, decode_steps=4
    )
    assert parity.nmse < 1e-5 and parity.max_abs < 3e-2 and parity.argmax_agree == 1.0, parity


def test_branchwise_refused_where_the_runtime_lacks_it(built):
    from builder import BuilderError

    with pytest.raises(BuilderError, match="--head-norm branchwise"):
        built("qwen3", precision="int4", ep="cpu", target_ort="1.30", head_norm="branchwise")
    with pytest.raises(BuilderError, match="--head-norm branchwise"):
        built("qwen3", precision="int4", ep="webgpu", head_norm="branchwise")


@pytest.mark.parametrize("name", ["qwen3", "llama"])
def test_a_head_size_gqa_cannot_rotate_takes_rotary_embedding_nodes(checkpoint, tmp_path, name):
    """head_dim 24 built a GroupQueryAttention with rotary inside, which onnxruntime refuses at run
    time ("head_size shall be a multiple of 16"), and --verify ended in a traceback. Such heads
    now take RotaryEmbedding nodes: logits match transformers, prefill and decode."""
    from builder import build

    ckpt = checkpoint(name, head_dim=24, **({"hidden_size": 96} if name == "llama" else {}))
    result = build(model=str(ckpt), output=str(tmp_path / "cpu"), precision="fp32", show_progress=False)
    assert result.report["layout"]["rotary_in_gqa"] is False
    assert result.report["nodes"]["by_op_type"]["RotaryEmbedding"] == 2 * 2  # q and k, two layers
    assert any("head_dim 24" in note for note in result.report["notes"])
    parity = verify_build(
        result.output, ckpt, BuildOptions(**result.report["options"]), prompt_length=12, decode_steps=4
    )
    assert parity.max_abs < 1e-4 and parity.argmax_agree == 1.0, parity


def test_a_head_size_gqa_cannot_rotate_is_built_without_capture_for_webgpu(checkpoint, tmp_path):
    """Capture-ready graphs have no position_ids; the RotaryEmbedding layout needs them."""
    import json

    from builder import BuilderError, build

    ckpt = checkpoint("qwen3", head_dim=24)
    result = build(model=str(ckpt), output=str(tmp_path / "wg"), precision="int4", ep="webgpu", show_progress=False)
    config = json.loads((result.output / "genai_config.json").read_text())
    assert config["model"]["decoder"]["inputs"]["position_ids"] == "position_ids"
    assert config["model"]["decoder"]["session_options"]["provider_options"][0]["webgpu"]["enableGraphCapture"] == "0"
    with pytest.raises(BuilderError, match="graph_capture='on': head_dim 24 is no multiple of 16"):
        build(model=str(ckpt), output=str(tmp_path / "on"), ep="webgpu", graph_capture="on", show_progress=False)
    with pytest.raises(BuilderError, match="qkv_packing='fused-norm' needs GroupQueryAttention's own rotary"):
        build(model=str(ckpt), output=str(tmp_path / "fn"), ep="webgpu", qkv_packing="fused-norm", show_progress=False)
    assert not (tmp_path / "on").exists() and not (tmp_path / "fn").exists()


def test_an_explicit_qkv_packing_stands_where_gqa_reads_no_packed_qkv():
    """auto falls back to separate projections where GroupQueryAttention cannot read a packed QKV
    (dml); a packing the user names is built as named (MatMul + Split feeds GQA separate q/k/v)."""
    from builder import BuildOptions
    from builder.kit.layout import PackGroup, choose_layout
    from builder.kit.targets import Target

    groups = [PackGroup("layers.0.qkv", ("q", "k", "v"), "qkv")]
    formats = dict.fromkeys(("q", "k", "v"), "fp16")
    for packing, qkv, packed in (("auto", "separate", []), ("packed-split", "packed-split", ["layers.0.qkv"])):
        options = BuildOptions(model="x", ep="dml", qkv_packing=packing)
        layout = choose_layout(options, Target.from_options(options), False, groups, formats)
        assert (layout.qkv, sorted(layout.packed), layout.packed_qkv_into_gqa) == (qkv, packed, False)


def test_auto_fused_norm_falls_back_where_gqa_cannot_rotate_the_heads():
    """cuda's auto layout puts the q/k norms inside GroupQueryAttention, after its own rotary; a head
    size GQA cannot rotate takes RotaryEmbedding nodes before it, which the norms must precede."""
    from builder import BuildOptions
    from builder.kit.layout import PackGroup, choose_layout
    from builder.kit.targets import Target

    groups = [PackGroup("layers.0.qkv", ("q", "k", "v"), "qkv")]
    formats = dict.fromkeys(("q", "k", "v"), "int4")
    options = BuildOptions(model="x", ep="cuda")
    target = Target.from_options(options)
    assert choose_layout(options, target, True, groups, formats, head_dim=128).head_norm == "gqa"
    layout = choose_layout(options, target, True, groups, formats, head_dim=8)
    assert (layout.qkv, layout.head_norm, layout.rotary_in_gqa) == ("packed-split", "reshape-sln", False)


def test_a_family_packing_qkv_of_a_qk_norm_model_keeps_the_split_before_gqa():
    """A family's adjust_layout that packs q/k/v: GQA may read the packed QKV only where no q/k norm
    comes between the projection and attention."""
    import dataclasses

    from builder.kit.layout import Layout, PackGroup, family_adjusted

    groups = [PackGroup("layers.0.qkv", ("q", "k", "v"), "qkv")]
    formats = dict.fromkeys(("q", "k", "v"), "int4")
    chosen = Layout("separate", "separate", "reshape-sln", True, False)
    for qk_norm in (True, False):
        adjusted = family_adjusted(chosen, dataclasses.replace(chosen, qkv="packed-split"), groups, formats, qk_norm)
        assert (adjusted.packed, adjusted.packed_qkv_into_gqa) == (frozenset({"layers.0.qkv"}), not qk_norm)


def test_a_family_packing_that_no_layer_can_take_is_labelled_separate():
    """adjust_layout setting qkv packed-split (or mlp packed) where the projections differ in format in
    every layer packed nothing, yet the report said packed-split and, without QK-norm, that GQA
    reads a packed QKV."""
    import dataclasses

    from builder.kit.layout import Layout, PackGroup, family_adjusted

    groups = [PackGroup("layers.0.qkv", ("q", "k", "v"), "qkv"), PackGroup("layers.0.gate_up", ("g", "u"), "mlp")]
    formats = {"q": "int4", "k": "int4", "v": "int8", "g": "int4", "u": "int8"}
    chosen = Layout("separate", "separate", "reshape-sln", True, False)
    asked = dataclasses.replace(chosen, qkv="packed-split", mlp="packed")
    adjusted = family_adjusted(chosen, asked, groups, formats, False)
    assert (adjusted.qkv, adjusted.mlp, adjusted.packed, adjusted.packed_qkv_into_gqa) == (
        "separate",
        "separate",
        frozenset(),
        False,
    )
