"""Qwen3.5 / Qwen3-Next specifics: packed linear-attention projections from either checkpoint layout,
the graph's structure and state I/O, genai_config, and refusals. Logits and tokens against transformers
are in test_parity.py (parity_cases.py lists these families)."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from safetensors.torch import load_file, save_file
from test_webgpu import RIGHT_PADDING_OPS, WEBGPU_OPS, int64_values

from builder import BuildOptions
from builder.kit.errors import BuilderError
from support.synthetic import TINY_CONFIGS, text_config


def relay_fused(src, dst):
    """The same weights in Qwen3-Next's fused form: in_proj_qkvz rows [q_g | k_g | v_g | z_g] and
    in_proj_ba rows [b_g | a_g] per key-head group g (transformers' fix_query_key_value_ordering, inverted)."""
    shutil.copytree(src, dst)
    t = text_config(json.loads((src / "config.json").read_text()))
    hk, hv, dk, dv = (
        t["linear_num_key_heads"],
        t["linear_num_value_heads"],
        t["linear_key_head_dim"],
        t["linear_value_head_dim"],
    )
    r = hv // hk
    weights = load_file(src / "model.safetensors")
    out = {}
    for name, w in weights.items():
        if name.endswith("in_proj_qkv.weight"):
            p = name[: -len("in_proj_qkv.weight")]
            q, k, v = w.split([hk * dk, hk * dk, hv * dv])
            z = weights[p + "in_proj_z.weight"]
            groups = [
                torch.cat(
                    [q.view(hk, dk, -1)[g], k.view(hk, dk, -1)[g], v.view(hk, r * dv, -1)[g], z.view(hk, r * dv, -1)[g]]
                )
                for g in range(hk)
            ]
            out[p + "in_proj_qkvz.weight"] = torch.cat(groups).contiguous()
            b, a = weights[p + "in_proj_b.weight"], weights[p + "in_proj_a.weight"]
            out[p + "in_proj_ba.weight"] = torch.cat(
                [torch.cat([b.view(hk, r, -1)[g], a.view(hk, r, -1)[g]]) for g in range(hk)]
            ).contiguous()
        elif not name.endswith(("in_proj_z.weight", "in_proj_b.weight", "in_proj_a.weight")):
            out[name] = w
    (dst / "model.safetensors").unlink()
    save_file(out, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def build(checkpoint_dir, out, **options):
    from architectures.registry import builder_class_for
    from builder.kit.checkpoint import Checkpoint
    from builder.pipeline import run

    ckpt = Checkpoint(checkpoint_dir)
    opts = BuildOptions(model=str(checkpoint_dir), output=str(out), **options)
    return run(builder_class_for(ckpt.config)(ckpt, opts), show_progress=False)


@pytest.mark.parametrize("name", ["qwen3_5", "qwen3_5-text"])
@pytest.mark.parametrize("precision", ["int4", "fp32"])
def test_split_and_fused_layouts_build_identical_data(checkpoint, tmp_path, name, precision):
    split = checkpoint(name)
    fused = relay_fused(split, tmp_path / "fused")
    assert "model.layers.0.linear_attn.in_proj_qkvz.weight" in load_file(
        fused / "model.safetensors"
    ) or "model.language_model.layers.0.linear_attn.in_proj_qkvz.weight" in load_file(fused / "model.safetensors")
    a = build(split, tmp_path / "a", precision=precision)
    b = build(fused, tmp_path / "b", precision=precision)
    assert a.data_path.read_bytes() == b.data_path.read_bytes()
    assert a.model_path.read_bytes() == b.model_path.read_bytes()


def fuse_experts(src, dst):
    """The experts as Qwen3.5-MoE's hub files store them (and transformers holds them): per layer
    experts.gate_up_proj [E, 2I, H], gate rows first, and experts.down_proj [E, H, I]."""
    import re

    shutil.copytree(src, dst)
    weights = load_file(src / "model.safetensors")
    out, experts = {}, {}
    for name, w in weights.items():
        found = re.fullmatch(r"(.*\.mlp\.experts)\.(\d+)\.(gate|up|down)_proj\.weight", name)
        if found:
            experts.setdefault(found[1], {})[(int(found[2]), found[3])] = w
        else:
            out[name] = w
    for prefix, parts in experts.items():
        count = 1 + max(e for e, _ in parts)
        out[f"{prefix}.gate_up_proj"] = torch.stack(
            [torch.cat([parts[(e, "gate")], parts[(e, "up")]]) for e in range(count)]
        ).contiguous()
        out[f"{prefix}.down_proj"] = torch.stack([parts[(e, "down")] for e in range(count)]).contiguous()
    (dst / "model.safetensors").unlink()
    save_file(out, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize("name", ["qwen3_5-moe", "qwen3-next"])
@pytest.mark.parametrize("precision", ["int4", "fp32"])
def test_experts_stored_fused_build_what_experts_one_by_one_build(checkpoint, tmp_path, name, precision):
    """Qwen3.5-MoE's hub files (35B-A3B and up) store each layer's experts in two fused tensors;
    the builder read only experts stored one by one, and refused them as incomplete checkpoints."""
    one_by_one = checkpoint(name)
    fused = fuse_experts(one_by_one, tmp_path / "fused")
    assert any(n.endswith("mlp.experts.gate_up_proj") for n in load_file(fused / "model.safetensors"))
    a = build(one_by_one, tmp_path / "a", precision=precision)
    b = build(fused, tmp_path / "b", precision=precision, verify=precision == "fp32")
    assert a.data_path.read_bytes() == b.data_path.read_bytes()
    assert a.model_path.read_bytes() == b.model_path.read_bytes()
    if precision == "fp32":  # transformers loads the fused files as they are
        assert b.report["verify"]["status"] == "passed", b.report["verify"]


@pytest.mark.parametrize("name", ["qwen3_5", "qwen3_5-text", "qwen3_5-moe", "qwen3_5-moe-text", "qwen3-next"])
def test_one_qkvz_and_one_ba_projection_per_linear_layer(built, name):
    result = built(name, precision="int4")
    model = onnx.load(result.model_path, load_external_data=False)
    t = text_config(TINY_CONFIGS[name])
    interval = t.get("full_attention_interval", 4)
    types = t.get("layer_types") or [
        "full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(t["num_hidden_layers"])
    ]
    linear = [i for i, kind in enumerate(types) if kind == "linear_attention"]
    for i in range(len(types)):
        nodes = [n for n in model.graph.node if n.name.startswith(f"/model/layers.{i}/linear_attn/")]
        ops = Counter(n.op_type for n in nodes)
        if i not in linear:
            assert not nodes
            continue
        qkvz = [n for n in nodes if n.name.startswith(f"/model/layers.{i}/linear_attn/in_proj_qkvz/")]
        ba = [n for n in nodes if n.name.startswith(f"/model/layers.{i}/linear_attn/in_proj_ba/")]
        assert [n.op_type for n in qkvz] == ["MatMulNBits", "Split"]
        # float b|a, packed; the Where keeps genai's right pads out of the state (kit/blocks/right_padding.py)
        assert [n.op_type for n in ba] == ["MatMul", "Where", "Split"]
        assert ops["MatMulNBits"] == 2 and ops["MatMul"] == 1  # qkvz, out_proj; ba
        assert ops["CausalConvWithState"] == ops["LinearAttention"] == 1 and not ops["GatedRMSNorm"]


def test_state_io_and_genai_config(built):
    result = built("qwen3_5", precision="int4")
    model = onnx.load(result.model_path, load_external_data=False)
    t = text_config(TINY_CONFIGS["qwen3_5"])
    conv = (
        2 * t["linear_num_key_heads"] * t["linear_key_head_dim"]
        + t["linear_num_value_heads"] * t["linear_value_head_dim"]
    )

    def dims(vi):
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]

    inputs = {i.name: dims(i) for i in model.graph.input}
    outputs = {o.name: dims(o) for o in model.graph.output}
    for i in (0, 1, 2):  # linear attention: conv and recurrent state, no KV
        assert inputs[f"past.{i}.conv"] == outputs[f"present.{i}.conv"] == ["batch_size", conv, 3]
        assert inputs[f"past.{i}.recurrent"] == [
            "batch_size",
            t["linear_num_value_heads"],
            t["linear_key_head_dim"],
            t["linear_value_head_dim"],
        ]
        assert f"past_key_values.{i}.key" not in inputs
    assert inputs["past_key_values.3.key"] == ["batch_size", 2, "past_sequence_length", t["head_dim"]]
    assert "past.3.conv" not in inputs and "position_ids" not in inputs

    config = json.loads(result.genai_config_path.read_text())["model"]
    assert config["type"] == "qwen3_5_text"
    decoder = config["decoder"]
    assert decoder["inputs"]["past_conv_names"] == "past.%d.conv"
    assert decoder["inputs"]["past_recurrent_names"] == "past.%d.recurrent"
    assert decoder["outputs"]["present_conv_names"] == "present.%d.conv"
    assert decoder["outputs"]["present_recurrent_names"] == "present.%d.recurrent"
    assert (decoder["head_size"], decoder["num_key_value_heads"], decoder["num_hidden_layers"]) == (64, 2, 4)


def test_vision_tower_is_skipped_and_said(built):
    result = built("qwen3_5", precision="fp32")
    model = onnx.load(result.model_path, load_external_data=False)
    assert not [i.name for i in model.graph.initializer if "visual" in i.name or i.name.startswith("mtp")]
    assert (
        "text model only: not built from the checkpoint are the vision tower (model.visual.*, 1 tensor), "
        "the multi-token-prediction head (mtp.*, 1 tensor)"
    ) in result.report["notes"]


def test_what_is_left_out_is_said_for_the_tensors_a_checkpoint_holds(checkpoint, tmp_path):
    """The note was written for the ConditionalGeneration checkpoints alone, whatever they held: a
    Qwen3-Next checkpoint's MTP head (its hub files carry one) went unsaid, and a checkpoint without
    a vision tower was said to have one left out."""
    source = checkpoint("qwen3-next")
    folder = tmp_path / "with-mtp"
    shutil.copytree(source, folder)
    weights = load_file(folder / "model.safetensors")
    hidden = weights["model.norm.weight"].shape[0]
    weights |= {"mtp.fc.weight": torch.zeros(hidden, 2 * hidden), "mtp.norm.weight": torch.ones(hidden)}
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    notes = build(folder, tmp_path / "a", precision="int4").report["notes"]
    assert (
        "text model only: not built from the checkpoint are the multi-token-prediction head (mtp.*, 2 tensors)" in notes
    )
    assert not any(
        n.startswith("text model only") for n in build(source, tmp_path / "b", precision="int4").report["notes"]
    )


@pytest.mark.parametrize("name", ["qwen3_5-text", "qwen3_5-moe-text", "qwen3-next"])
def test_text_checkpoints_hold_what_transformers_saves(checkpoint, tmp_path, name):
    """The flat text checkpoints carry the names, shapes and model_type that transformers' own
    *ForCausalLM.save_pretrained writes (experts one by one, model.* prefix)."""
    import transformers
    from safetensors import safe_open

    ours = checkpoint(name)
    config = transformers.AutoConfig.from_pretrained(ours)
    model = transformers.AutoModelForCausalLM.from_config(config)
    assert type(model).__name__ == TINY_CONFIGS[name]["architectures"][0]
    model.save_pretrained(tmp_path)

    def layout(d):
        with safe_open(d / "model.safetensors", "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}

    assert layout(ours) == layout(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == TINY_CONFIGS[name]["model_type"]
    assert ("intermediate_size" in saved) == ("intermediate_size" in TINY_CONFIGS[name])


def test_text_moe_genai_type_and_no_vision_note(built):
    result = built("qwen3_5-moe-text", precision="int4")
    assert json.loads(result.genai_config_path.read_text())["model"]["type"] == "qwen3_5_moe_text"
    assert not any("vision tower" in note for note in result.report["notes"])


@pytest.mark.parametrize(
    "ep,precision,target_ort",
    [("cuda", "int4", None), ("webgpu", "int4", "1.27"), ("cuda", "fp32", None), ("dml", "int8", None)],
)
def test_refused_where_the_kernels_are_missing(checkpoint, tmp_path, ep, precision, target_ort):
    """fp32 cuda and int8 dml were refused first as "build fp16 or int4 for cuda/dml", which
    the family then refused too: the family's refusal comes first."""
    where = r"builds for cpu \(onnxruntime >= 1.31\) and webgpu \(onnxruntime >= 1.31 with the onnxruntime-ep-webgpu"
    with pytest.raises(BuilderError, match=where):
        build(checkpoint("qwen3_5"), tmp_path / "o", precision=precision, ep=ep, target_ort=target_ort)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name", ["qwen3_5-moe", "qwen3_5-moe-text", "qwen3-next"])
@pytest.mark.parametrize("ep", ["webgpu", "cuda"])
def test_moe_families_are_refused_on_gpu_eps(checkpoint, tmp_path, name, ep):
    """On cuda the linear-attention refusal named webgpu, which the MoE nodes rule out too."""
    with pytest.raises(BuilderError, match=f"builds only for -e cpu here.*got -e {ep}"):
        build(checkpoint(name), tmp_path / "o", precision="int4", ep=ep)


@pytest.mark.parametrize(
    "options,said",
    [
        # Said the MoE family builds for webgpu too (the dense families' linear-attention refusal).
        ({"precision": "fp16", "target_ort": "1.30"}, "its CausalConvWithState/LinearAttention/LinearAttentionGate "),
        # Said 1.23 (the float MoE nodes' floor), and a build at 1.23 was then refused for 1.31.
        ({"precision": "fp16", "target_ort": "1.17"}, "its MoE/QMoE nodes and CausalConvWithState/"),
        ({"precision": "fp16", "ep": "webgpu"}, "builds only for -e cpu here: "),
        # Offered fp16/fp32, which onnxruntime-node 1.25 refuses as well (their linear attention).
        ({"precision": "int4", "format": "transformers.js", "target_ort": "1.25"}, "build --format genai, "),
    ],
)
def test_moe_hybrids_name_the_version_their_whole_graph_needs(checkpoint, tmp_path, options, said):
    with pytest.raises(BuilderError) as refused:
        build(checkpoint("qwen3-next"), tmp_path / "o", **options)
    message = str(refused.value)
    assert said in message
    assert "1.31" in message or "1.30" in message, message
    assert ">= 1.23" not in message and "webgpu (" not in message and "-p fp16 or -p fp32" not in message, message
    assert not (tmp_path / "o").exists()


def test_beams_in_generation_config_leave_capture_on(checkpoint, tmp_path, capfd):
    """--help and the README said auto capture is off for num_beams > 1; a hybrid's num_beams is
    written as 1 (genai's beams diverge on its recurrent state), so its capture stays on."""
    folder = tmp_path / "ckpt"
    shutil.copytree(checkpoint("qwen3_5"), folder)
    generation = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({**generation, "num_beams": 4}))
    result = build(folder, tmp_path / "o", ep="webgpu")
    assert result.report["target"]["graph_capture"] is True
    assert json.loads(result.genai_config_path.read_text())["search"]["num_beams"] == 1
    assert "recurrent state" in capfd.readouterr().err
    help_text = BuildOptions.__dataclass_fields__["graph_capture"].metadata["help"]
    assert "as do the models with recurrent layers, Qwen3.5 and Qwen3-Next, so those keep capture" in help_text


def test_transformers_js_cpu_build_keeps_reshape_sln_head_norms(built):
    """--help said auto head norms are branchwise for the hybrids on cpu; onnxruntime-node 1.30, which
    transformers.js 4.3 pins, has no BranchwiseRMSNorm, so a transformers.js cpu build writes reshape-sln."""
    assert built("qwen3_5", precision="int4").report["layout"]["head_norm"] == "branchwise"
    result = built("qwen3_5", precision="int4", format="transformers.js")
    assert result.report["layout"]["head_norm"] == "reshape-sln"
    assert "BranchwiseRMSNorm" not in result.report["nodes"]["by_op_type"]
    help_text = " ".join(BuildOptions.__dataclass_fields__["head_norm"].metadata["help"].split())
    assert "on cpu targets that run it (not --format transformers.js" in help_text


@pytest.mark.parametrize("options", [{}, {"padded_batches": "on"}])
def test_webgpu_build_is_capture_ready(built, options):
    """The plugin EP target: every node one the WebGPU EP runs (capture refuses a graph with a CPU
    node), no int64 arithmetic, state inputs at fixed shapes, and the genai_config capture entries.
    scripts/check_webgpu.py runs it on the EP against transformers."""
    result = built("qwen3_5", precision="int4", ep="webgpu", **options)
    assert result.report["target"]["graph_capture"] is True
    model = onnx.load(result.model_path, load_external_data=False)
    ops = {n.op_type for n in model.graph.node}
    linear_ops = {"CausalConvWithState", "LinearAttention", "LinearAttentionGate"}
    assert linear_ops <= ops
    allowed = WEBGPU_OPS | (RIGHT_PADDING_OPS if options else set())
    assert ops - linear_ops <= allowed, ops - linear_ops - allowed
    assert (RIGHT_PADDING_OPS <= ops) == bool(options)
    assert "BranchwiseRMSNorm" not in ops  # no WebGPU kernel: Reshape/SimplifiedLayerNormalization/Reshape
    assert not int64_values(model)
    config = json.loads(result.genai_config_path.read_text())
    assert config["model"]["decoder"]["session_options"]["provider_options"] == [
        {"webgpu": {"enableGraphCapture": "1", "validationMode": "disabled"}}
    ]
    assert config["search"]["past_present_share_buffer"] is True
    assert config["model"]["decoder"]["inputs"]["past_recurrent_names"] == "past.%d.recurrent"


@pytest.mark.parametrize("name", ["qwen3_5", "qwen3_5-text"])
def test_fused_norm_puts_the_gated_layers_q_k_norms_into_group_query_attention(built, name):
    """--qkv-packing fused-norm was dropped in silence on the gated full-attention layers (their
    norms stayed Reshape/SimplifiedLayerNormalization/Reshape) while the report said fused-norm."""
    result = built(name, precision="int4", ep="webgpu", qkv_packing="fused-norm")
    model = onnx.load(result.model_path, load_external_data=False)
    inits = {t.name: t for t in model.graph.initializer}
    gqa = [n for n in model.graph.node if n.op_type == "GroupQueryAttention"]
    assert gqa and result.report["layout"]["head_norm"] == "gqa"
    for node in gqa:
        layer = node.name.split("/")[2]  # /model/layers.N/attn/GroupQueryAttention
        assert len(node.input) == 16 and node.input[14].endswith(f"{layer}.self_attn.q_norm.weight"), node.input
        assert [d for d in inits[node.input[15]].dims] == [text_config(TINY_CONFIGS[name])["head_dim"]]
        assert any(a.name == "qk_norm_epsilon" for a in node.attribute)
        assert not [n for n in model.graph.node if n.name.startswith(f"/model/{layer}/attn/q_norm/")]


def test_refused_on_cpu_runtimes_without_the_kernels(checkpoint, tmp_path):
    with pytest.raises(BuilderError, match="1.31"):
        build(checkpoint("qwen3_5"), tmp_path / "o", precision="int4", target_ort="1.30")


@pytest.mark.parametrize("name", ["qwen3_5", "qwen3_5-text"])
def test_transformers_js_build_verifies(checkpoint, tmp_path, name, capfd):
    """--verify fed the transformers.js graph genai's state names (past.N.conv) and died with a
    traceback on its past_conv.N / past_recurrent.N inputs; and transformers' notes about its
    own slow kernels printed through --quiet."""
    from builder.pipeline import build as build_folder

    result = build_folder(
        model=str(checkpoint(name)),
        output=str(tmp_path / "tjs"),
        precision="int4",
        format="transformers.js",
        verify=True,
        show_progress=False,
    )
    verified = result.report["verify"]
    assert verified["status"] == "passed" and verified["argmax_agree"] == 1.0, verified
    assert "falling back" not in capfd.readouterr().err


def test_layer_patterns_in_the_checkpoints_own_names(checkpoint, tmp_path):
    """A ConditionalGeneration checkpoint names its text model model.language_model.*: those
    names were refused as matching no projection, with a hint naming self_attn.v_proj, which a
    linear-attention layer 0 does not have."""
    from builder.pipeline import build as build_folder

    ckpt = str(checkpoint("qwen3_5"))
    own, ours = (
        build_folder(
            model=ckpt,
            output=str(tmp_path / name),
            int8_layers=[f"{prefix}layers.0.linear_attn.in_proj_qkv"],
            float_layers=[f"{prefix}embed_tokens"],
            show_progress=False,
        )
        for name, prefix in (("own", "model.language_model."), ("ours", "model."))
    )
    assert (own.output / "model.onnx.data").read_bytes() == (ours.output / "model.onnx.data").read_bytes()
    # The report keeps them as given: batch compares a job's options with it, and rebuilt every run.
    assert own.report["options"]["int8_layers"] == ["model.language_model.layers.0.linear_attn.in_proj_qkv"]
    with pytest.raises(BuilderError, match=r"\['nope'\] match no projection; names look like lm_head, "):
        build_folder(model=ckpt, output=str(tmp_path / "x"), int8_layers=["nope"], show_progress=False)
    config = tmp_path / "b.yaml"
    config.write_text(f"jobs:\n  - {{model: {ckpt}, output: own, int8-layers: ['model.language_model.layers.0.*']}}\n")
    from builder import cli

    assert cli.main(["batch", str(config)]) == 0
    assert cli.main(["batch", str(config)]) == 0
    jobs = json.loads((tmp_path / "b-summary.json").read_text())["jobs"]
    assert [j["status"] for j in jobs] == ["skipped"]


def test_every_spelling_of_the_checkpoints_own_names():
    from architectures.qwen3_5 import Qwen35VLBuilder
    from builder.kit.plan import module_pattern

    family = Qwen35VLBuilder.__new__(Qwen35VLBuilder)  # weight() names tensors from the layer alone
    assert [
        module_pattern(p, family)
        for p in (
            "model.language_model.*",
            "model.language_model.embed_tokens*",
            "*.language_model.layers.0.*",
            "model.layers.1.mlp.up_proj",
            "lm_head",
        )
    ] == ["model.*", "model.embed_tokens*", "*.layers.0.*", "model.layers.1.mlp.up_proj", "lm_head"]

    class OwnNaming:  # a plugin naming its tensors its own way: "" must not be taken for a prefix
        def weight(self, layer, suffix):
            return f"backbone.blocks.{layer}.{suffix}" if layer is not None else "emb.weight"

    assert [module_pattern(p, OwnNaming()) for p in ("backbone.blocks.0.*", "lm_head", "*.q_proj")] == [
        "model.layers.0.*",
        "lm_head",
        "*.q_proj",
    ]


def test_block_wise_int8_experts_verify_against_their_own_bound(checkpoint, tmp_path):
    """Block-wise int8 experts quantize their activations at every accuracy level, and the
    Gated DeltaNet state carries that noise on: a correct build (NMSE 1.1e-2, the same graph at
    accuracy level 0 with per-row experts 1e-11) failed --verify's 1e-2 as a wrong graph."""
    from builder.pipeline import build as build_folder

    result = build_folder(
        model=str(checkpoint("qwen3_5-moe")),
        output=str(tmp_path / "o"),
        precision="int4",
        int8_layers=["*.experts"],
        verify=True,
        show_progress=False,
    )
    verified = result.report["verify"]
    assert verified["status"] == "passed" and verified["bound"] == "nmse < 0.1", verified
    assert 1e-3 < verified["nmse"] < 0.1  # the activations' noise, not an exact kernel


@pytest.mark.parametrize(
    "name,key,value",
    [
        ("qwen3_5", "full_attention_interval", 0),  # ZeroDivisionError
        ("qwen3_5", "full_attention_interval", None),
        ("qwen3_5", "full_attention_interval", -2),  # built a model of linear layers only
        ("qwen3_5", "linear_conv_kernel_dim", None),
        ("qwen3_5-text", "linear_num_key_heads", "16"),
        ("qwen3_5-moe", "shared_expert_intermediate_size", "x"),
        ("qwen3-next", "linear_value_head_dim", 1.5),
    ],
)
def test_hybrid_config_values_of_the_wrong_type_are_named(checkpoint, tmp_path, name, key, value):
    from builder.kit.checkpoint import Checkpoint

    folder = tmp_path / "ckpt"
    shutil.copytree(checkpoint(name), folder)
    config = json.loads((folder / "config.json").read_text())
    text = config.get("text_config", config)
    text[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(BuilderError, match=f"{key} (= |is null)"):
        Checkpoint(folder)


@pytest.mark.parametrize("head_norm", ["reshape-sln", "branchwise", "auto"])
def test_linear_attention_norms_follow_head_norm(built, checkpoint, head_norm):
    """The Gated DeltaNet layers wrote BranchwiseRMSNorm wherever the runtime had it, whatever
    --head-norm said, while the full-attention layers followed it. auto is branchwise for
    Qwen3.5 on cpu, measured faster there (Qwen3 measured the other way)."""
    from test_parity import check

    result = built("qwen3_5", precision="fp32", head_norm=head_norm, logits="all")
    ops = result.report["nodes"]["by_op_type"]
    assert result.report["layout"]["head_norm"] == ("reshape-sln" if head_norm == "reshape-sln" else "branchwise")
    if head_norm == "reshape-sln":
        assert "BranchwiseRMSNorm" not in ops
    else:  # two a layer: q and k of the full-attention ones, q|k and the gated output of the linear ones
        assert ops["BranchwiseRMSNorm"] == 2 * text_config(TINY_CONFIGS["qwen3_5"])["num_hidden_layers"]
    check(result, checkpoint("qwen3_5"), 1e-4, "qwen3_5")


def test_gated_attention_refuses_what_it_would_ignore():
    """GatedAttention(qk_norm=False), bias=True or local_rope_layers were taken and not written."""
    from builder.kit.blocks.gated_attention import GatedAttention

    assert GatedAttention(qk_norm=True)
    wrongs = (
        dict(qk_norm=False),
        dict(qk_norm=True, bias=True),
        dict(qk_norm=True, out_bias=True),
        dict(qk_norm=True, local_rope_layers=(1,)),
    )
    for wrong in wrongs:
        with pytest.raises(ValueError, match="GatedAttention writes Q/K norms"):
            GatedAttention(**wrong)


# ---- onnxruntime-genai with the recurrent state (what the README says it can and cannot do) ----

GENAI_PROMPT = [5, 17, 42, 99]


def genai_generate(folder, rows: list[list[int]], new_tokens: int, num_beams: int = 1):
    """Greedy (or beam) sequences of equal-length rows through onnxruntime-genai."""
    import numpy as np
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    total = len(rows[0]) + new_tokens
    params.set_search_options(
        do_sample=False, max_length=total, min_length=total, num_beams=num_beams, batch_size=len(rows)
    )
    generator = og.Generator(model, params)
    generator.append_tokens(np.array(rows, dtype=np.int32))
    while not generator.is_done():
        generator.generate_next_token()
    return [[int(t) for t in generator.get_sequence(i)] for i in range(len(rows))]


def test_genai_equal_length_batch_rows_match_transformers(built, checkpoint):
    from builder.verify import dequantized_reference, transformers_greedy

    folder = built("qwen3_5", precision="fp32").output
    rows = [GENAI_PROMPT, [7, 64, 300, 11]]
    reference = dequantized_reference(checkpoint("qwen3_5"), BuildOptions(model="x", precision="fp32"))
    assert genai_generate(folder, rows, 8) == [transformers_greedy(reference, row, 8) for row in rows]


PADDED_ROWS = [[5, 17, 99, 120, 33, 8, 41, 200, 201, 202], [7, 300, 12], [9, 9, 40, 41, 42]]


@pytest.mark.parametrize("name", ["qwen3_5", "qwen3-next"])
def test_genai_padded_batch_rows_match_transformers(built, checkpoint, name):
    """genai pads the shorter rows on the right: their pads must not reach the conv and recurrent
    states (before kit/blocks/right_padding.py the short row left transformers' tokens at its
    second new token)."""
    from builder.verify import dequantized_reference, genai_batch_greedy, torch_logits, transformers_greedy

    folder = built(name, precision="fp32").output
    reference = dequantized_reference(checkpoint(name), BuildOptions(model="x", precision="fp32"))
    first, tokens = genai_batch_greedy(folder, PADDED_ROWS, 6)
    for row, prompt in enumerate(PADDED_ROWS):
        expected = torch_logits(reference, np.array([prompt]), [])[0][0, -1]
        np.testing.assert_allclose(first[row], expected, rtol=0, atol=1e-4)
        assert prompt + tokens[row] == transformers_greedy(reference, prompt, 6), row


def test_genai_pads_across_chunk_boundaries_leave_the_short_row_alone(built, checkpoint):
    """PADDED_ROWS are at most 10 tokens: their pads never span a 64-token chunk of the delta rule.
    Here the short row carries 127 pads past two boundaries, and the 130-token row crosses them with
    its own tokens; each row's first logits and new tokens are transformers' for that row alone
    (measured: max |d| 1.4e-5 and 3.9e-5; with --padded-batches off the short row leaves
    transformers at its second new token)."""
    from builder.verify import dequantized_reference, genai_batch_greedy, torch_logits, transformers_greedy

    rows = [np.random.default_rng(1).integers(0, 477, size=130).tolist(), [7, 300, 12]]
    folder = built("qwen3_5", precision="fp32").output
    reference = dequantized_reference(checkpoint("qwen3_5"), BuildOptions(model="x", precision="fp32"))
    first, tokens = genai_batch_greedy(folder, rows, 4)
    for row, prompt in enumerate(rows):
        expected = torch_logits(reference, np.array([prompt]), [])[0][0, -1]
        np.testing.assert_allclose(first[row], expected, rtol=0, atol=1e-4)
        assert prompt + tokens[row] == transformers_greedy(reference, prompt, 4), row


def state_carrying_logits(folder, ids: list[int], calls: list[int]) -> np.ndarray:
    """Logits [len(ids), V] of the model run over ids in calls of the given lengths, each call
    starting from the caches and states the one before it left (every position's logits: a
    --logits all folder)."""
    from builder.verify import onnx_session

    session = onnx_session(folder)
    inputs = {i.name: i for i in session.get_inputs()}
    empty = {  # no past positions in the KV caches, zero conv and recurrent states
        name: [1, info.shape[1], 0, info.shape[3]] if name.startswith("past_key_values.") else [1, *info.shape[1:]]
        for name, info in inputs.items()
        if name.startswith(("past_key_values.", "past."))
    }
    feed = {name: np.zeros(shape, np.float32) for name, shape in empty.items()}
    outputs, start = [], 0
    for length in calls:
        feed["input_ids"] = np.array([ids[start : start + length]], np.int64)
        feed["attention_mask"] = np.ones((1, start + length), np.int64)
        named = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
        outputs.append(named.pop("logits")[0])
        for name, value in named.items():  # present.N.key -> past_key_values.N.key, present.N.conv -> past.N.conv
            rest = name[len("present.") :]
            feed[f"past_key_values.{rest}" if f"past_key_values.{rest}" in inputs else f"past.{rest}"] = value
        start += length
    return np.concatenate(outputs)


@pytest.mark.parametrize(
    "name,options", [("qwen3_5", dict(precision="fp32")), ("qwen3-next", dict(precision="int4", accuracy_level=0))]
)
def test_prompts_past_the_delta_rule_chunk_and_calls_on_a_carried_state(built, checkpoint, name, options):
    """transformers prefills Gated DeltaNet in chunks of 64 tokens (torch_chunk_gated_delta_rule)
    and decodes token by token; test_parity's 12-token prompts stay inside one chunk and start from
    zero states. Here: a 130-token prompt (two chunk boundaries, no multiple of 64), a 67-token call
    on the conv and recurrent states it left, then single tokens, against one transformers forward
    over all of it; and genai's prefill and decode of the 130 tokens. Measured max |d|: 8.4e-5 (fp32
    qwen3_5), 9.7e-5 (int4 qwen3-next); genai 2.9e-5, 1.3e-5. Forgetting the carried conv or
    recurrent state in the 67-token call gives 10.1 or 6.7."""
    from parity_cases import MAX_ABS_BOUND, NMSE_BOUND

    from builder.verify import compare, dequantized_reference, genai_greedy_logits, torch_step_logits

    ids = np.random.default_rng(3).integers(0, 477, size=200).tolist()
    calls = [130, 67, 1, 1, 1]
    result = built(name, logits="all", **options)
    reference = dequantized_reference(checkpoint(name), BuildOptions(**result.report["options"]))
    with torch.no_grad():
        expected = reference(torch.tensor([ids])).logits[0].numpy()
    ours = state_carrying_logits(result.output, ids, calls)
    parity = compare([expected], [ours])
    assert parity.max_abs < MAX_ABS_BOUND[name] and parity.nmse < NMSE_BOUND[name], parity
    assert parity.argmax_agree == 1.0, parity

    tokens, logits = genai_greedy_logits(result.output, ids[:130], 4)
    steps = compare(torch_step_logits(reference, tokens, 130), logits)
    assert steps.steps == 4 and steps.max_abs < MAX_ABS_BOUND[name] and steps.nmse < NMSE_BOUND[name], steps


def test_genai_padded_batch_rows_match_their_own_runs_in_the_captured_form(built):
    """--padded-batches on in a webgpu build (positions by CumSum, int32 arithmetic: no Shape for a
    captured graph), run here on the CPU EP; scripts/check_webgpu.py runs it on the GPU."""
    from builder.verify import genai_batch_greedy

    result = built("qwen3_5", precision="int4", ep="webgpu", padded_batches="on")
    assert result.report["target"]["graph_capture"] is True
    first, tokens = genai_batch_greedy(result.output, PADDED_ROWS, 6, provider="cpu")
    for row, prompt in enumerate(PADDED_ROWS):
        alone, alone_tokens = genai_batch_greedy(result.output, [prompt], 6, provider="cpu")
        # fp16 logits may round one ulp (2**-10 relative) apart: a batch takes other CPU kernels than
        # one row (6.1e-5 at 0.066 on an AVX2 machine)
        assert np.dtype(result.report["target"]["io_dtype"]) == np.float16
        np.testing.assert_allclose(first[row], alone[0], rtol=2**-10, atol=1e-5)
        assert tokens[row] == alone_tokens[0], row


@pytest.mark.parametrize(
    "name,options,recorded",
    [
        ("qwen3_5", {}, "kept_out"),
        ("qwen3_5", {"padded_batches": "off"}, "absorbed"),
        ("qwen3_5", {"ep": "webgpu"}, "absorbed"),  # graph capture: off unless asked for
        ("qwen3_5", {"ep": "webgpu", "padded_batches": "on"}, "kept_out"),
        ("qwen3_5", {"ep": "webgpu", "graph_capture": "off"}, "kept_out"),
        ("qwen3_5", {"format": "transformers.js"}, None),  # its left padding: kit/blocks/left_padding.py
        ("qwen3", {}, None),  # no recurrent layer
    ],
)
def test_padded_batches_resolve_per_target(built, name, options, recorded):
    result = built(name, precision="int4", **options)
    assert result.report["target"]["recurrent_padding"] == recorded
    model = onnx.load(result.model_path, load_external_data=False)
    wheres = [n for n in model.graph.node if n.name.endswith("/in_proj_ba/right_padding/Where")]
    assert len(wheres) == (3 if recorded == "kept_out" else 0)  # the tiny Qwen3.5's three linear layers
    noted = any("--padded-batches on keeps them right" in note for note in result.report["notes"])  # and printed
    assert noted == (recorded == "absorbed" and "padded_batches" not in options)


def test_padded_batches_off_writes_none_of_it(built):
    """Off: no right-padding node, and each conv state is the op's own output."""
    off = onnx.load(built("qwen3_5", precision="int4", padded_batches="off").model_path, load_external_data=False)
    ops = Counter(n.op_type for n in off.graph.node)
    assert not ops["Where"] and not ops["GatherElements"] and not ops["CumSum"] and not ops["Range"]
    conv_outputs = {n.output[-1] for n in off.graph.node if n.op_type == "CausalConvWithState"}
    assert {o.name for o in off.graph.output if o.name.endswith(".conv")} == conv_outputs


@pytest.mark.parametrize("ep", ["cpu", "webgpu"])
def test_padded_batches_leave_one_sequence_unchanged_to_the_bit(built, ep):
    """A single sequence has no pads: on and off give the same logits, prefill and decode, exactly
    (the webgpu builds' captured form run here on the CPU EP)."""
    from builder.verify import onnx_logits, onnx_session

    ids, steps = np.arange(3, 20)[None], [5, 9, 2, 77]
    on, off = (
        onnx_logits(onnx_session(built("qwen3_5", precision="int4", ep=ep, padded_batches=p).output), ids, steps)
        for p in ("on", "off")
    )
    for a, b in zip(on, off):
        np.testing.assert_array_equal(a, b)


def test_padded_batches_on_is_refused_or_moot_where_it_does_nothing(checkpoint, tmp_path):
    with pytest.raises(BuilderError, match="--padded-batches on: --format transformers.js folders move their own"):
        build(checkpoint("qwen3_5"), tmp_path / "tjs", precision="int4", format="transformers.js", padded_batches="on")
    result = build(checkpoint("qwen3"), tmp_path / "q3", precision="int4", padded_batches="on")
    assert any("--padded-batches on: this model has no recurrent layer" in n for n in result.report["notes"])


def test_genai_rewinds_the_state_to_a_snapshot_or_to_zero(built):
    import numpy as np
    import onnxruntime_genai as og

    folder = built("qwen3_5", precision="fp32").output
    fresh = genai_generate(folder, [GENAI_PROMPT], 6)[0]
    model = og.Model(str(folder))

    def started():
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(fresh), min_length=len(fresh))
        generator = og.Generator(model, params)
        generator.append_tokens(np.array([GENAI_PROMPT], dtype=np.int32))
        return generator

    def finished(generator):
        while not generator.is_done():
            generator.generate_next_token()
        return [int(t) for t in generator.get_sequence(0)]

    refused = started()
    with pytest.raises(Exception, match="Recurrent states cannot be partially rewound"):
        refused.rewind_to(2)  # no snapshot at 2
    # genai has cut its sequence before the state refused (README: rewind_to(0) after it), and that goes
    # on without a word from a state that has run all four prompt tokens
    assert [int(t) for t in refused.get_sequence(0)] == GENAI_PROMPT[:2]
    refused.append_tokens(np.array([GENAI_PROMPT[2:]], dtype=np.int32))
    assert finished(refused) != fresh
    refused.rewind_to(0)
    refused.append_tokens(np.array([GENAI_PROMPT], dtype=np.int32))
    assert finished(refused) == fresh
    generator = started()
    generator.snapshot_state()
    assert finished(generator) == fresh
    with pytest.raises(Exception, match=f"cannot restore snapshot at length {len(GENAI_PROMPT)}"):
        generator.rewind_to(len(GENAI_PROMPT) + 1)  # one snapshot, and only its length
    generator.rewind_to(0)  # after the refusal above, as for any
    generator.append_tokens(np.array([GENAI_PROMPT], dtype=np.int32))
    generator.snapshot_state()
    assert finished(generator) == fresh
    generator.rewind_to(len(GENAI_PROMPT))  # to the snapshot
    assert finished(generator) == fresh
    generator.rewind_to(0)
    generator.append_tokens(np.array([GENAI_PROMPT], dtype=np.int32))
    assert finished(generator) == fresh


@pytest.mark.parametrize("name", ["qwen3", "qwen3_5"])
def test_genai_beam_search_matches_transformers_except_with_recurrent_state(built, checkpoint, name):
    """genai does not reorder the recurrent state when beams are reselected (README): Qwen3.5's
    beams leave transformers' after a few tokens. When this fails for qwen3_5, genai has fixed
    that: update the README."""
    from builder.verify import dequantized_reference

    folder = built(name, precision="fp32").output
    reference = dequantized_reference(checkpoint(name), BuildOptions(model="x", precision="fp32"))
    # For qwen3 a prompt whose beams pick 7 different tokens, not greedy's (GENAI_PROMPT's were one
    # token eight times, which a wrong beam search matches as well).
    prompt = [362, 167, 257, 245, 61, 15, 162] if name == "qwen3" else GENAI_PROMPT
    with torch.no_grad():
        theirs = reference.generate(
            torch.tensor([prompt]), max_new_tokens=8, min_new_tokens=8, do_sample=False, num_beams=2
        )[0].tolist()
        greedy = reference.generate(torch.tensor([prompt]), max_new_tokens=8, min_new_tokens=8, do_sample=False)
    ours = genai_generate(folder, [prompt], 8, num_beams=2)[0]
    if name == "qwen3":
        assert len(set(theirs[len(prompt) :])) >= 6 and theirs != greedy[0].tolist()
    else:  # the first token comes before any reselection: it matches
        assert ours[: len(prompt) + 1] == theirs[: len(prompt) + 1], (ours, theirs)
    assert (ours == theirs) == (name == "qwen3"), (ours, theirs)


def test_conditional_token_ids_come_from_the_top_level_first(tmp_path):
    """Without generation_config.json transformers generates with the top level's ids (top-level eos
    478 beside text_config's 479 gave 478), while text_config's model keys still win."""
    from test_genai_config import planned

    from support.synthetic import TINY_CONFIGS

    base = TINY_CONFIGS["qwen3_5"]
    text = {**base["text_config"], "eos_token_id": 479, "bos_token_id": 471}
    config = {"eos_token_id": 478, "bos_token_id": None, "text_config": text, "hidden_size": 8}
    plan, written = planned(tmp_path, None, name="qwen3_5", config=config)
    model = written["model"]
    assert (model["eos_token_id"], model["bos_token_id"]) == (478, 471)
    assert model["decoder"]["hidden_size"] == text["hidden_size"] == plan.spec.hidden_size


@pytest.mark.parametrize(
    "name,pattern,message",
    [
        ("qwen3_5", "*.linear_attn.in_proj_a", "names model.language_model.layers.0.linear_attn.in_proj_a, which"),
        ("qwen3_5", "in_proj_b", "linear_attn.in_proj_b, which this family never quantizes (it stays in float"),
        ("qwen3-moe", "*.mlp.gate", "names model.layers.0.mlp.gate, which this family never quantizes"),
        (
            "qwen3-moe",
            "*.mlp.experts.*",
            "names part of model.layers.0.mlp.experts (model.layers.0.mlp.experts.0.down_proj), which is chosen "
            "whole: pass model.layers.0.mlp.experts or '*.experts'",
        ),
    ],
)
def test_a_pattern_naming_a_real_module_no_pattern_chooses_says_why(checkpoint, tmp_path, name, pattern, message):
    """A router, in_proj_a/b or one expert are real module names; they were refused as typos ("match no
    projection", with names that left them out), and the experts, which a pattern does choose, looked
    unselectable."""
    from builder.pipeline import build as build_folder

    with pytest.raises(BuilderError) as refused:
        build_folder(model=str(checkpoint(name)), output=str(tmp_path / "x"), int8_layers=[pattern])
    assert message in str(refused.value) and "match no projection" not in str(refused.value), refused.value
    assert not (tmp_path / "x").exists()
    if pattern == "*.mlp.experts.*":  # what the message says to pass is taken
        build_folder(model=str(checkpoint(name)), output=str(tmp_path / "y"), int8_layers=["*.experts"])
