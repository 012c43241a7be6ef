"""Every precision x EP combination loads (or is refused up front), and each
EP's graph has the structure that EP runs.

cuda/webgpu/dml graphs may hold ops the CPU cannot run (GroupQueryAttention's
q_norm_weight inputs), so their structure is checked here and their running
is checked on the GPU machine (docs/packing.md).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from parity_cases import ALL_CASES

from builder import BuilderError, BuildOptions
from builder.kit.options import EPS, PRECISIONS
from builder.kit.targets import REFUSED
from builder.verify import onnx_logits, onnx_session

# Ops with kernels on each EP, from ONNX Runtime's kernel tables (docs/OperatorKernels.md,
# js/web/docs/webgpu-operators.md). BranchwiseRMSNorm is CPU-only.
COMMON = {
    "MatMulNBits",
    "GatherBlockQuantized",
    "Gather",
    "Reshape",
    "Split",
    "Slice",
    "SimplifiedLayerNormalization",
    "SkipSimplifiedLayerNormalization",
    "GroupQueryAttention",
    "QuickGelu",
    "Sigmoid",
    "Mul",
    "Add",
    "MatMul",
    "Transpose",
    "ReduceSum",
    "Sub",
    "Cast",
    "Shape",
    "ReduceMax",
    # the last-token selection before the lm_head (--logits last)
    "Min",
    "Unsqueeze",
    "GatherND",
    "Equal",
    "ArgMax",
}
EP_OPS = {
    "cpu": COMMON | {"BranchwiseRMSNorm", "RotaryEmbedding"},
    "cuda": COMMON,
    "webgpu": COMMON,
    "dml": (COMMON - {"QuickGelu"}) | {"RotaryEmbedding"},
}


def gqa_nodes(model):
    return [n for n in model.graph.node if n.op_type == "GroupQueryAttention"]


def uses_qk_norm_inputs(model) -> bool:
    return any(len(n.input) > 14 and n.input[14] for n in gqa_nodes(model))


@pytest.mark.parametrize("ep", EPS)
@pytest.mark.parametrize("precision", PRECISIONS)
def test_every_combination_loads_or_is_refused(built, ep, precision, tmp_path):
    if (ep, precision) in REFUSED:
        with pytest.raises(BuilderError, match=f"-p {precision} -e {ep} cannot work"):
            built("qwen3", precision=precision, ep=ep)
        return
    result = built("qwen3", precision=precision, ep=ep)
    model = onnx.load(str(result.model_path), load_external_data=False)
    assert {n.op_type for n in model.graph.node} <= EP_OPS[ep]
    io = next(i for i in model.graph.input if i.name == "past_key_values.0.key").type.tensor_type.elem_type
    fp32_io = precision == "fp32" or (ep == "cpu" and precision in ("int4", "int8"))
    assert io == (onnx.TensorProto.FLOAT if fp32_io else onnx.TensorProto.FLOAT16)
    if uses_qk_norm_inputs(model):
        assert ep in ("cuda", "webgpu")  # the CPU kernel rejects these at Run
        return
    # Everything else runs here: a prefill and two decode steps give finite logits.
    logits = onnx_logits(onnx_session(result.output), np.arange(1, 7)[None], [3, 4])
    assert all(np.isfinite(step).all() for step in logits)


@pytest.mark.parametrize("ep", EPS)
def test_the_oldest_runtime_an_ep_builds_for_is_a_target_and_the_one_before_is_not(ep):
    """MIN_ORT_VERSION is the first release with the GroupQueryAttention and MatMulNBits kernels a
    build needs: --target-ort at it builds, one release before it is refused."""
    from builder.kit.targets import MIN_ORT_VERSION, Target

    major, minor = MIN_ORT_VERSION[ep]
    options = BuildOptions(
        model="-", precision="fp16" if ep == "cuda" else "int4", ep=ep, target_ort=f"{major}.{minor}"
    )
    assert Target.from_options(options).ort_version == (major, minor)
    with pytest.raises(BuilderError, match=rf"builds need ONNX Runtime >= {major}\.{minor}"):
        Target.from_options(dataclasses.replace(options, target_ort=f"{major}.{minor - 1}"))


def test_webgpu_1_27_target_loads_on_onnxruntime_webgpu_1_27(built):
    """onnxruntime-webgpu 1.27.0 rejects the 16-input GQA: a 1.27 build must not emit it."""
    result = built("qwen3", precision="int4", ep="webgpu", target_ort="1.27")
    assert result.report["target"]["runtime"] == "onnxruntime-webgpu 1.27"
    assert result.report["target"]["graph_capture"] is False
    model = onnx.load(str(result.model_path), load_external_data=False)
    assert not uses_qk_norm_inputs(model)
    assert all(len(n.input) <= 9 for n in gqa_nodes(model))
    layer0 = [n.op_type for n in model.graph.node if n.name.startswith("/model/layers.0/")]
    # The measured WebGPU default: separate q/k/v (ORT fuses them with the norm at run time),
    # per-head norm as Reshape/SLN/Reshape, one-node SiLU (docs/packing.md#webgpu).
    assert layer0[1:4] == ["MatMulNBits"] * 3
    assert layer0[4:10] == ["Reshape", "SimplifiedLayerNormalization", "Reshape"] * 2
    assert "QuickGelu" in layer0 and "Sigmoid" not in layer0
    assert "BranchwiseRMSNorm" not in layer0


@pytest.mark.parametrize("ep,qkv_packing", [("cuda", "auto"), ("webgpu", "fused-norm")])
def test_fused_norm_where_the_runtime_has_it(built, ep, qkv_packing):
    result = built("qwen3", precision="int4", ep=ep, target_ort="1.28", qkv_packing=qkv_packing)
    model = onnx.load(str(result.model_path), load_external_data=False)
    assert result.report["layout"]["qkv_packing"] == "fused-norm"
    for node in gqa_nodes(model):
        assert node.input[14].endswith("q_norm.weight") and node.input[15].endswith("k_norm.weight")
        assert any(a.name == "qk_norm_epsilon" for a in node.attribute)
    ops = result.report["nodes"]["by_op_type"]
    assert "SimplifiedLayerNormalization" in ops and ops["SimplifiedLayerNormalization"] == 1  # first norm only
    assert ops["MatMulNBits"] == 2 * 5 + 1  # per layer packed qkv, o, gate, up, down; plus lm_head


def test_dml_uses_rotary_nodes_and_separate_projections(built, checkpoint):
    result = built("qwen3", precision="fp16", ep="dml")
    model = onnx.load(str(result.model_path), load_external_data=False)
    assert "position_ids" in [i.name for i in model.graph.input]
    ops = result.report["nodes"]["by_op_type"]
    assert ops["RotaryEmbedding"] == 2 * 2
    assert all(a.i == 0 for n in gqa_nodes(model) for a in n.attribute if a.name == "do_rotary")
    assert result.report["layout"]["qkv_packing"] == "separate"


def test_tied_int4_embedding_shares_lm_head_bytes(built):
    result = built("qwen3", precision="int4")
    model = onnx.load(str(result.model_path), load_external_data=False)
    gbq = next(n for n in model.graph.node if n.op_type == "GatherBlockQuantized")
    reshape = next(n for n in model.graph.node if n.output[0] == gbq.input[0])
    lm_head = next(n for n in model.graph.node if n.name == "/lm_head/MatMulNBits")
    assert reshape.input[0] == lm_head.input[1] and gbq.input[2] == lm_head.input[2]
    names = [t.name for t in model.graph.initializer]
    assert len(names) == len(set(names))


def test_untied_embedding_keeps_both(built):
    """Untied: the embedding gets its own int4 table, the lm_head its own MatMulNBits weight."""
    result = built("qwen3-untied", precision="int4")
    model = onnx.load(str(result.model_path), load_external_data=False)
    gbq = next(n for n in model.graph.node if n.op_type == "GatherBlockQuantized")
    reshape = next(n for n in model.graph.node if n.output[0] == gbq.input[0])
    assert reshape.input[0] == "model.embed_tokens.qweight"
    names = {t.name for t in model.graph.initializer}
    assert {"model.embed_tokens.qweight", "lm_head.qweight"} <= names


def test_float_embedding_on_request(built, checkpoint):
    from builder import BuildOptions
    from builder.verify import verify_build

    result = built("qwen3-untied", precision="int4", float_layers=["model.embed_tokens"], accuracy_level=0)
    ops = result.report["nodes"]["by_op_type"]
    assert "GatherBlockQuantized" not in ops
    parity = verify_build(
        result.output,
        checkpoint("qwen3-untied"),
        BuildOptions(**result.report["options"]),
        prompt_length=12,
        decode_steps=4,
    )
    assert parity.max_abs < 1e-4, parity


# Ops a family adds to the EP's common set, with kernels there: Gemma 3's FastGelu (CUDA and
# WebGPU contrib kernels), Qwen3.5's linear-attention ops (the WebGPU plugin EP's; run on the GPU
# machine, docs/webgpu-decode.md).
LINEAR_OPS = {"CausalConvWithState", "LinearAttention", "LinearAttentionGate"}
FAMILY_OPS = {"gemma3": {"FastGelu"}, "gemma3-vl": {"FastGelu"}, "qwen3_5": LINEAR_OPS, "qwen3_5-text": LINEAR_OPS}
# Families the builder refuses for an EP, and the words of the refusal.
MOE_ONLY_CPU = "builds only for -e cpu here: its MoE/QMoE nodes"
FAMILY_REFUSALS = {
    **{
        (n, ep): MOE_ONLY_CPU
        for n in ("qwen3-moe", "qwen3_5-moe", "qwen3_5-moe-text", "qwen3-next")
        for ep in ("cuda", "webgpu")
    },
    ("qwen3_5", "cuda"): "builds for cpu (onnxruntime >= 1.31) and webgpu",
    ("qwen3_5-text", "cuda"): "builds for cpu (onnxruntime >= 1.31) and webgpu",
}
# local_window_size per GroupQueryAttention, in layer order (None: full attention).
WINDOWS = {"mistral": [8, 8], "gemma3": [6, 6, None], "gemma3-vl": [6, 6, None]}


@pytest.mark.parametrize("precision", ["int4", "fp16"])
@pytest.mark.parametrize("ep", ["cuda", "webgpu"])
@pytest.mark.parametrize("name", ALL_CASES)
def test_every_family_builds_the_structure_its_gpu_ep_runs(built, name, ep, precision):
    """The GPU graphs cannot run here, so each family's is checked for what its EP needs: only ops
    with kernels there, every value defined before it is read, the sliding windows of its config,
    and on webgpu with capture no Shape and no int64 arithmetic (both would run on the CPU and
    block capture)."""
    from test_webgpu import int64_values

    if (name, ep) in FAMILY_REFUSALS:
        with pytest.raises(BuilderError, match=re.escape(FAMILY_REFUSALS[name, ep])):
            built(name, precision=precision, ep=ep)
        return
    result = built(name, precision=precision, ep=ep)
    model = onnx.load(str(result.model_path), load_external_data=False)
    # onnx.checker does not know onnxruntime's ops in the default domain; what it would catch that
    # matters here is a node reading a value nothing defined before it.
    defined = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer} | {""}
    for node in model.graph.node:
        assert set(node.input) <= defined, (node.name, set(node.input) - defined)
        defined |= set(node.output)
    assert {o.name for o in model.graph.output} <= defined
    ops = {n.op_type for n in model.graph.node}
    assert ops <= EP_OPS[ep] | FAMILY_OPS.get(name, set()), ops - EP_OPS[ep]
    windows = [
        next((a.i for a in n.attribute if a.name == "local_window_size"), None)
        for n in model.graph.node
        if n.op_type == "GroupQueryAttention"
    ]
    assert windows == WINDOWS.get(name, [None] * len(windows))
    if result.report["target"]["graph_capture"]:
        assert ep == "webgpu" and name not in WINDOWS
        assert "Shape" not in ops and not int64_values(model)


@pytest.mark.parametrize("name", ["mistral", "gemma3"])
def test_dml_builds_sliding_window_models_only_within_the_window(checkpoint, tmp_path, name):
    """DirectML's GroupQueryAttention never reads local_window_size: past the window it would
    attend to everything, silently. Within the window it is exact, so that context builds."""
    from architectures.registry import builder_class_for
    from builder.kit.checkpoint import Checkpoint
    from builder.pipeline import run

    ckpt = Checkpoint(checkpoint(name))
    family = builder_class_for(ckpt.config)
    options = BuildOptions(model=str(ckpt.directory), output=str(tmp_path / "a"), precision="int4", ep="dml")
    with pytest.raises(BuilderError, match="DirectML's GroupQueryAttention ignores local_window_size") as refused:
        run(family(ckpt, options), show_progress=False)
    window = int(str(refused.value).split("--context-length ")[1].split()[0])
    assert not (tmp_path / "a").exists()
    within = dataclasses.replace(options, output=str(tmp_path / "b"), context_length=window)
    result = run(family(ckpt, within), show_progress=False)
    assert result.report["model"]["context_length"] == window
    windows = {
        a.i for n in gqa_nodes(onnx.load(str(result.model_path))) for a in n.attribute if a.name == "local_window_size"
    }
    assert window in windows


@pytest.mark.parametrize("name", ["mistral", "gemma3"])
def test_sliding_window_models_need_the_runtime_whose_window_is_the_model_s(checkpoint, tmp_path, name):
    """Before ONNX Runtime 1.24 GQA attended local_window_size + 1 positions (measured on the
    CPU kernels of 1.20.1 and 1.23.2), so a 1.23 target computed another model."""
    from architectures.registry import builder_class_for
    from builder.kit.checkpoint import Checkpoint
    from builder.pipeline import run

    ckpt = Checkpoint(checkpoint(name))
    family = builder_class_for(ckpt.config)
    options = BuildOptions(model=str(ckpt.directory), output=str(tmp_path / "a"), target_ort="1.23")
    with pytest.raises(BuilderError, match="attended one position more than local_window_size.*--target-ort 1.24"):
        run(family(ckpt, options), show_progress=False)
    assert run(family(ckpt, dataclasses.replace(options, target_ort="1.24")), show_progress=False).output.is_dir()


@pytest.mark.parametrize("name", ["qwen3", "qwen3-untied"])
def test_webgpu_int4_zero_points_for_an_odd_number_of_blocks_keep_a_float_table(built, checkpoint, name):
    """The WebGPU plugin EP failed to run an int4 embedding gather with zero points whose rows split into an
    odd number of blocks (hidden 64 in blocks of 64, 128, 256; hidden 72 in blocks of 16 and 32, on an
    H100: "scales and zero_points must have the same shape"), where the CPU EP ran them: such a webgpu
    build keeps a float table, and says what keeps the int4 one."""
    from builder.verify import verify_build

    odd = built(name, precision="int4", ep="webgpu", symmetric=False, block_size=64, io_dtype="fp32", accuracy_level=0)
    ops = odd.report["nodes"]["by_op_type"]
    assert "GatherBlockQuantized" not in ops and ops["MatMulNBits"] > 0
    (note,) = [n for n in odd.report["notes"] if "odd number of blocks" in n]
    assert "hidden_size 64 in blocks of 64: 1" in note and "--symmetric" in note
    parity = verify_build(
        odd.output, checkpoint(name), BuildOptions(**odd.report["options"]), prompt_length=12, decode_steps=4
    )
    assert parity.max_abs < 1e-3, parity
    for options in ({"symmetric": False, "block_size": 32}, {"block_size": 64}, {"symmetric": False, "ep": "cpu"}):
        even = built(name, precision="int4", **{"ep": "webgpu", "block_size": 64, **options})
        assert "GatherBlockQuantized" in even.report["nodes"]["by_op_type"], options


@pytest.mark.parametrize("name", ["qwen3", "qwen3-untied"])
def test_an_int4_embedding_table_needs_the_runtime_that_loads_it(built, checkpoint, name):
    """GatherBlockQuantized took uint8 data from ONNX Runtime 1.22 and its bits attribute from 1.23:
    an int4 build for 1.20-1.22 loaded on none of them (the CPU wheels 1.20.1, 1.21.1 and 1.22.1
    refused the node), so below 1.23 the table is float, as --float-layers model.embed_tokens makes it."""
    from builder.verify import verify_build

    old = built(name, precision="int4", target_ort="1.22", accuracy_level=0)
    ops = old.report["nodes"]["by_op_type"]
    assert "GatherBlockQuantized" not in ops and ops["MatMulNBits"] > 0
    assert any("has no int4 embedding table" in note and "target 1.23" in note for note in old.report["notes"])
    parity = verify_build(
        old.output, checkpoint(name), BuildOptions(**old.report["options"]), prompt_length=12, decode_steps=4
    )
    assert parity.max_abs < 1e-4, parity
    assert "GatherBlockQuantized" in built(name, precision="int4", target_ort="1.23").report["nodes"]["by_op_type"]


@pytest.mark.parametrize(
    "flags,said",
    [
        (dict(precision="int8"), r"^-p int8: .*; build -p int4, or target 1\.22"),
        (dict(precision="int4", int8_layers=["lm_head"]), r"^--int8-layers \(lm_head\): .*; drop --int8-layers, or"),
    ],
)
def test_8_bit_weights_need_the_cpu_kernel_that_runs_them(built, flags, said):
    """The CPU MatMulNBits of 1.20.1 and 1.21.1 refused bits=8 when the session was made."""
    with pytest.raises(BuilderError, match=r"MatMulNBits has no 8-bit kernel \(from ONNX Runtime 1\.22\)") as caught:
        built("qwen3", **flags, target_ort="1.21")
    assert re.search(said, str(caught.value)), caught.value
    assert built("qwen3", **flags, target_ort="1.22").output.is_dir()


ORT_120 = Path(__file__).resolve().parent.parent / ".venv" / "onnxruntime-1.20"
# The folder's logits for one prompt on the onnxruntime first on the path, saved to argv[2].
RUN_LOGITS = """
import sys, numpy as np, onnxruntime as ort
sys.path.insert(0, sys.argv[3])
from builder.verify import onnx_logits
session = ort.InferenceSession(sys.argv[1] + "/model.onnx", providers=["CPUExecutionProvider"])
np.save(sys.argv[2], np.concatenate(onnx_logits(session, np.array([[5, 17, 42, 99, 3, 250, 7, 11]]), [3, 4]), 1))
print(ort.__version__)
"""


@pytest.mark.parametrize(
    "name,precision", [("qwen3", "int4"), ("qwen3-untied", "int4"), ("qwen3", "int8"), ("llama", "fp32")]
)
def test_a_build_for_the_oldest_runtime_pyproject_allows_runs_there(checkpoint, tmp_path, name, precision):
    """onnxruntime 1.20.1 (pyproject.toml: onnxruntime>=1.20) installed, nothing else named: the build
    targets it. Its int4 embedding table and 8-bit MatMulNBits were graphs 1.20.1 refused to load; now
    the build there is checked by that runtime itself and gives 1.32's logits on it."""
    if not (ORT_120 / "onnxruntime").is_dir():
        pytest.fail(f"{ORT_120} is missing: run `bash scripts/setup.sh`")
    repo = str(Path(__file__).resolve().parent.parent)
    old_path = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ORT_120), repo])}
    out = tmp_path / "o"
    build = [sys.executable, "-m", "builder", "-m", str(checkpoint(name)), "-p", precision, "-o", str(out), "--quiet"]
    made = subprocess.run(build, capture_output=True, text=True, env=old_path, timeout=300)
    if precision == "int8":  # 1.20's MatMulNBits has no 8-bit kernel: refused up front, nothing written
        assert made.returncode == 2 and "onnxruntime 1.20's MatMulNBits has no 8-bit kernel" in made.stderr, made
        assert not out.exists()
        return
    assert made.returncode == 0, made.stderr
    report = json.loads((out / "build_report.json").read_text())
    assert report["target"]["runtime"] == "onnxruntime 1.20"
    # No onnxruntime-genai for a runtime below 1.24 reads last-token logits (plan.wants_last_logits).
    assert report["target"]["logits"] == "all"
    assert report["load_check"] == {"status": "passed", "onnxruntime": "1.20.1"}
    logits = {}
    for label, env in [("1.20", old_path), ("venv", {**os.environ, "PYTHONPATH": repo})]:
        ran = subprocess.run(
            [sys.executable, "-c", RUN_LOGITS, str(out), str(tmp_path / label), repo],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert ran.returncode == 0, ran.stderr
        logits[label] = (ran.stdout.strip(), np.load(tmp_path / f"{label}.npy"))
    assert logits["1.20"][0] == "1.20.1" and logits["venv"][0] != "1.20.1"
    assert np.abs(logits["1.20"][1] - logits["venv"][1]).max() < 1e-4


# ---- Target.from_options on its own: refusals and choices a build would only show later ---------


@pytest.mark.parametrize("ep", ["cuda", "dml"])
def test_fp32_activations_are_refused_where_gqa_has_no_fp32_kernel(ep):
    from builder.kit.targets import Target

    with pytest.raises(BuilderError, match=f"--io-dtype fp32 -e {ep} cannot work: GroupQueryAttention has no fp32"):
        Target.from_options(BuildOptions(model="m", ep=ep, precision="int4", io_dtype="fp32"))


def test_graph_capture_is_for_genai_folders_only():
    """transformers.js runs the graph itself and never captures it: a capture-on target would write
    provider options nobody reads, and --graph-capture on must say so."""
    from builder.kit.targets import Target

    def target(**options):
        return Target.from_options(BuildOptions(model="m", ep="webgpu", precision="int4", target_ort="1.31", **options))

    assert target().graph_capture and not target(format="transformers.js").graph_capture
    with pytest.raises(BuilderError, match="--graph-capture on: .* does not capture graphs here"):
        target(format="transformers.js", graph_capture="on")


def test_webgpu_1_27_is_its_own_layout_row():
    """onnxruntime-webgpu 1.27 fuses otherwise than the plugin EP: its target reads its own AUTO_LAYOUT row."""
    from builder.kit.targets import Target

    assert Target("webgpu", "int4", (1, 27)).layout_key == "webgpu-1.27"
    assert Target("webgpu", "int4", (1, 28)).layout_key == "webgpu"
    assert Target("cpu", "int4", (1, 27)).layout_key == "cpu"


@pytest.mark.parametrize(
    "precision,feature", [("int4", "qmoe_swiglu"), ("int8", "qmoe_swiglu"), ("fp16", "moe_swiglu")]
)
def test_quantized_experts_need_the_qmoe_kernel(precision, feature):
    """int8 experts are QMoE nodes too (one scale a row): 1.30's CPU kernel refuses them."""
    from builder.kit.targets import Target

    target = Target("cpu", precision, (1, 30))
    assert target.moe_feature == feature
    assert target.supports(target.moe_feature) == (feature == "moe_swiglu")


def test_accuracy_level_4_on_cpu_and_webgpu_only():
    """int8 activations in MatMulNBits, as ORT recommends on cpu and webgpu; cuda and dml get 0."""
    from builder.kit.targets import Target

    levels = {ep: Target(ep, "int4", (1, 31)).default_accuracy_level for ep in ("cpu", "webgpu", "cuda", "dml")}
    assert levels == {"cpu": 4, "webgpu": 4, "cuda": 0, "dml": 0}


def test_target_ort_overrides_the_transformers_js_default():
    from builder.kit.targets import Target

    def version(**options):
        return Target.from_options(
            BuildOptions(model="m", ep="cpu", precision="int4", format="transformers.js", **options)
        )

    assert version().ort_version == (1, 30) and version(target_ort="1.31").ort_version == (1, 31)
