"""Per-family graph details, the packing policy on every family, and third-party
architectures found through the `builder.architectures` entry-point group.

Logit bounds are those of tests/test_parity.py: fp32 against transformers to 1e-4,
quantized builds (accuracy_level 0) against transformers holding the dequantized weights.
"""

from __future__ import annotations

import importlib
import json
import shutil
import sys
import textwrap
from pathlib import Path

import onnx
import pytest
from parity_cases import PARITY_CASES

from architectures import registry
from builder import BuildOptions
from builder.kit.errors import BuilderError
from builder.pipeline import build
from builder.verify import verify_build

PROMPT, DECODE = 12, 4  # the prompt is longer than mistral's window (8); decode goes past it too


def parity(result, checkpoint_dir, bound=1e-4):
    # Every prompt position, not only the last: a mask that lets a position see later tokens shows there.
    assert result.report["options"]["logits"] == "all", "build with logits='all' for parity"
    options = BuildOptions(**result.report["options"])
    p = verify_build(result.output, checkpoint_dir, options, prompt_length=PROMPT, decode_steps=DECODE)
    assert p.max_abs < bound and p.argmax_agree == 1.0, p
    return p


def nodes(result, op_type):
    model = onnx.load(str(result.model_path), load_external_data=False)
    return [n for n in model.graph.node if n.op_type == op_type]


def attr(node, name, default=None):
    found = [a for a in node.attribute if a.name == name]
    return onnx.helper.get_attribute_value(found[0]) if found else default


# ---- the packing policy applies to every family ------------------------------

LAYOUTS = [("separate", "separate"), ("packed-split", "packed")]


@pytest.mark.parametrize("qkv,mlp", LAYOUTS, ids=["separate", "packed"])
@pytest.mark.parametrize("arch", sorted(PARITY_CASES))
def test_layouts_give_transformers_logits(built, checkpoint, arch, qkv, mlp):
    name = PARITY_CASES[arch][0]
    result = built(name, precision="fp32", qkv_packing=qkv, mlp_packing=mlp, logits="all")
    assert (result.report["layout"]["qkv_packing"], result.report["layout"]["mlp_packing"]) == (qkv, mlp)
    parity(result, checkpoint(name))


@pytest.mark.parametrize("name", ["qwen3_5", "qwen3-moe"])
def test_an_fp32_residual_stream_is_there_for_any_family(built, checkpoint, name):
    """--residual-dtype fp32 under fp16 blocks: the hybrid's linear attention and the MoE block
    take and give fp16 like any block; the residual adds (riding on the hidden-size norms) are fp32.
    NMSE under 1e-5 (measured 1-2e-6; the fp16 bound is 1e-2)."""
    result = built(name, precision="fp16", residual_dtype="fp32")
    assert result.report["target"]["residual_dtype"] == "float32"
    assert {attr(n, "to") for n in nodes(result, "Cast")} >= {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    model = onnx.load(str(result.model_path), load_external_data=False)
    hidden = result.report["model"]["hidden_size"]
    scales = {i.name: i for i in model.graph.initializer}
    norms = ("SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization")
    stream = [scales[n.input[-1]] for n in model.graph.node if n.op_type in norms and n.input[-1] in scales]
    stream = [w for w in stream if list(w.dims) == [hidden]]
    assert len(stream) == 2 * result.report["model"]["layers"] + 1  # each layer's two, and model.norm
    assert {w.data_type for w in stream} == {onnx.TensorProto.FLOAT}
    p = verify_build(result.output, checkpoint(name), BuildOptions(**result.report["options"]), PROMPT, DECODE)
    assert p.nmse < 1e-5 and p.argmax_agree == 1.0, p


# ---- Qwen2: q/k/v biases ------------------------------------------------------


@pytest.mark.parametrize("qkv,adds", [("packed-split", 1), ("separate", 3)])
def test_qwen2_qkv_bias_is_one_add_when_packed(built, qkv, adds):
    result = built("qwen2", precision="int4", qkv_packing=qkv, accuracy_level=0)
    layers = result.report["model"]["layers"]
    assert result.report["nodes"]["by_op_type"]["Add"] == adds * layers
    assert json.loads(result.genai_config_path.read_text())["model"]["type"] == "qwen2"


@pytest.mark.parametrize("name,windows", [("qwen2", [-1, 8]), ("qwen3", [-1, 8]), ("qwen3-moe", [8, 8])])
def test_qwen_sliding_window_layers(checkpoint, name, windows):
    """transformers: with use_sliding_window, layers >= max_window_layers use the window (Qwen3-MoE:
    every layer). Qwen3 and Qwen3-MoE builds left it out in silence (verify: NMSE 0.2)."""
    overrides = dict(use_sliding_window=True, sliding_window=8, max_window_layers=1)
    ckpt = checkpoint(name, **overrides)
    result = build(
        model=str(ckpt), output=str(ckpt.parent / f"{name}-sw"), logits="all", precision="fp32", show_progress=False
    )
    assert [attr(n, "local_window_size", -1) for n in nodes(result, "GroupQueryAttention")] == windows
    # The window lives in GQA only (see builder/kit/genai_config.py).
    assert "sliding_window" not in json.loads(result.genai_config_path.read_text())["model"]["decoder"]
    parity(result, ckpt)


def _without(name: str, *keys: str, **values) -> dict:
    from support.synthetic import TINY_CONFIGS

    return {**{k: v for k, v in TINY_CONFIGS[name].items() if k not in keys}, **values}


@pytest.mark.parametrize(
    "name,config,windows",
    [
        # transformers' defaults where the keys are absent: window 4096, from layer 28 on
        (
            "qwen3",
            _without("qwen3", "sliding_window", "max_window_layers", use_sliding_window=True, num_hidden_layers=30),
            [-1] * 28 + [4096] * 2,
        ),
        ("mistral", _without("mistral", "sliding_window"), [4096, 4096]),
        # Every Qwen2.5 hub config: a sliding_window value with use_sliding_window false, which turns it off
        ("qwen2", _without("qwen2", sliding_window=8, max_window_layers=1, use_sliding_window=False), [-1, -1]),
        # Qwen3-MoE's model windows every layer, whatever layer_types says
        (
            "qwen3-moe",
            _without(
                "qwen3-moe",
                use_sliding_window=True,
                sliding_window=4,
                layer_types=["full_attention", "sliding_attention"],
            ),
            [4, 4],
        ),
    ],
)
def test_window_keys_read_as_transformers_reads_them(tmp_path, name, config, windows):
    """Absent keys took other defaults than transformers' (no window at all), and Qwen3-MoE windowed
    only the layers layer_types named (its verify then crashed in transformers, now one line)."""
    from support.synthetic import make_checkpoint

    ckpt = make_checkpoint(tmp_path / "c", config)
    result = build(model=str(ckpt), output=str(tmp_path / "o"), precision="fp32", show_progress=False)
    assert [attr(n, "local_window_size", -1) for n in nodes(result, "GroupQueryAttention")] == windows
    if name == "qwen3-moe":
        with pytest.raises(BuilderError, match=r"verify: transformers' model of .* fails when it runs \(RuntimeError"):
            build(model=str(ckpt), output=str(tmp_path / "v"), precision="fp32", verify=True, show_progress=False)
        assert not (tmp_path / "v").exists()


def test_max_window_layers_null_is_named_where_it_matters(checkpoint, tmp_path):
    """A null max_window_layers ended in a TypeError traceback, even with the window off."""
    off = checkpoint("qwen3", max_window_layers=None)
    assert build(model=str(off), output=str(tmp_path / "off"), show_progress=False).output.is_dir()
    on = tmp_path / "on-ckpt"
    shutil.copytree(off, on)
    config = json.loads((on / "config.json").read_text())
    (on / "config.json").write_text(json.dumps({**config, "use_sliding_window": True, "sliding_window": 8}))
    with pytest.raises(BuilderError, match="max_window_layers is null while use_sliding_window is true"):
        build(model=str(on), output=str(tmp_path / "on"), show_progress=False)


@pytest.mark.parametrize(
    "name,config",
    [
        ("llama", dict(partial_rotary_factor=0.5, rope_scaling=None)),
        ("qwen3", dict(partial_rotary_factor=0.5)),
        ("mistral", dict(attention_bias=True)),
        # both rope keys: transformers takes rope_scaling whole (the build merged them, key by key)
        ("llama", dict(rope_scaling={"rope_type": "linear", "factor": 2.0}, rope_parameters={"rope_type": "default"})),
    ],
)
def test_keys_transformers_ignores_for_a_family_are_ignored_here(checkpoint, tmp_path, name, config):
    """Llama/Qwen3 rotate the whole head whatever partial_rotary_factor says, and Mistral's attention
    has no biases whatever attention_bias says: the builds rotated half (NMSE 0.43) or asked for
    bias tensors."""
    ckpt = checkpoint(name, **config)
    result = build(model=str(ckpt), output=str(tmp_path / "o"), logits="all", precision="fp32", show_progress=False)
    parity(result, ckpt)


@pytest.mark.parametrize(
    "name,config",
    [
        ("llama", dict(partial_rotary_factor=0.5)),  # its llama3 scaling
        ("llama", dict(rope_scaling={"type": "linear", "factor": 2.0}, partial_rotary_factor=0.5)),
        ("qwen3", dict(rope_scaling={"rope_type": "linear", "factor": 2.0, "partial_rotary_factor": 0.5})),
        ("mistral", dict(rope_scaling={"rope_type": "linear", "factor": 2.0}, partial_rotary_factor=0.5)),
    ],
)
def test_scaled_rope_over_part_of_the_head_is_refused_where_the_family_rotates_the_whole_head(
    checkpoint, tmp_path, name, config
):
    """transformers' linear and llama3 rope, like its yarn, make cos/sin for partial_rotary_factor of
    the head, and these families' attention then fails on the whole head (5.25: 'The size of tensor a
    (32) must match the size of tensor b (16)'): the build wrote a whole-head model no reference runs."""
    ckpt = tmp_path / "c"
    shutil.copytree(checkpoint(name), ckpt)
    (ckpt / "config.json").write_text(json.dumps({**json.loads((ckpt / "config.json").read_text()), **config}))
    with pytest.raises(
        BuilderError, match=r"(linear|llama3) rope scaling with partial_rotary_factor < 1 \(16 of head_dim 32\)"
    ):
        build(model=str(ckpt), output=str(tmp_path / "o"), precision="fp32", show_progress=False)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name,head_dim", [("qwen3", 128), ("qwen3-moe", None)])
def test_a_config_without_head_dim_takes_transformers_default(tmp_path, name, head_dim):
    """Qwen3Config's head_dim defaults to 128 (Qwen3-MoE's attention: hidden / heads); the build
    took hidden / heads for both and refused the weights as not matching the config."""
    from support.synthetic import make_checkpoint

    config = _without(name, "head_dim")
    ckpt = make_checkpoint(tmp_path / "c", config)
    result = build(model=str(ckpt), output=str(tmp_path / "o"), logits="all", precision="fp32", show_progress=False)
    expected = head_dim or config["hidden_size"] // config["num_attention_heads"]
    assert result.report["model"]["head_dim"] == expected
    parity(result, ckpt)


def _left_out_keys() -> list[tuple[str, str]]:
    from support.synthetic import TINY_CONFIGS, text_config

    keys = ("max_position_embeddings", "num_key_value_heads", "head_dim")
    names = sorted({name for cases in PARITY_CASES.values() for name in cases})
    return [(name, key) for name in names for key in keys if key in text_config(TINY_CONFIGS[name])]


@pytest.mark.parametrize("name,key", _left_out_keys())
def test_a_key_config_json_leaves_out_takes_the_family_default_of_transformers(checkpoint, name, key):
    """A config.json without max_position_embeddings got 4096 positions whatever the family (Llama
    2048, Qwen 32768, Mistral 131072 in transformers), and one without num_key_value_heads or head_dim
    got as many as heads, or hidden / heads, where Qwen2/3/3.5 and Mistral default to a number."""
    import copy

    from transformers import AutoConfig

    from architectures.registry import builder_class_for
    from builder.kit.checkpoint import Checkpoint
    from support.synthetic import TINY_CONFIGS

    config = copy.deepcopy(TINY_CONFIGS[name])
    text = config.get("text_config") or config
    del text[key]
    if key == "num_key_value_heads":  # the defaults (2 to 32) must divide the heads
        text.update(num_attention_heads=64, hidden_size=2048, head_dim=text.get("head_dim", 32))
    expected = AutoConfig.for_model(config["model_type"], **{k: v for k, v in config.items() if k != "model_type"})
    expected = getattr(expected, "text_config", None) or expected
    folder = checkpoint(name)
    family = builder_class_for(TINY_CONFIGS[name])(Checkpoint(folder), BuildOptions(model=str(folder)))
    spec = family.make_spec(config)
    ours = {"max_position_embeddings": spec.max_position_embeddings, "num_key_value_heads": spec.num_kv_heads}
    ours["head_dim"] = spec.head_dim
    theirs = getattr(expected, key, None) or (expected.hidden_size // expected.num_attention_heads)
    assert ours[key] == theirs


# ---- Mistral: sliding window --------------------------------------------------


def test_mistral_window_is_gqa_local_window_size(built):
    # ORT's local_window_size attends to the last `window` positions, the current one
    # included: transformers' sliding_window exactly (window - 1 and window + 1 are off by ~2).
    result = built("mistral", precision="fp32")
    assert [attr(n, "local_window_size") for n in nodes(result, "GroupQueryAttention")] == [8, 8]
    genai = json.loads(result.genai_config_path.read_text())["model"]
    assert genai["type"] == "mistral"
    assert "sliding_window" not in genai["decoder"]
    no_window = built("mistral-nosw", precision="fp32")
    assert [attr(n, "local_window_size", -1) for n in nodes(no_window, "GroupQueryAttention")] == [-1, -1]
    assert "sliding_window" not in json.loads(no_window.genai_config_path.read_text())["model"]["decoder"]


def test_mistral_window_changes_the_logits(built, checkpoint):
    """The window bites at this prompt length: the same weights without it give other logits."""
    import numpy as np

    from builder.verify import onnx_logits, onnx_session

    ids = np.arange(3, 3 + PROMPT)[None]
    with_window, without = (
        onnx_logits(onnx_session(built(n, precision="fp32", logits="all").output), ids, [7, 9])
        for n in ("mistral", "mistral-nosw")
    )
    assert np.abs(with_window[0][0, :8] - without[0][0, :8]).max() < 1e-5  # inside the window: same
    assert np.abs(with_window[0][0, 8:] - without[0][0, 8:]).max() > 1e-2
    assert np.abs(with_window[-1] - without[-1]).max() > 1e-2


# ---- Qwen3-MoE ------------------------------------------------------------------


@pytest.mark.parametrize(
    "options,op,block_size",
    [
        (dict(precision="fp32"), "MoE", None),
        (dict(precision="int4", accuracy_level=0), "QMoE", 32),
        (dict(precision="int4", symmetric=False, accuracy_level=0), "QMoE", 32),
        # block-wise 8-bit QMoE always quantizes activations; one scale a row keeps fp32 compute
        (dict(precision="int8", accuracy_level=0), "QMoE", None),
        (dict(precision="int8", symmetric=False, accuracy_level=0), "QMoE", None),
        (dict(precision="int4", int8_layers=["*.experts"], block_size=64, accuracy_level=0), "QMoE", None),
        (dict(precision="int4", float_layers=["*.experts"], accuracy_level=0), "MoE", None),
    ],
    ids=["fp32", "int4", "int4-asym", "int8", "int8-asym", "int8-experts", "float-experts"],
)
def test_qwen3_moe_expert_ops(built, checkpoint, options, op, block_size):
    result = built("qwen3-moe", logits="all", **options)
    ops = result.report["nodes"]["by_op_type"]
    assert ops[op] == 2 and not ({"MoE", "QMoE"} - {op}) & set(ops)
    node = nodes(result, op)[0]
    assert (attr(node, "k"), attr(node, "activation_type"), attr(node, "swiglu_fusion")) == (2, b"swiglu", 1)
    assert attr(node, "normalize_routing_weights") == 1 and attr(node, "block_size") == block_size
    router = [n for n in nodes(result, "MatMul") if "/moe/gate/" in n.name]
    assert len(router) == 2  # the router stays a float MatMul whatever the precision
    assert json.loads(result.genai_config_path.read_text())["model"]["type"] == "qwen3"
    parity(result, checkpoint("qwen3-moe"))


def test_qwen3_moe_int8_blockwise_where_int8_activations_are_allowed(built):
    node = nodes(built("qwen3-moe", precision="int8"), "QMoE")[0]  # cpu default accuracy_level 4
    assert (attr(node, "block_size"), attr(node, "expert_weight_bits"), attr(node, "accuracy_level")) == (32, 8, 4)


def test_qwen3_moe_dense_and_sparse_layers(checkpoint):
    ckpt = checkpoint("qwen3-moe", mlp_only_layers=[0])
    result = build(
        model=str(ckpt),
        output=str(ckpt.parent / "moe-mixed"),
        logits="all",
        precision="int4",
        accuracy_level=0,
        show_progress=False,
    )
    assert result.report["nodes"]["by_op_type"]["QMoE"] == 1
    assert [n.name.split("/")[2] for n in nodes(result, "QMoE")] == ["layers.1"]
    parity(result, ckpt)


@pytest.mark.parametrize(
    "experts,top_k,normalize,precision",
    [(16, 1, False, "fp32"), (16, 1, False, "int4"), (64, 8, True, "int8"), (64, 8, True, "int4")],
)
def test_qwen3_moe_sparse_step_and_top_k_extremes(checkpoint, tmp_path, experts, top_k, normalize, precision):
    """What the parity cases (2 of 4 experts in every layer, 12-token prompts) leave out:
    decoder_sparse_step 2 (dense MLPs in layers 0 and 2 between sparse 1 and 3), one expert a token
    with its probability kept (QMoE renormalizes it to 1, the build multiplies it back), 8 of 64
    experts, and prompts of 1 and 130 tokens with decode steps after them. Measured max |d|:
    1.5e-6 to 4.2e-6 (int8: one scale a row, at accuracy level 0); without that multiplication the
    one-expert int4 build is 1.5 off."""
    folder = checkpoint(
        "qwen3-moe",
        num_hidden_layers=4,
        decoder_sparse_step=2,
        num_experts=experts,
        num_experts_per_tok=top_k,
        norm_topk_prob=normalize,
    )
    options = dict(precision=precision, logits="all", **({} if precision == "fp32" else {"accuracy_level": 0}))
    result = build(model=str(folder), output=str(tmp_path / "o"), show_progress=False, **options)
    op = "MoE" if precision == "fp32" else "QMoE"
    assert sorted(n.name.split("/")[2] for n in nodes(result, op)) == ["layers.1", "layers.3"]
    assert {attr(n, "k") for n in nodes(result, op)} == {top_k}
    for prompt in (1, 130):
        p = verify_build(result.output, folder, BuildOptions(**result.report["options"]), prompt, decode_steps=3)
        assert p.steps == 4 and p.max_abs < 1e-4 and p.argmax_agree == 1.0, (prompt, p)


def test_qwen3_moe_block_size_must_divide_expert_dims(checkpoint, tmp_path):
    with pytest.raises(BuilderError, match="multiples of block_size=128"):
        build(
            model=str(checkpoint("qwen3-moe")),
            output=str(tmp_path / "o"),
            precision="int4",
            block_size=128,
            show_progress=False,
        )


# ---- third-party architectures ----------------------------------------------------

PLUGIN = '''
from architectures import LlamaBuilder, register


@register("TinyPluginForCausalLM")
class MyLlamaBuilder(LlamaBuilder):
    """A family defined outside the repository."""


class ByClass(LlamaBuilder):
    architectures = ("TinyPluginClassForCausalLM",)
'''


def registered_with_plugin(root, monkeypatch, source: str, entry_points: str) -> dict[str, type]:
    """The registry once the plugin is installed and loaded (its module forgotten afterwards)."""
    install_plugin(root, monkeypatch, source, entry_points)
    try:
        return registry.registered()
    finally:
        sys.modules.pop("tiny_builder_plugin", None)


def install_plugin(root, monkeypatch, source: str, entry_points: str):
    """An installed-looking distribution: a module plus *.dist-info with entry points,
    found by importlib.metadata because its folder is on sys.path."""
    root.mkdir()
    (root / "tiny_builder_plugin.py").write_text(textwrap.dedent(source))
    info = root / "tiny_builder_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-builder-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[builder.architectures]\n" + entry_points)
    monkeypatch.syspath_prepend(str(root))
    # Start from an unloaded registry and put everything back afterwards.
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_HISTORY", list(registry._HISTORY))
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    monkeypatch.delitem(sys.modules, "tiny_builder_plugin", raising=False)


@pytest.fixture
def plugin_package(tmp_path, monkeypatch):
    install_plugin(
        tmp_path / "site",
        monkeypatch,
        PLUGIN,
        "tiny = tiny_builder_plugin\n"  # a module: its decorators register
        "tiny_class = tiny_builder_plugin:ByClass\n"  # a class: registered by its `architectures`
        "broken = tiny_builder_plugin_missing\n",  # fails to import: a warning, nothing else
    )
    yield tmp_path / "site"
    sys.modules.pop("tiny_builder_plugin", None)


def test_a_plugin_replacing_a_built_in_family_says_so(tmp_path, monkeypatch, capsys):
    """A module's @register replaced a built-in in silence, and a class entry point for a
    built-in name was dropped in silence: one rule now, said in a warning."""
    source = """
    from architectures import LlamaBuilder, Qwen3Builder, register


    @register("Qwen3ForCausalLM")
    class MyQwen3(Qwen3Builder):
        pass


    class MyLlama(LlamaBuilder):
        architectures = ("LlamaForCausalLM",)
    """
    available = registered_with_plugin(
        tmp_path / "site", monkeypatch, source, "mod = tiny_builder_plugin\ncls = tiny_builder_plugin:MyLlama\n"
    )
    assert available["Qwen3ForCausalLM"].__name__ == "MyQwen3" and available["LlamaForCausalLM"].__name__ == "MyLlama"
    assert capsys.readouterr().err.splitlines() == [
        "warning: architecture plugin 'mod' (tiny_builder_plugin) replaces the builder for Qwen3ForCausalLM "
        "(architectures.qwen3.Qwen3Builder) with tiny_builder_plugin.MyQwen3",
        "warning: architecture plugin 'cls' (tiny_builder_plugin:MyLlama) replaces the builder for "
        "LlamaForCausalLM (architectures.llama.LlamaBuilder) with tiny_builder_plugin.MyLlama",
    ]


def test_a_plugin_that_fails_halfway_is_left_out_whole(tmp_path, monkeypatch, capsys):
    """What it registered before its import failed stayed registered: the warning said 'left out'
    while its class replaced Llama's and built the model."""
    source = """
    from architectures import LlamaBuilder, register


    @register("LlamaForCausalLM", "HalfwayForCausalLM")
    class Broken(LlamaBuilder):
        genai_type = "mistral"


    import a_module_that_is_not_installed
    """
    available = registered_with_plugin(tmp_path / "site", monkeypatch, source, "halfway = tiny_builder_plugin\n")
    assert available["LlamaForCausalLM"].__module__ == "architectures.llama"
    assert "HalfwayForCausalLM" not in available
    # Nor in the history a batch job's registry is made from (registered_alone), where it would
    # stand for LlamaForCausalLM again once another job's module:Class replaced that.
    assert not [name for _, name, cls in registry._HISTORY if cls.__name__ == "Broken"]
    assert "failed to load and is left out: ModuleNotFoundError" in capsys.readouterr().err


def test_a_class_entry_point_takes_only_its_own_names(tmp_path, monkeypatch, capsys):
    """A subclass without names of its own inherited its parent's, and replaced the parent."""
    source = """
    from architectures import LlamaBuilder


    class Unnamed(LlamaBuilder):
        pass
    """
    available = registered_with_plugin(
        tmp_path / "site", monkeypatch, source, "unnamed = tiny_builder_plugin:Unnamed\n"
    )
    assert available["LlamaForCausalLM"].__module__ == "architectures.llama"
    assert capsys.readouterr().err.splitlines() == [
        "warning: architecture plugin 'unnamed' (tiny_builder_plugin:Unnamed) names no architectures of its own "
        'and is left out; decorate the class with @register("MyModelForCausalLM")'
    ]


@pytest.mark.parametrize("names", [(), ("",), (None,)])
def test_register_without_names_is_refused(names):
    with pytest.raises(TypeError, match="give one or more HF architecture names"):
        registry.register(*names)


def test_register_above_a_class_that_builds_nothing_is_refused():
    """Registered anyway, it failed when a build made one: a traceback, "Phi3() takes no arguments"."""
    with pytest.raises(TypeError, match="is above Phi3, which is no builder class: derive it from"):

        @registry.register("Phi3ForCausalLM")
        class Phi3:
            pass

    assert "Phi3ForCausalLM" not in registry.registered()


def test_register_replacing_another_class_says_so(tmp_path, monkeypatch, capsys):
    """@register over a registered name replaced the family in silence (entry points said so); the
    same class again, its module imported a second time, replaces nothing and says nothing."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry.registered()))
    monkeypatch.setattr(registry, "_HISTORY", list(registry._HISTORY))
    (tmp_path / "replacing_fam.py").write_text(
        "from architectures import Qwen3Builder, register\n\n\n"
        "@register('Qwen3ForCausalLM')\nclass Mine(Qwen3Builder):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        import replacing_fam

        assert capsys.readouterr().err.splitlines() == [
            "warning: @register replaces the builder for Qwen3ForCausalLM (architectures.qwen3.Qwen3Builder) "
            "with replacing_fam.Mine"
        ]
        importlib.reload(replacing_fam)
        assert capsys.readouterr().err == ""
    finally:
        sys.modules.pop("replacing_fam", None)


def test_a_family_written_with_a_dot_for_the_colon_is_told_module_class(tmp_path, monkeypatch):
    """--family fams.Renamed listed the supported architectures and said nothing of fams:Renamed."""
    (tmp_path / "dotted_fam.py").write_text(
        "from architectures import LlamaBuilder\n\n\nclass Mine(LlamaBuilder):\n    pass\n"
    )
    monkeypatch.chdir(tmp_path)  # module:Class is imported from the current folder
    with pytest.raises(BuilderError) as caught:
        registry.family_named("dotted_fam.Mine")
    assert str(caught.value) == (
        "--family dotted_fam.Mine: no architecture is registered under that name; for class Mine of module "
        "dotted_fam, write dotted_fam:Mine (module:Class, with a colon)"
    )
    assert "dotted_fam" not in sys.modules  # looked for, not imported
    assert str(tmp_path) not in sys.path
    with pytest.raises(BuilderError, match=r"architecture 'no_such_module_here\.Mine' is not supported"):
        registry.family_named("no_such_module_here.Mine")


def test_module_class_leaves_the_current_folder_off_sys_path_unless_it_came_from_there(tmp_path, monkeypatch):
    """The current folder goes on sys.path for module:Class, and stays only for a module found there
    (its methods import their sibling modules later); else it would shadow modules for the rest of
    the process."""
    monkeypatch.chdir(tmp_path)
    assert registry.family_named("architectures.llama:LlamaBuilder").__name__ == "LlamaBuilder"
    assert str(tmp_path) not in sys.path
    with pytest.raises(BuilderError, match="importing it failed"):
        registry.family_named("no_such_module_here:Mine")
    assert str(tmp_path) not in sys.path


def test_a_module_class_whose_code_raises_on_import_is_named_with_its_line(tmp_path, monkeypatch):
    """A module that was found but raised while it ran was worded as one not found ("give module:Class
    of a module on the current folder or PYTHONPATH"), with no file or line, nothing under --debug
    and no cause for a Python caller: docs/architecture.md promises all three for a plugin's fault."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "raising_fam.py").write_text("from architectures import Qwen3Builder\n\nscale = undefined_name * 2\n")
    (tmp_path / "raising_blocks.py").write_text("\n\nraise RuntimeError('my blocks are broken')\n")
    (tmp_path / "imports_blocks.py").write_text("import raising_blocks  # noqa\n")
    for name in ("raising_fam", "raising_blocks", "imports_blocks"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    for family, at, cause in [
        ("raising_fam:Mine", "raising_fam.py:3", NameError),
        ("imports_blocks:Mine", "raising_blocks.py:3", RuntimeError),  # the sibling module's line
    ]:
        with pytest.raises(BuilderError) as caught:
            registry.family_named(family)
        message = str(caught.value)
        assert f"importing it failed ({cause.__name__}: " in message and f"at {tmp_path / at}; fix that code" in message
        assert "PYTHONPATH" not in message and isinstance(caught.value.__cause__, cause)
    with pytest.raises(BuilderError, match="importing it failed .*current folder or PYTHONPATH") as missing:
        registry.family_named("no_such_module_here:Mine")
    assert missing.value.__cause__ is None and " at " not in str(missing.value)


def test_register_without_parentheses_says_so():
    """@register alone made the class a function and registered nothing, in silence."""
    from architectures import LlamaBuilder

    with pytest.raises(TypeError, match=r"@register needs the HF architecture names .*above class Mine"):

        @registry.register
        class Mine(LlamaBuilder):
            pass


def test_plugin_architecture_is_discovered_built_and_run(plugin_package, checkpoint, tmp_path, capsys):
    available = registry.registered()
    # A plugin that fails to import is one plain warning line, and the others still load.
    assert "warning: architecture plugin 'broken' (tiny_builder_plugin_missing) failed to load" in (
        capsys.readouterr().err
    )
    assert available["TinyPluginForCausalLM"].__name__ == "MyLlamaBuilder"
    assert available["TinyPluginClassForCausalLM"].__name__ == "ByClass"
    assert available["Qwen3ForCausalLM"].__module__ == "architectures.qwen3"  # built-ins untouched

    ckpt = checkpoint("llama", architectures=["TinyPluginForCausalLM"])
    result = build(
        model=str(ckpt), output=str(tmp_path / "plugin"), logits="all", precision="fp32", show_progress=False
    )
    assert result.report["checkpoint"]["architecture"] == "TinyPluginForCausalLM"
    parity(result, ckpt)


def renamed_copy(source: Path, folder: Path, name: str, new_name: str) -> Path:
    """A copy of a one-file checkpoint with one tensor stored under another name."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(source, folder)
    tensors = load_file(str(folder / "model.safetensors"))
    tensors[new_name] = tensors.pop(name)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def test_verify_refuses_a_reference_transformers_could_not_fill(checkpoint, tmp_path):
    """A family reading a weight under another name built fine, and --verify then compared it
    with a transformers model holding a random weight there: 'logits differ ... report this'."""
    import numpy as np
    import torch
    from safetensors.numpy import load_file

    from architectures import LlamaBuilder

    class Renamed(LlamaBuilder):
        def weight(self, layer, suffix):
            return "model.final_norm.weight" if suffix == "model.norm.weight" else super().weight(layer, suffix)

    ckpt = renamed_copy(checkpoint("llama"), tmp_path / "renamed", "model.norm.weight", "model.final_norm.weight")
    options = dict(model=str(ckpt), precision="fp32", family=Renamed, show_progress=False)
    assert build(output=str(tmp_path / "plain"), **options).report["nodes"]["total"] > 0
    with pytest.raises(BuilderError) as refused:
        build(output=str(tmp_path / "verified"), verify=True, **options)
    assert str(refused.value).startswith(
        "verify: transformers' LlamaForCausalLM found no model.norm.weight in the checkpoint"
    )
    assert "prepare_reference()" in str(refused.value) and not (tmp_path / "verified").exists()

    class RenamedAndFilled(Renamed):  # the way out the message names
        @classmethod
        def prepare_reference(cls, model, options, io_dtype=None):
            weight = load_file(str(ckpt / "model.safetensors"))[renamed].astype(np.float32)
            model.model.norm.weight.copy_(torch.from_numpy(weight))

    renamed = "model.final_norm.weight"
    options["family"] = RenamedAndFilled
    result = build(output=str(tmp_path / "filled"), verify=True, **options)
    assert result.report["verify"]["status"] == "passed" and result.report["verify"]["max_abs"] < 1e-4


def test_verify_leaves_a_renamed_lm_head_of_an_untied_model_to_the_family(checkpoint, tmp_path):
    """verify tied a missing lm_head.weight to the embedding whatever config.json said, so a family
    reading the head as output.weight failed --verify, and filling it in prepare_reference()
    overwrote the embedding it now shared."""
    import numpy as np
    import torch
    from safetensors.numpy import load_file

    from architectures import Qwen3Builder

    class Renamed(Qwen3Builder):
        def weight(self, layer, suffix):
            return "output.weight" if suffix == "lm_head.weight" else super().weight(layer, suffix)

    ckpt = renamed_copy(checkpoint("qwen3-untied"), tmp_path / "renamed", "lm_head.weight", "output.weight")
    options = dict(model=str(ckpt), precision="fp32", verify=True, show_progress=False)
    with pytest.raises(BuilderError, match="found no lm_head.weight in the checkpoint"):
        build(output=str(tmp_path / "plain"), family=Renamed, **options)

    class RenamedAndFilled(Renamed):
        @classmethod
        def prepare_reference(cls, model, options, io_dtype=None):
            weight = load_file(str(ckpt / "model.safetensors"))["output.weight"].astype(np.float32)
            model.lm_head.weight.copy_(torch.from_numpy(weight))

    result = build(output=str(tmp_path / "filled"), family=RenamedAndFilled, **options)
    assert result.report["verify"]["status"] == "passed" and result.report["verify"]["max_abs"] < 1e-4


def test_a_make_spec_that_changes_the_layer_count_is_named_for_it(checkpoint, tmp_path):
    """The checkpoint's layers are checked against the spec's count: a family that changes it was
    told "config.json says num_hidden_layers = N", a number config.json did not say."""
    import dataclasses

    from architectures import Qwen3Builder

    class Deeper(Qwen3Builder):
        def make_spec(self, config, target=None):
            spec = super().make_spec(config, target)
            return dataclasses.replace(spec, num_layers=spec.num_layers + 1)

    class Shallower(Qwen3Builder):
        def make_spec(self, config, target=None):
            return dataclasses.replace(super().make_spec(config, target), num_layers=1)

    ckpt = checkpoint("qwen3")
    with pytest.raises(BuilderError, match=r"Deeper\.make_spec's num_layers = 3, but the checkpoint in .* no tensors "):
        build(model=str(ckpt), output=str(tmp_path / "deeper"), family=Deeper, show_progress=False)
    result = build(model=str(ckpt), output=str(tmp_path / "shallower"), family=Shallower, show_progress=False)
    assert result.report["model"]["layers"] == 1
    assert any("beyond Shallower.make_spec's num_layers = 1" in note for note in result.report["notes"])


@pytest.mark.parametrize("name,norm", [("gemma3", "pre_feedforward_layernorm"), ("qwen3_5-text", "input_layernorm")])
def test_a_renamed_norm_keeps_its_one_plus_w_scale(checkpoint, tmp_path, name, norm):
    """Gemma's and Qwen3.5's 1 + w offset was applied to tensors whose names ended in norm.weight,
    so a subclass reading a norm under another name built a wrong model and exited 0 (max_abs
    2.28 under --verify). The offset is the spec's now, applied to every norm whatever its name."""
    import numpy as np
    import torch
    from safetensors.numpy import load_file

    from architectures.registry import builder_class_for

    family = builder_class_for(json.loads((checkpoint(name) / "config.json").read_text()))
    stored = f"model.layers.0.{norm}.weight"
    renamed = "model.layers.0.renamed_scale"

    class Renamed(family):
        def weight(self, layer, suffix):
            return renamed if (layer, suffix) == (0, f"{norm}.weight") else super().weight(layer, suffix)

        @classmethod
        def prepare_reference(cls, model, options, io_dtype=None):
            weight = load_file(str(ckpt / "model.safetensors"))[renamed].astype(np.float32)
            getattr(model.model.layers[0], norm).weight.copy_(torch.from_numpy(weight))

    ckpt = renamed_copy(checkpoint(name), tmp_path / "renamed", stored, renamed)
    result = build(
        model=str(ckpt), output=str(tmp_path / "o"), precision="fp32", family=Renamed, verify=True, show_progress=False
    )
    assert result.report["verify"]["status"] == "passed" and result.report["verify"]["max_abs"] < 1e-4


def test_a_subclass_may_set_its_attributes_after_super_init(checkpoint, tmp_path):
    """The plan (and with it weight(), make_spec and the blocks) ran inside DecoderBuilder.__init__,
    so a subclass that set what its hooks read after super().__init__() failed with AttributeError."""
    from architectures import LlamaBuilder
    from builder.kit.checkpoint import Checkpoint
    from builder.pipeline import run

    class Renamed(LlamaBuilder):
        def __init__(self, checkpoint, options):
            super().__init__(checkpoint, options)
            self.renames = {"model.norm.weight": "model.final_norm.weight"}

        def weight(self, layer, suffix):
            return self.renames.get(suffix, suffix) if layer is None else super().weight(layer, suffix)

    ckpt = renamed_copy(checkpoint("llama"), tmp_path / "renamed", "model.norm.weight", "model.final_norm.weight")
    options = BuildOptions(model=str(ckpt), output=str(tmp_path / "o"), precision="fp32")
    result = run(Renamed(Checkpoint(ckpt), options), show_progress=False)
    assert result.report["nodes"]["total"] > 0


def test_verify_ties_an_lm_head_the_builder_tied(checkpoint, tmp_path):
    """A config without tie_word_embeddings and a checkpoint without lm_head.weight: the builder
    ties it to the embedding, transformers left it random, and verify failed the build."""
    from safetensors.numpy import load_file, save_file

    ckpt = tmp_path / "untold"
    shutil.copytree(checkpoint("qwen3"), ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config.pop("tie_word_embeddings", None)
    (ckpt / "config.json").write_text(json.dumps(config))
    tensors = load_file(str(ckpt / "model.safetensors"))
    tensors.pop("lm_head.weight", None)
    save_file(tensors, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    result = build(model=str(ckpt), output=str(tmp_path / "o"), precision="fp32", verify=True, show_progress=False)
    assert result.report["verify"]["status"] == "passed" and result.report["verify"]["max_abs"] < 1e-4


def test_verify_of_a_model_transformers_does_not_know_is_one_line(checkpoint, tmp_path):
    from architectures import LlamaBuilder

    ckpt = tmp_path / "unknown"
    shutil.copytree(checkpoint("llama"), ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, "model_type": "myllama"}))
    with pytest.raises(BuilderError, match=r"^verify: transformers cannot load .*unknown \(.*myllama.*knows"):
        build(model=str(ckpt), output=str(tmp_path / "o"), verify=True, family=LlamaBuilder, show_progress=False)


def test_verify_of_weights_transformers_does_not_find_says_so(checkpoint, tmp_path):
    """A lone shard without an index builds (the builder reads any *.safetensors), and verify
    blamed transformers' refusal on an unknown model type."""
    ckpt = tmp_path / "renamed"
    shutil.copytree(checkpoint("llama"), ckpt)
    (ckpt / "model.safetensors").rename(ckpt / "model-00001-of-00001.safetensors")
    with pytest.raises(BuilderError, match=r"reads model.safetensors or an index of shards: give the checkpoint"):
        build(model=str(ckpt), output=str(tmp_path / "o"), verify=True, show_progress=False)


def test_family_by_name_or_refused(checkpoint, tmp_path):
    """build(family="LlamaForCausalLM") was "TypeError: 'str' object is not callable"."""
    result = build(
        model=str(checkpoint("llama")), output=str(tmp_path / "o"), family="LlamaForCausalLM", show_progress=False
    )
    assert result.report["checkpoint"]["architecture"] == "LlamaForCausalLM"
    with pytest.raises(BuilderError, match=r"build\(family=...\): architecture 'NoSuchForCausalLM' is not supported"):
        build(model=str(checkpoint("llama")), output=str(tmp_path / "x"), family="NoSuchForCausalLM")
    with pytest.raises(BuilderError, match=r"build\(family=3\): pass a builder class"):
        build(model=str(checkpoint("llama")), output=str(tmp_path / "x"), family=3)
    with pytest.raises(BuilderError, match=r"build\(family=<class 'dict'>\): pass a builder class"):
        build(model=str(checkpoint("llama")), output=str(tmp_path / "x"), family=dict)  # was a TypeError
    # A class's name where its architecture goes: "architecture 'LlamaBuilder' is not supported"
    with pytest.raises(BuilderError, match=r"LlamaBuilder: that is a class name; give the architecture it builds "):
        build(model=str(checkpoint("llama")), output=str(tmp_path / "x"), family="LlamaBuilder")


def test_verify_uses_the_family_it_was_given(checkpoint, tmp_path):
    """verify looked the family up again from config.json: an unregistered subclass passed as
    family= failed after the whole build, and a registered one lost its own prepare_reference."""
    from architectures import LlamaBuilder

    calls = []

    class Unregistered(LlamaBuilder):
        @classmethod
        def prepare_reference(cls, model, options, io_dtype=None):
            calls.append(cls.__name__)

    ckpt = checkpoint("llama").parent / "unregistered"
    shutil.copytree(checkpoint("llama"), ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, "architectures": ["UnregisteredForCausalLM"]}))
    result = build(
        model=str(ckpt),
        output=str(tmp_path / "o"),
        precision="fp32",
        verify=True,
        family=Unregistered,
        show_progress=False,
    )
    assert result.report["verify"]["status"] == "passed" and calls == ["Unregistered"]


def test_unknown_architecture_lists_supported_ones():
    with pytest.raises(BuilderError) as info:
        registry.builder_class_for({"architectures": ["NoSuchForCausalLM"]})
    message = str(info.value)
    assert "NoSuchForCausalLM" in message and "not supported" in message
    for name in PARITY_CASES:
        assert name in message
    # Not only the first name config.json lists: the first one registered.
    assert registry.builder_class_for({"architectures": ["NoSuchForCausalLM", "LlamaForCausalLM"]}).__name__ == (
        "LlamaBuilder"
    )


@pytest.mark.parametrize("ep", ["webgpu", "cuda", "dml"])
def test_moe_refused_up_front_off_cpu(built, ep):
    """onnxruntime-webgpu 1.27 rejects the QMoE node at load (seen on the GPU machine)."""
    with pytest.raises(BuilderError, match=f"Qwen3-MoE builds only for -e cpu here.*; got -e {ep}$"):
        built("qwen3-moe", precision="int4" if ep != "cuda" else "fp16", ep=ep)


def test_moe_for_transformers_js_names_its_runtime_and_the_ways_out(built):
    """It said 'builds only for cpu ... got -e cpu', and named onnxruntime-webgpu 1.27."""
    with pytest.raises(BuilderError) as refused:
        built("qwen3-moe", precision="int4", ep="cpu", format="transformers.js")
    message = str(refused.value)
    assert "--format transformers.js targets transformers.js 4.3 (onnxruntime-node 1.30)" in message
    assert "1.27" not in message
    # Only the int4/int8 experts (QMoE) need 1.31: it named the float MoE nodes too, and left out
    # the float builds that transformers.js 4.3 runs (tests/test_transformers_js.py).
    assert "its int4 experts (QMoE nodes) need ONNX Runtime >= 1.31 on cpu" in message
    ways_out = "build -p fp16 or -p fp32 (float MoE nodes, which it runs), --format genai, or pass --target-ort 1.31"
    assert ways_out in message
    assert built("qwen3-moe", precision="fp16", ep="cpu", format="transformers.js").model_path
    assert built("qwen3-moe", precision="int4", ep="cpu", format="transformers.js", target_ort="1.31").model_path


def test_moe_runtime_check_reads_the_experts_format_not_the_precision(built, checkpoint):
    """-p int4 --float-layers '*.experts' writes float MoE nodes (from ONNX Runtime 1.23) beside int4
    MatMulNBits; it was refused as if its experts were QMoE ("its int4 experts (QMoE nodes) need
    ONNX Runtime >= 1.31") for transformers.js and for --target-ort below 1.31. One layer's experts
    left quantized still need 1.31."""
    float_experts = dict(precision="int4", float_layers=["*.experts"], accuracy_level=0)
    for options in (dict(target_ort="1.25", logits="all"), dict(format="transformers.js")):
        result = built("qwen3-moe", **float_experts, **options)
        ops = result.report["nodes"]["by_op_type"]
        assert ops["MoE"] == 2 and "QMoE" not in ops and ops["MatMulNBits"] > 0
    parity(built("qwen3-moe", **float_experts, target_ort="1.25", logits="all"), checkpoint("qwen3-moe"))
    with pytest.raises(BuilderError, match=r"MoE/QMoE nodes need ONNX Runtime >= 1.31 on cpu; got onnxruntime 1.25"):
        built("qwen3-moe", precision="int4", float_layers=["model.layers.0.mlp.experts"], target_ort="1.25")


def test_an_mlp_activation_the_kit_does_not_write_is_refused_not_silu(checkpoint, tmp_path):
    """DenseMLP(act="gelu") built a graph that computed SiLU, without a word; a subclass
    overriding activation() is the way to another one, and its family names the config's
    hidden_act in hidden_acts (the kit refused any but silu, whatever the family wrote)."""
    import onnx

    from architectures import LlamaBuilder
    from builder.kit.blocks import DenseMLP

    with pytest.raises(ValueError, match=r"DenseMLP\(act='gelu'\).*override activation"):
        DenseMLP(act="gelu")

    class ReluMLP(DenseMLP):
        def activation(self, em, x, name):
            return em.graph.op("Relu", [x], f"{name}/Relu")

    class Relu(LlamaBuilder):
        hidden_acts = ("relu",)

        def feed_forward(self, spec, i):
            return ReluMLP(act="relu")

    class Undeclared(LlamaBuilder):
        def feed_forward(self, spec, i):
            return ReluMLP(act="relu")

    ckpt = tmp_path / "relu"
    shutil.copytree(checkpoint("llama"), ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, "hidden_act": "relu"}))
    options = dict(model=str(ckpt), precision="fp32", show_progress=False)
    with pytest.raises(BuilderError, match="hidden_act 'relu' is not supported by Undeclared .*hidden_acts"):
        build(output=str(tmp_path / "undeclared"), family=Undeclared, **options)
    with pytest.raises(BuilderError, match="silu='quickgelu': Relu's MLP has no SiLU"):
        build(output=str(tmp_path / "silu"), family=Relu, silu="quickgelu", **options)
    result = build(output=str(tmp_path / "o"), family=Relu, verify=True, **options)
    assert result.report["verify"]["status"] == "passed" and result.report["verify"]["max_abs"] < 1e-4
    assert result.report["layout"]["silu"] == "none"
    ops = [n.op_type for n in onnx.load(str(result.output / "model.onnx"), load_external_data=False).graph.node]
    layers = result.report["model"]["layers"]
    assert ops.count("Relu") == layers and "Sigmoid" not in ops and "QuickGelu" not in ops


@pytest.mark.parametrize("types", [["sliding_attention"], ["sliding_attention", "full_atention"]])
def test_sliding_layer_types_are_checked(checkpoint, tmp_path, types):
    """Qwen2/Mistral took a layer_types of the wrong length, or with a misspelled kind, and
    built the layers it missed without their window (Gemma 3 and Qwen3.5 checked theirs)."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoint("mistral"), ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, "layer_types": types}))
    with pytest.raises(BuilderError, match=r"layer_types .* must name 2 layers"):
        build(model=str(ckpt), output=str(tmp_path / "o"), show_progress=False)


def test_from_pretrained_takes_options_or_keywords_and_leaves_the_callers_alone(tmp_path):
    """from_pretrained wrote the model into the caller's BuildOptions (one options object reused
    for two models then named the second)."""
    from architectures import Qwen3Builder
    from builder.pipeline import run

    tiny = str(Path(__file__).resolve().parents[1] / "examples" / "tiny-qwen3")
    options = BuildOptions(model="some/other", output=str(tmp_path / "a"), precision="fp32")
    arch = Qwen3Builder.from_pretrained(tiny, options)
    assert options.model == "some/other" and arch.options.model == tiny
    assert run(arch, show_progress=False).report["nodes"]["total"] > 0
    by_keywords = Qwen3Builder.from_pretrained(tiny, output=str(tmp_path / "b"), precision="int4")
    assert (by_keywords.options.model, by_keywords.options.precision) == (tiny, "int4")


def test_from_pretrained_takes_its_options_one_way(tmp_path):
    """Keywords beside a BuildOptions were dropped in silence (precision="fp32", ep="webgpu" built
    int4 for cpu), a dict was a raw TypeError, and a family= naming another family was recorded in
    the report while this class built the graph."""
    from architectures import LlamaBuilder, Qwen3Builder

    tiny = str(Path(__file__).resolve().parents[1] / "examples" / "tiny-qwen3")
    options = BuildOptions(output=str(tmp_path / "a"))
    with pytest.raises(BuilderError, match=r"options given both as a BuildOptions and as keywords \(precision, ep\)"):
        Qwen3Builder.from_pretrained(tiny, options, precision="fp32", ep="webgpu")
    with pytest.raises(BuilderError, match=r"Qwen3Builder.from_pretrained\(dict\): pass a BuildOptions"):
        Qwen3Builder.from_pretrained(tiny, {"precision": "fp32"})
    with pytest.raises(BuilderError, match=r"family='LlamaForCausalLM'\): that names .*LlamaBuilder, not Qwen3Builder"):
        Qwen3Builder.from_pretrained(tiny, family="LlamaForCausalLM")
    # The family it is, by either name, is no contradiction.
    assert LlamaBuilder.from_pretrained(tiny, family="LlamaForCausalLM").options.family == "LlamaForCausalLM"
    assert Qwen3Builder.from_pretrained(tiny, family="architectures.qwen3:Qwen3Builder").spec.num_layers > 0
    assert not (tmp_path / "a").exists()
