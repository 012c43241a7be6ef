"""What a family written outside the repository needs, found by writing three (Helium, Granite and
a fine-tune with its own model_type) from the docs alone: the hooks they use, and the checks that
catch a family that builds another model than transformers' in silence.

Checkpoints here come from transformers' own classes and init (std 0.02), as a plugin author
makes them: on such weights attention barely moves the logits, which is what let a wrong rotary
pass the quantized --verify bound.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from architectures import DecoderBuilder, Gemma3Builder, LlamaBuilder, Qwen3Builder
from builder.kit import hf_config
from builder.kit.blocks import DenseMLP
from builder.kit.errors import BuilderError
from builder.kit.graph import Graph
from builder.pipeline import build
from support.synthetic import TOKENIZER_DIR

REPO = Path(__file__).resolve().parents[1]
TINY = dict(
    vocab_size=480,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    bos_token_id=477,
    eos_token_id=479,
    pad_token_id=477,
    rms_norm_eps=1e-6,
)
GRANITE = dict(embedding_multiplier=12.0, attention_multiplier=0.03125, residual_multiplier=0.22, logits_scaling=8.0)


def save_transformers_checkpoint(folder: Path, config_class: str, model_class: str, **extra) -> Path:
    import torch
    import transformers

    torch.manual_seed(0)
    config = getattr(transformers, config_class)(**{**TINY, **extra})
    model = getattr(transformers, model_class)(config).eval()
    with torch.no_grad():  # norms away from 1, so that a misplaced one shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.2)
    model.save_pretrained(folder)
    for f in TOKENIZER_DIR.iterdir():
        shutil.copyfile(f, folder / f.name)
    return folder


@pytest.fixture(scope="module")
def helium(tmp_path_factory) -> Path:
    """HeliumForCausalLM: Llama's keys and tensor names, rotary on interleaved pairs."""
    root = tmp_path_factory.mktemp("helium")
    return save_transformers_checkpoint(root / "ckpt", "HeliumConfig", "HeliumForCausalLM", head_dim=16)


@pytest.fixture(scope="module")
def granite(tmp_path_factory) -> Path:
    """GraniteForCausalLM: Llama plus four scales from config.json."""
    root = tmp_path_factory.mktemp("granite")
    return save_transformers_checkpoint(
        root / "ckpt", "GraniteConfig", "GraniteForCausalLM", tie_word_embeddings=True, **GRANITE
    )


class HeliumBuilder(LlamaBuilder):
    rotary_interleaved = True


class GraniteBuilder(DecoderBuilder):
    genai_type = "granite"
    config_keys = {key: (hf_config.number(), False) for key in GRANITE}

    def make_spec(self, config, target=None):
        spec = super().make_spec(config, target)
        spec.attention_scale = config["attention_multiplier"]
        return spec

    def scaled(self, em, x, key, name, inverse=False):
        value = self.config[key]
        return em.graph.op("Mul", [x, em.graph.constant(1 / value if inverse else value, em.plan.io_dtype)], name)

    def embed(self, em, lm_head):
        return self.scaled(em, super().embed(em, lm_head), "embedding_multiplier", "/model/embed_tokens/Mul")

    def decoder_layer(self, em, i, hidden, residual):
        spec, base = em.spec, f"/model/layers.{i}"
        mixed = self.scaled(em, self.mixer(spec, i)(em, i, hidden), "residual_multiplier", f"{base}/attn_scale")
        weight = em.norm_weight(i, "post_attention_layernorm.weight")
        hidden, residual = em.skip_norm(mixed, residual, weight, f"{base}/post_attention_layernorm")
        mlp = self.scaled(em, self.feed_forward(spec, i)(em, i, hidden), "residual_multiplier", f"{base}/mlp_scale")
        return em.skip_norm(mlp, residual, *self.next_norm(em, i))

    def logits(self, em, hidden, lm_head):
        super().logits(em, self.scaled(em, hidden, "logits_scaling", "/model/logits_scale", inverse=True), lm_head)


def test_interleaved_rotary_is_a_class_attribute(helium, tmp_path):
    """Helium needed Attention's GQA and RotaryEmbedding code copied to change one attribute."""
    options = dict(model=str(helium), verify=True, show_progress=False)
    for precision in ("fp32", "int4"):
        result = build(output=str(tmp_path / precision), precision=precision, family=HeliumBuilder, **options)
        assert result.report["verify"]["status"] == "passed", result.report["verify"]
        assert result.report["verify"]["nmse"] < 1e-10


@pytest.mark.parametrize("precision", ["fp32", "int4", "int8"])
def test_verify_refuses_halves_rotary_on_an_interleaved_model(helium, tmp_path, precision):
    """Helium built as Llama: max |d| 6e-3 but NMSE only 8.5e-5 on these weights, and the quantized
    bound was NMSE 1e-2, so the int4 build was published as verified (status passed). The error
    says where they differ (its report is not written): the prompt's pass or the decode steps."""
    where = (
        r"max_abs [\d.e-]+ over the prompt, [\d.e-]+ over \d+ decode step\(s\); "
        r"top token agrees at \d+% of positions\); the output"
    )
    with pytest.raises(BuilderError, match=f"verify failed: logits differ from transformers .*; {where}"):
        build(
            model=str(helium),
            output=str(tmp_path / "o"),
            precision=precision,
            verify=True,
            family=LlamaBuilder,
            show_progress=False,
        )
    assert not (tmp_path / "o").exists()


class GraniteWithoutAttentionScale(GraniteBuilder):
    def make_spec(self, config, target=None):
        return DecoderBuilder.make_spec(self, config, target)


class GraniteInterleaved(GraniteBuilder):
    rotary_interleaved = True


def test_granite_through_the_hooks_matches_transformers(granite, tmp_path):
    """embed, logits and decoder_layer carry Granite's four scales; config_keys declares them. On
    these weights (transformers' init, attention_multiplier 1/32) attention barely moves the logits,
    so verify's NMSE < 1e-6 passed a wrong rotary (6.7e-10) and an ignored attention scale (2.6e-8):
    the bound here is 1e-10, and the two mistakes are shown to break it."""

    def nmse(family, name):
        options = dict(model=str(granite), precision="fp32", verify=True, family=family, show_progress=False)
        result = build(output=str(tmp_path / name), **options)
        assert result.report["verify"]["status"] == "passed", result.report["verify"]
        return result.report["verify"]["nmse"], result.report

    right, report = nmse(GraniteBuilder, "o")
    assert right < 1e-10, right
    assert not [w for w in report["notes"] if "does not read" in w], report["notes"]
    for family in (GraniteWithoutAttentionScale, GraniteInterleaved):
        assert nmse(family, family.__name__)[0] > 1e-10, family.__name__


def test_granite_s_own_hooks_keep_left_padded_batches_right(granite, tmp_path):
    """Its decoder_layer runs the mixer itself and its embed/logits wrap the base ones: a
    transformers.js build of it gives each row of a left-padded batch the row's own logits."""
    from test_transformers_js import PROMPT, SHORT, left_padded_greedy

    options = dict(precision="fp32", format="transformers.js", family=GraniteBuilder, show_progress=False)
    model = build(model=str(granite), output=str(tmp_path / "o"), **options).model_path
    batch, batch_logits = left_padded_greedy(model, [PROMPT, SHORT], 4)
    for r, prompt in enumerate([PROMPT, SHORT]):
        alone, alone_logits = left_padded_greedy(model, [prompt], 4)
        assert batch[r] == alone[0]
        for ours, theirs in zip(batch_logits, alone_logits):
            np.testing.assert_allclose(ours[r], theirs[0], atol=1e-4)


class AddsItsOwnResidual(HeliumBuilder):
    """Helium, its residual adds written as Add nodes and plain norms instead of em.skip_norm."""

    def decoder_layer(self, em, i, hidden, residual):
        spec, base = em.spec, f"/model/layers.{i}"
        residual = em.graph.op("Add", [self.mixer(spec, i)(em, i, hidden), residual], f"{base}/attn_add")
        weight = em.norm_weight(i, "post_attention_layernorm.weight")
        hidden = em.rms_norm(residual, weight, f"{base}/post_attention_layernorm")
        residual = em.graph.op("Add", [self.feed_forward(spec, i)(em, i, hidden), residual], f"{base}/mlp_add")
        weight, name = self.next_norm(em, i)
        return em.rms_norm(residual, weight, name), residual


class AddsItsOwnResidualInFp16(HeliumBuilder):
    """The same adds, with each norm's output brought to its block: the graph loads, and its
    residual sums stay fp16 under a report that said fp32 (no node took a stream value)."""

    def decoder_layer(self, em, i, hidden, residual):
        spec, base = em.spec, f"/model/layers.{i}"
        residual = em.graph.op("Add", [self.mixer(spec, i)(em, i, hidden), residual], f"{base}/attn_add")
        name = f"{base}/post_attention_layernorm"
        hidden = em.to_block(em.rms_norm(residual, em.norm_weight(i, "post_attention_layernorm.weight"), name), name)
        residual = em.graph.op("Add", [self.feed_forward(spec, i)(em, i, hidden), residual], f"{base}/mlp_add")
        weight, name = self.next_norm(em, i)
        return em.to_block(em.rms_norm(residual, weight, name), name), residual


def test_an_fp32_residual_stream_through_a_plugin_s_hooks(granite, helium, tmp_path):
    """--residual-dtype fp32 under fp16 blocks: Granite's hooks (scales on the embedding, the block
    outputs and the logits) need no change; a family that adds the residual itself would give a
    graph ONNX Runtime refuses to load (fp32 into an fp16 MatMul), so the build says where."""
    options = dict(precision="fp16", residual_dtype="fp32", verify=True, show_progress=False)
    result = build(model=str(granite), output=str(tmp_path / "granite"), family=GraniteBuilder, **options)
    assert result.report["verify"]["status"] == "passed", result.report["verify"]
    assert result.report["target"]["residual_dtype"] == "float32"
    fp16_stream = build(
        model=str(helium),
        output=str(tmp_path / "own"),
        family=AddsItsOwnResidual,
        **{**options, "residual_dtype": "auto"},
    )
    assert fp16_stream.report["verify"]["status"] == "passed", fp16_stream.report["verify"]
    with pytest.raises(BuilderError, match=r"AddsItsOwnResidual: node /model/layers\.0/mlp/.* float32 residual stream"):
        build(model=str(helium), output=str(tmp_path / "refused"), family=AddsItsOwnResidual, **options)
    assert not (tmp_path / "refused").exists()
    with pytest.raises(BuilderError, match=r"AddsItsOwnResidualInFp16 adds its residuals outside the float32 stream"):
        build(model=str(helium), output=str(tmp_path / "refused"), family=AddsItsOwnResidualInFp16, **options)
    assert not (tmp_path / "refused").exists()


def test_config_keys_no_family_reads_are_named(granite, tmp_path):
    """Granite built as Llama: its four scales were ignored without a word (NMSE 51 against
    transformers, seen only with --verify)."""
    result = build(
        model=str(granite), output=str(tmp_path / "o"), precision="fp32", family=LlamaBuilder, show_progress=False
    )
    warned = [w for w in result.report["notes"] if "does not read" in w]
    assert len(warned) == 1 and warned[0].startswith(
        "config.json sets attention_multiplier, embedding_multiplier, logits_scaling, residual_multiplier, "
        "which LlamaBuilder does not read"
    ), result.report["notes"]


def test_no_built_in_family_warns_of_unread_keys():
    """Every tiny config and the real Qwen3 / Qwen3.5 ones: their families read or know each key."""
    from architectures.registry import builder_class_for
    from support.synthetic import REAL_CONFIGS, REAL_SHAPE_CONFIGS, TINY_CONFIGS

    for name, config in {**TINY_CONFIGS, **REAL_CONFIGS, **REAL_SHAPE_CONFIGS}.items():
        assert hf_config.unread_keys(config, builder_class_for(config).config_keys) == [], name


@pytest.mark.parametrize(
    "value,message",
    [
        (None, "logits_scaling is null; it must be a positive number"),
        ("8.0", "logits_scaling = '8.0' is not valid; it must be a positive number"),
    ],
)
def test_a_family_s_own_keys_are_type_checked(granite, tmp_path, value, message):
    """A null scale went into the graph as a NaN constant, and a string one ended in a TypeError."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(granite, ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, "logits_scaling": value}))
    with pytest.raises(BuilderError, match=message):
        build(model=str(ckpt), output=str(tmp_path / "o"), precision="fp32", family=GraniteBuilder)


def test_a_graph_constant_must_be_finite():
    with pytest.raises(BuilderError, match=r"not finite \(\[nan\]\)"):
        Graph(None).constant([None], np.float32)


class GraniteWithIntegerScales(GraniteBuilder):
    """Its scales written with em.graph.constant's default dtype, int64 (for shapes and indices)."""

    def scaled(self, em, x, key, name, inverse=False):
        value = self.config[key]
        return em.graph.op("Mul", [x, em.graph.constant(1 / value if inverse else value)], name)


def test_a_float_constant_of_an_integer_dtype_is_refused(granite, tmp_path):
    """em.graph.constant(0.125) with its dtype left at int64 wrote 0 and the build was published:
    onnxruntime then refused to load it (Mul bound to tensor(float) and tensor(int64))."""
    with pytest.raises(BuilderError) as caught:
        build(model=str(granite), output=str(tmp_path / "o"), precision="fp32", family=GraniteWithIntegerScales)
    message = str(caught.value)
    assert "raised ValueError: graph constant 12.0 is a float, but its dtype is int64" in message, message
    assert "pass dtype=em.plan.io_dtype" in message and f"in scaled ({__file__}:" in message, message
    assert not (tmp_path / "o").exists()
    assert Graph(None).constant([], np.int64) and Graph(None).constant(3) and Graph(None).constant(0.5, np.float16)


class GraniteWithFloat32Scales(GraniteBuilder):
    """Its scales written in float32 whatever the activations' dtype."""

    def scaled(self, em, x, key, name, inverse=False):
        value = self.config[key]
        return em.graph.op("Mul", [x, em.graph.constant(1 / value if inverse else value, np.float32)], name)


def test_a_hook_a_subclass_overrides_is_named_once_in_a_fault_s_likely_cause():
    from builder.family_source import _likely_cause

    cause = _likely_cause(RuntimeError("x"), GraniteWithFloat32Scales, {"test_plugin_hooks"})
    assert "its own hooks (decoder_layer, embed, logits, make_spec, scaled) return" in cause, cause


def test_a_graph_onnxruntime_refuses_is_not_published(granite, tmp_path):
    """An fp16 build whose Mul takes an fp32 scale was published, and onnxruntime refused the folder
    only when a user loaded it; without --verify nothing ran the graph before that."""
    with pytest.raises(BuilderError) as caught:
        build(
            model=str(granite),
            output=str(tmp_path / "o"),
            precision="fp16",
            family=GraniteWithFloat32Scales,
            show_progress=False,
        )
    message = str(caught.value)
    assert message.startswith("onnxruntime ") and " refuses the built graph (Type Error: " in message, message
    assert "in node (/model/embed_tokens/Mul)" in message and "the output was not written" in message, message
    assert "GraniteWithFloat32Scales, which is not one of the builder's own families" in message, message
    assert not (tmp_path / "o").exists()


class GraniteWithABadReshape(GraniteBuilder):
    """Its embedding scale goes through rows of 7, which onnxruntime loads (the sequence length is
    symbolic) but cannot run: a prompt's 16 x 64 values do not split into rows of 7."""

    def scaled(self, em, x, key, name, inverse=False):
        scaled = super().scaled(em, x, key, name, inverse)
        if key != "embedding_multiplier":
            return scaled
        rows = em.graph.op("Reshape", [scaled, em.graph.constant([-1, 7])], f"{name}/rows")
        return em.graph.op("Reshape", [rows, em.graph.constant([1, -1, em.spec.hidden_size])], f"{name}/back")


def test_verify_names_the_node_onnxruntime_cannot_run(granite, tmp_path):
    """onnxruntime's error at run time names the node, which the one-line fault report of a plugin
    cut at 200 characters, under a hint about blocks without return."""
    options = dict(model=str(granite), output=str(tmp_path / "o"), precision="fp32", verify=True)
    with pytest.raises(BuilderError) as caught:
        build(**options, family=GraniteWithABadReshape, show_progress=False)
    message = str(caught.value)
    assert "verify: onnxruntime could not run the built model ([ONNXRuntimeError]" in message, message
    assert "/model/embed_tokens/Mul/rows" in message and "the output was not written" in message, message
    assert "GraniteWithABadReshape, which is not one of the builder's own families" in message, message
    assert not (tmp_path / "o").exists()


def test_a_genai_type_genai_does_not_open_is_named(granite, tmp_path):
    """genai_type 'ministral' built fine, and onnxruntime-genai refused the folder when opened."""

    class Ministral(GraniteBuilder):
        genai_type = "ministral"

    result = build(model=str(granite), output=str(tmp_path / "o"), precision="fp32", family=Ministral)
    assert any(
        "genai_type 'ministral' is no model type onnxruntime-genai 0.18 opens" in w for w in result.report["notes"]
    )


def test_a_custom_model_type_verifies_through_reference_class(helium, tmp_path):
    """A fine-tune whose config.json names its own model_type: --verify could only load it when
    the plugin registered it with transformers on import, which every build then paid for."""
    from transformers import LlamaConfig, LlamaForCausalLM

    ckpt = tmp_path / "ckpt"
    shutil.copytree(helium, ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config.update(model_type="my_helium", architectures=["MyHeliumForCausalLM"])
    (ckpt / "config.json").write_text(json.dumps(config))

    class MyHeliumConfig(LlamaConfig):
        model_type = "my_helium"

    class MyHeliumForCausalLM(LlamaForCausalLM):
        config_class = MyHeliumConfig

    options = dict(model=str(ckpt), precision="fp32", verify=True, show_progress=False)
    with pytest.raises(BuilderError, match=r"verify: transformers cannot load .*reference_class\(\)"):
        build(output=str(tmp_path / "plain"), family=HeliumBuilder, **options)

    class MyHelium(HeliumBuilder):
        @classmethod
        def reference_class(cls):
            return MyHeliumForCausalLM

    # transformers' Llama rotates halves: the reference is what this class computes, not Helium.
    result = build(output=str(tmp_path / "o"), family=MyHelium, **{**options, "verify": False})
    assert result.report["checkpoint"]["family"].endswith("MyHelium")
    with pytest.raises(
        BuilderError, match="verify failed: .* It was built by test_plugin_hooks.*MyHelium, which is not"
    ):
        build(output=str(tmp_path / "v"), family=MyHelium, **options)

    class MyHeliumAsLlama(LlamaBuilder):
        @classmethod
        def reference_class(cls):
            return MyHeliumForCausalLM

    verified = build(output=str(tmp_path / "llama"), family=MyHeliumAsLlama, **options).report["verify"]
    assert verified["status"] == "passed" and verified["nmse"] < 1e-10, verified


PLUGIN = """
from architectures import LlamaBuilder, register


@register("HeliumForCausalLM")
class Helium(LlamaBuilder):
    rotary_interleaved = {interleaved}
"""


def test_batch_rebuilds_what_a_changed_plugin_built(helium, tmp_path):
    """batch compared only the family's class name and the builder's version, so after a plugin
    was fixed its wrong outputs stayed, shown as 'passed (earlier build)'."""
    site = tmp_path / "site"
    (site / "helium_plugin-0.1.dist-info").mkdir(parents=True)
    (site / "helium_plugin-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: helium-plugin\nVersion: 0.1\n"
    )
    (site / "helium_plugin-0.1.dist-info" / "entry_points.txt").write_text(
        "[builder.architectures]\nhelium = helium_plugin\n"
    )
    (site / "helium_plugin.py").write_text(textwrap.dedent(PLUGIN.format(interleaved=False)))
    batch = tmp_path / "batch.yaml"
    batch.write_text(f"jobs:\n  - model: {helium}\n    precision: fp32\n    output: out\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO), os.environ.get("PYTHONPATH", "")])}

    def run_batch():
        run = subprocess.run(
            [sys.executable, "-m", "builder", "batch", str(batch)], capture_output=True, text=True, env=env, timeout=300
        )
        assert run.returncode == 0, run.stdout + run.stderr
        return run.stdout

    first = run_batch()
    assert "1 built" in first, first
    assert "0 built, 1 skipped" in run_batch()
    (site / "helium_plugin.py").write_text(textwrap.dedent(PLUGIN.format(interleaved=True)))
    again = run_batch()
    assert "the source of helium_plugin.Helium changed" in again and "1 built" in again, again
    import onnx

    graph = onnx.load(tmp_path / "out" / "model.onnx", load_external_data=False).graph
    attention = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
    # Every GroupQueryAttention carries the attribute (0 before the fix): its value is the fix.
    assert attention and all(
        onnx.helper.get_attribute_value(a) == 1
        for n in attention
        for a in n.attribute
        if a.name == "rotary_interleaved"
    )
    assert all(any(a.name == "rotary_interleaved" for a in n.attribute) for n in attention)


def test_the_command_line_builds_with_a_family_of_one_s_own(helium, tmp_path):
    """A CLI user could only use a family of their own by packaging it with an entry point."""
    (tmp_path / "my_families.py").write_text(textwrap.dedent(PLUGIN.format(interleaved=True)).replace("@register", "#"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}

    def cli(*args):
        command = [sys.executable, "-m", "builder", "-m", str(helium), "-p", "fp32", "--quiet", *args]
        return subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)

    built = cli("--family", "my_families:Helium", "-o", "own", "--verify")
    assert built.returncode == 0, built.stderr
    report = json.loads((tmp_path / "own" / "build_report.json").read_text())
    assert report["checkpoint"]["family"] == "my_families.Helium" and report["verify"]["status"] == "passed"
    assert report["options"]["family"] == "my_families:Helium"

    as_llama = cli("--family", "LlamaForCausalLM", "-o", "llama")
    assert as_llama.returncode == 0, as_llama.stderr
    assert json.loads((tmp_path / "llama" / "build_report.json").read_text())["checkpoint"]["family"] == (
        "architectures.llama.LlamaBuilder"
    )
    for family, message in [
        ("my_families:Nothing", "error: --family my_families:Nothing: importing it failed (AttributeError: "),
        ("no_such_module:Helium", "error: --family no_such_module:Helium: importing it failed (ModuleNotFoundError: "),
        ("my_families:LlamaBuilder.__init__", "that is no builder class"),
        ("HeliumForCausalLM", "error: --family: architecture 'HeliumForCausalLM' is not supported; supported: "),
    ]:
        refused = cli("--family", family, "-o", "refused")
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr and not (tmp_path / "refused").exists()


def test_hub_configs_keys_that_change_nothing_are_not_named():
    """Gemma 3 re-saved by transformers 5 writes _sliding_window_pattern, SmolLM2 is_llama_config
    and rope_interleaved: false, transformers 4 its generation defaults: all were named as unread."""
    from architectures.registry import builder_class_for
    from support.synthetic import TINY_CONFIGS

    extra = {
        "gemma3": {"_sliding_window_pattern": 6, "chunk_size_feed_forward": 0},
        "llama": {
            "is_llama_config": True,
            "rope_interleaved": False,
            "unsloth_fixed": True,
            "max_length": 20,
            "temperature": 1.0,
            "top_k": 50,
            "num_beams": 1,
            "use_bfloat16": False,
        },
    }
    for name, keys in extra.items():
        config = {**TINY_CONFIGS[name], **keys}
        assert hf_config.unread_keys(config, builder_class_for(config).config_keys) == [], name
    # ... while a flag that turns something on is still named.
    config = {**TINY_CONFIGS["llama"], "rope_interleaved": True}
    assert hf_config.unread_keys(config, LlamaBuilder.config_keys) == ["rope_interleaved"]


def test_the_source_digest_skips_files_that_are_not_code(tmp_path, monkeypatch):
    """An editor's lock file (a dangling .#x.py link) in the plugin's package failed the build
    at its last step, writing the report."""
    from builder.family_source import family_source_digest

    package = tmp_path / "lockfam"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from architectures import LlamaBuilder\n\n\nclass Fam(LlamaBuilder):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import lockfam

    before = family_source_digest(lockfam.Fam)
    (package / ".#__init__.py").symlink_to("user@host.1234")
    assert family_source_digest(lockfam.Fam) == before and before is not None
    (package / ".#__init__.py").unlink()
    (package / ".#__init__.py").write_text("X = 0\n")  # a hidden file, not a link: no module either
    assert family_source_digest(lockfam.Fam) == before
    (package / "blocks.py").write_text("X = 1\n")  # another module of the package: part of its source
    with_blocks = family_source_digest(lockfam.Fam)
    assert with_blocks != before
    (package / "blocks.py").rename(package / "layers.py")  # `from .blocks import X` fails now
    assert family_source_digest(lockfam.Fam) != with_blocks
    assert family_source_digest(LlamaBuilder) is None  # built in: the builder's version covers it


def test_the_source_digest_covers_the_user_s_modules_a_family_imports(tmp_path, monkeypatch):
    """A family in digest_fam.py with its MLP in digest_blocks.py beside it: an edit of digest_blocks.py left the
    digest as it was, so batch called the old output up to date."""
    import importlib

    from builder.family_source import family_source_digest

    blocks = "import numpy\n\nfrom builder.kit.blocks import DenseMLP\n\nACT = {!r}\n"
    (tmp_path / "digest_blocks.py").write_text(blocks.format("silu"))
    (tmp_path / "digest_fam.py").write_text(
        "from architectures import LlamaBuilder\nfrom digest_blocks import ACT, DenseMLP\n\n\n"
        "class Fam(LlamaBuilder):\n    def feed_forward(self, spec, i):\n        return DenseMLP(act=ACT)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import digest_fam

    before = family_source_digest(digest_fam.Fam)
    (tmp_path / "digest_blocks.py").write_text(blocks.format("gelu_tanh"))
    assert family_source_digest(digest_fam.Fam) != before
    (tmp_path / "digest_unrelated.py").write_text("X = 1\n")  # beside it, imported by nothing: not its source
    importlib.import_module("digest_unrelated")
    after = family_source_digest(digest_fam.Fam)
    (tmp_path / "digest_unrelated.py").write_text("X = 2\n")
    assert family_source_digest(digest_fam.Fam) == after


def test_the_source_digest_covers_a_module_taken_from_the_user_s_package(tmp_path, monkeypatch):
    """`from digest_pkg import blocks` names a submodule, not only the package: an edit of
    digest_pkg/blocks.py must change the digest as one of digest_blocks.py does."""
    from builder.family_source import family_source_digest

    (tmp_path / "digest_pkg").mkdir()
    (tmp_path / "digest_pkg" / "__init__.py").write_text("")
    (tmp_path / "digest_pkg" / "blocks.py").write_text("ACT = 'silu'\n")
    (tmp_path / "digest_pkg_fam.py").write_text(
        "from architectures import LlamaBuilder\nfrom digest_pkg import blocks\n\n\n"
        "class Fam(LlamaBuilder):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import digest_pkg_fam

    before = family_source_digest(digest_pkg_fam.Fam)
    (tmp_path / "digest_pkg" / "blocks.py").write_text("ACT = 'gelu_tanh'\n")
    assert family_source_digest(digest_pkg_fam.Fam) != before


def test_the_source_digest_follows_a_relative_import_up_the_user_s_package(tmp_path, monkeypatch):
    """`from ..blocks import ACT` in relpkg/sub/fam.py names relpkg.blocks, not relpkg.sub.blocks: read
    as the latter, the module blocks.py imports from outside the package went undigested."""
    from builder.family_source import family_source_digest

    (tmp_path / "relpkg" / "sub").mkdir(parents=True)
    (tmp_path / "relpkg" / "__init__.py").write_text("")
    (tmp_path / "relpkg" / "sub" / "__init__.py").write_text("")
    (tmp_path / "relpkg" / "blocks.py").write_text("from relpkg_helper import ACT\n")
    (tmp_path / "relpkg" / "sub" / "fam.py").write_text(
        "from architectures import LlamaBuilder\n\nfrom ..blocks import ACT\n\n\nclass Fam(LlamaBuilder):\n    pass\n"
    )
    (tmp_path / "relpkg_helper.py").write_text("ACT = 'silu'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from relpkg.sub import fam

    before = family_source_digest(fam.Fam)
    (tmp_path / "relpkg_helper.py").write_text("ACT = 'gelu_tanh'\n")
    assert family_source_digest(fam.Fam) != before


def test_the_source_digest_is_the_same_before_and_after_a_lazy_import_runs(tmp_path, monkeypatch):
    """A family importing modules of the user's inside a method: the build's process had run it, so the
    digest its report recorded covered them; batch's check had not, so its digest left them out, and
    every output of the family was rebuilt on every run ("the source of lazy_fam.Fam changed")."""
    import sys

    from builder.family_source import family_source_digest

    (tmp_path / "lazy_helper.py").write_text("ACT = 'silu'\n")
    (tmp_path / "lazy_pkg").mkdir()
    (tmp_path / "lazy_pkg" / "__init__.py").write_text("")
    (tmp_path / "lazy_pkg" / "blocks.py").write_text("ACT = 'silu'\n")
    (tmp_path / "lazy_fam.py").write_text(
        "from architectures import LlamaBuilder\n\n\nclass Fam(LlamaBuilder):\n    def check_graph(self):\n"
        "        import lazy_helper\n        from lazy_pkg import blocks\n\n"
        "        return super().check_graph()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import lazy_fam

    as_the_batch_sees_it = family_source_digest(lazy_fam.Fam)
    assert not {"lazy_helper", "lazy_pkg", "lazy_pkg.blocks"} & set(sys.modules)  # found, not imported
    import lazy_helper  # noqa: F401  as in the build's process, once check_graph ran
    from lazy_pkg import blocks  # noqa: F401

    assert family_source_digest(lazy_fam.Fam) == as_the_batch_sees_it
    for module in ("lazy_helper", "lazy_pkg.blocks", "lazy_pkg"):
        sys.modules.pop(module)
    (tmp_path / "lazy_pkg" / "blocks.py").write_text("ACT = 'gelu_tanh'\n")  # an edit is seen, loaded or not
    assert family_source_digest(lazy_fam.Fam) != as_the_batch_sees_it


def test_an_os_error_in_a_family_is_left_for_the_command_line_to_word(tmp_path, monkeypatch):
    """A missing file or a full disk met while a plugin family builds is said as such by the command
    line, not blamed on the family's code."""
    from builder.family_source import plugin_faults_named

    (tmp_path / "oserror_fam.py").write_text(
        "from architectures import LlamaBuilder\n\n\nclass Fam(LlamaBuilder):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import oserror_fam

    with pytest.raises(FileNotFoundError), plugin_faults_named(oserror_fam.Fam):
        raise FileNotFoundError("model.safetensors")
    with pytest.raises(BuilderError, match="the family oserror_fam.Fam failed: .* raised KeyError: 'x'"):
        with plugin_faults_named(oserror_fam.Fam):
            raise KeyError("x")


def test_a_fault_raised_in_the_builder_s_code_names_its_innermost_frame(tmp_path, monkeypatch):
    """Where a family's input made the builder's code raise, the line named is the builder's frame that
    raised, shown relative to the checkout, not the outermost one that called it."""
    from builder.family_source import plugin_faults_named

    (tmp_path / "inner_fam.py").write_text(
        "from architectures import LlamaBuilder\n\n\nclass Fam(LlamaBuilder):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import inner_fam

    code = "def outer():\n    inner()\n\n\ndef inner():\n    raise KeyError('x')\n"
    scope = {"__name__": "builder.fake_step"}
    exec(compile(code, str(REPO / "builder" / "fake_step.py"), "exec"), scope)
    with pytest.raises(BuilderError, match=r"the builder's inner \(builder/fake_step\.py:6\) raised KeyError"):
        with plugin_faults_named(inner_fam.Fam):
            scope["outer"]()


def test_a_fault_s_message_is_one_line_of_at_most_200_characters():
    from builder.family_source import _one_line

    assert _one_line(ValueError("shapes differ:\n  (2, 3)\n  (3, 2)")) == "shapes differ: (2, 3) (3, 2)"
    assert _one_line(ValueError("x" * 300)) == "x" * 197 + "..."
    assert _one_line(KeyError()) == "KeyError"


def test_the_source_digest_ignores_comments_and_docstrings_as_the_builder_s_own_does(tmp_path, monkeypatch):
    """A comment edited in a plugin's family changed its digest, so batch rebuilt every output of it
    (a 4B model: minutes each), where the builder's own code is digested parsed."""
    import importlib

    from builder.family_source import family_source_digest

    code = "from architectures import LlamaBuilder\n\n\nclass Fam(LlamaBuilder):\n    {}\n    scale = {}\n"
    (tmp_path / "comment_fam.py").write_text(code.format('"""First words."""', 1.0))
    monkeypatch.syspath_prepend(str(tmp_path))
    import comment_fam

    before = family_source_digest(comment_fam.Fam)
    (tmp_path / "comment_fam.py").write_text(
        "# A note.\n" + code.format('"""Other words."""', 1.0).replace("= ", "=  ")
    )
    assert family_source_digest(comment_fam.Fam) == before
    (tmp_path / "comment_fam.py").write_text(code.format('"""First words."""', 2.0))
    importlib.reload(comment_fam)
    assert family_source_digest(comment_fam.Fam) != before


def test_the_source_digest_leaves_libraries_out_when_reached_through_a_symlink(tmp_path, monkeypatch):
    """With site-packages named through a symlinked venv, numpy's files were taken for the user's
    own: every build of such a family parsed and hashed the libraries it imports."""
    import sysconfig

    import builder.family_source as family_source

    real = sysconfig.get_paths()
    (tmp_path / "venv").symlink_to(Path(real["purelib"]).parent)
    linked = {k: str(tmp_path / "venv" / Path(v).name) if k in ("purelib", "platlib") else v for k, v in real.items()}
    monkeypatch.setattr(family_source.sysconfig, "get_paths", lambda: linked)
    (tmp_path / "symlinked_fam.py").write_text("import numpy\nfrom architectures import LlamaBuilder\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import symlinked_fam  # noqa: F401

    assert family_source._own_modules_imported("symlinked_fam") == {tmp_path / "symlinked_fam.py"}


def test_onnx_builder_imports_a_family_from_the_current_folder(helium, tmp_path):
    """python -m builder has the current folder on sys.path and onnx-builder did not, so the
    same --family my_families:Helium failed there; an empty --family was ignored."""
    (tmp_path / "my_families.py").write_text(textwrap.dedent(PLUGIN.format(interleaved=True)).replace("@register", "#"))
    # As the onnx-builder script runs it: -I leaves the current folder and PYTHONPATH off sys.path.
    program = f"import sys; sys.path.insert(0, {str(REPO)!r}); from builder.cli import program; sys.exit(program())"
    for family, rc in [("my_families:Helium", 0), ("", 2)]:
        run = subprocess.run(
            [sys.executable, "-I", "-c", program, "-m", helium, "-p", "fp32", "-o", f"out{rc}", "--family", family],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == rc, run.stderr
    assert (
        json.loads((tmp_path / "out0" / "build_report.json").read_text())["checkpoint"]["family"]
        == "my_families.Helium"
    )
    assert "error: --family: empty" in run.stderr


def test_a_model_type_transformers_js_lacks_is_named_when_built(helium, tmp_path):
    """--family LlamaForCausalLM on a fine-tune with its own model_type wrote a transformers.js
    folder that transformers.js refuses, without a word until it was loaded."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(helium, ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, "model_type": "my_helium"}))
    options = dict(precision="fp32", format="transformers.js", family="LlamaForCausalLM", show_progress=False)
    notes = build(model=str(ckpt), output=str(tmp_path / "own"), **options).report["notes"]
    warned = [n for n in notes if "model_type 'my_helium' is none transformers.js 4.3 has a model class for" in n]
    assert warned and "model_config()" not in warned[0], notes  # a built-in family has no hook to name
    notes = build(model=str(helium), output=str(tmp_path / "helium"), **options).report["notes"]
    assert not any("transformers.js 4.3 has a model class" in n for n in notes), notes


FAULTY = """
from architectures import Qwen3Builder


class Faulty(Qwen3Builder):
    def make_spec(self, config, target):
        return {}["oops"]
"""


def test_a_fault_in_a_family_s_own_code_is_named_with_its_line(tmp_path, monkeypatch):
    """A family of one's own that raised ended the build in a bare traceback, and in a batch
    stopped the whole file while it was checked, with no line and no summary."""
    (tmp_path / "faulty_family.py").write_text(FAULTY)
    monkeypatch.syspath_prepend(str(tmp_path))
    tiny = REPO / "examples" / "tiny-qwen3"
    raised = "the family faulty_family.Faulty raised KeyError: 'oops' in make_spec ("
    with pytest.raises(BuilderError) as caught:
        build(model=str(tiny), precision="int4", ep="cpu", output=str(tmp_path / "out"), family="faulty_family:Faulty")
    assert raised + f"{tmp_path / 'faulty_family.py'}:7); fix that code" in str(caught.value)
    assert isinstance(caught.value.__cause__, KeyError)  # Python callers and --debug keep the traceback
    assert not (tmp_path / "out").exists()

    from builder.batch_schema import load_batch

    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(f"jobs:\n  - {{model: {tiny}, output: a, family: 'faulty_family:Faulty'}}\n  - {{model: {tiny}}}\n")
    with pytest.raises(
        BuilderError, match=r"jobs\.yaml:2: jobs\[0\]: the family faulty_family\.Faulty raised KeyError"
    ):
        load_batch(jobs)


MISTAKES = """
import dataclasses

from architectures import Qwen3Builder
from builder.kit.blocks import DenseMLP


class NoPackGroups:
    def modules(self, i):
        return [f"model.layers.{i}.mlp.{p}_proj" for p in ("gate", "up", "down")]

    def __call__(self, em, i, x):
        return DenseMLP()(em, i, x)


class NoModules:
    def pack_groups(self, i):
        return []

    def __call__(self, em, i, x):
        return DenseMLP()(em, i, x)


class NoCall(NoPackGroups):
    __call__ = None

    def pack_groups(self, i):
        return []


class NoReturn(NoCall):
    def __call__(self, em, i, x):
        DenseMLP()(em, i, x)


class ForgotPackGroups(Qwen3Builder):
    def feed_forward(self, spec, i):
        return NoPackGroups()


class ForgotModules(Qwen3Builder):
    def feed_forward(self, spec, i):
        return NoModules()


class ForgotCall(Qwen3Builder):
    def feed_forward(self, spec, i):
        return NoCall()


class ForgotReturn(Qwen3Builder):
    def feed_forward(self, spec, i):
        return NoReturn()


class BadRotary(Qwen3Builder):
    def rotary(self, spec):
        return spec.rope


class ForgotSuperInit(Qwen3Builder):
    def __init__(self, checkpoint, options):
        self.scale = 2.0
"""


@pytest.mark.parametrize(
    "family, cause",
    [
        ("ForgotPackGroups", "its NoPackGroups has no pack_groups (a block needs modules(i), pack_groups(i)"),
        ("ForgotModules", "its NoModules has no modules"),
        ("ForgotCall", "likely what its own hooks (feed_forward) return, e.g. a block's __call__ without return"),
        ("ForgotReturn", "likely what its own hooks (feed_forward) return, e.g. a block's __call__ without return"),
        ("BadRotary", "a hook of the family returned a RopeSpec where the builder reads .values"),
        # It was told that ForgotSuperInit, taken for a block, needs modules(i), pack_groups(i) and __call__.
        ("ForgotSuperInit", "its ForgotSuperInit.__init__ ({dir}/mistaken_family.py:62) does not call super()."),
    ],
)
def test_a_mistake_in_a_family_s_block_or_spec_is_named_in_one_line(tmp_path, family, cause):
    """A block without pack_groups or modules, a __call__ of None or without return, a make_spec
    returning a dict: the builder's own code raised on them, so the build ended in a bare
    traceback (exit 1), and a batch stopped while it checked the file, with no line and no summary."""
    (tmp_path / "mistaken_family.py").write_text(MISTAKES)
    (tmp_path / "jobs.yaml").write_text(
        f"jobs:\n  - {{model: {REPO / 'examples' / 'tiny-qwen3'}, family: 'mistaken_family:{family}', output: o}}\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    single = subprocess.run(
        [sys.executable, "-m", "builder", "-m", str(REPO / "examples" / "tiny-qwen3"), "--quiet", "-o", "o"]
        + ["--family", f"mistaken_family:{family}"],
        **dict(capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300),
    )
    assert single.returncode == 2 and "Traceback" not in single.stderr, single.stderr
    (line,) = single.stderr.splitlines()
    assert line.startswith(f"error: the family mistaken_family.{family} failed: the builder's "), line
    cause = cause.format(dir=tmp_path)
    assert cause in line and "--debug on a single build shows the traceback" in line, line
    checked = subprocess.run(
        [sys.executable, "-m", "builder", "batch", "jobs.yaml"],
        **dict(capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300),
    )
    assert checked.returncode in (1, 2) and "Traceback" not in checked.stderr, checked.stderr
    assert f"the family mistaken_family.{family} failed" in checked.stdout + checked.stderr
    assert not (tmp_path / "o" / "model.onnx").exists()


WRONG_SIGNATURES = """
import dataclasses

from architectures import Qwen3Builder
from builder.kit.blocks import DenseMLP


@dataclasses.dataclass(frozen=True)
class GeluMLP(DenseMLP):
    def activation(self, x, name):
        return x


class WeightWithoutLayer(Qwen3Builder):
    def weight(self, suffix):
        return suffix


class SpecWithoutTarget(Qwen3Builder):
    def make_spec(self, config):
        return super().make_spec(config)


class ActivationWithoutEmitter(Qwen3Builder):
    def feed_forward(self, spec, i):
        return GeluMLP()
"""


@pytest.mark.parametrize(
    "family, line, expected",
    [
        (
            "WeightWithoutLayer",
            15,
            "its WeightWithoutLayer.weight(self, suffix) ({file}:15) takes other arguments "
            "than the builder passes; give it DecoderBuilder's parameters: weight(self, layer, suffix)",
        ),
        (
            "SpecWithoutTarget",
            20,
            "its SpecWithoutTarget.make_spec(self, config) ({file}:20) takes other arguments "
            "than the builder passes; give it Qwen3Builder's parameters: make_spec(self, config, target=None)",
        ),
        (
            "ActivationWithoutEmitter",
            10,
            "its GeluMLP.activation(self, x, name) ({file}:10) takes other arguments "
            "than the builder passes; give it DenseMLP's parameters: activation(self, em, x, name)",
        ),
    ],
)
def test_a_hook_overridden_with_other_parameters_is_named_with_the_ones_it_needs(
    tmp_path, monkeypatch, family, line, expected
):
    """A hook written with other parameters than the builder calls it with failed in the builder's
    call: a weight(self, suffix) was blamed on the line of make_spec that called into the builder
    ("in make_spec ... fix that code"), a make_spec(self, config) on "what its own hooks return, e.g.
    a block's __call__ without return"."""
    name = f"wrong_signatures_{family.lower()}"  # one module a case: an imported module stays in sys.modules
    module = tmp_path / f"{name}.py"
    module.write_text(WRONG_SIGNATURES)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(BuilderError) as caught:
        build(
            model=str(REPO / "examples" / "tiny-qwen3"),
            precision="int4",
            ep="cpu",
            output=str(tmp_path / "out"),
            family=f"{name}:{family}",
            show_progress=False,
        )
    message = str(caught.value)
    assert message.startswith(f"the family {name}.{family} failed: TypeError: "), message
    assert expected.format(file=module) in message, message
    assert "likely" not in message and "fix that code" not in message, message
    assert isinstance(caught.value.__cause__, TypeError)
    assert not (tmp_path / "out").exists()


def _spec_without_return(self, config, target=None):
    spec = Qwen3Builder.make_spec(self, config, target)
    spec.attention_scale = 0.125  # changed, and `return spec` forgotten


@pytest.mark.parametrize(
    "make_spec, returned",
    [(_spec_without_return, "NoneType"), (lambda self, config, target=None: {"hidden_size": 64}, "dict")],
)
def test_a_make_spec_that_returns_no_spec_is_refused_as_the_family_s(tmp_path, make_spec, returned):
    """A make_spec that changed super()'s spec and forgot to return it failed inside the builder's
    plan, with "likely what its own hooks return, e.g. a block's __call__ without return"."""
    family = type("Unspecced", (Qwen3Builder,), {"make_spec": make_spec})
    with pytest.raises(BuilderError) as refused:
        build(model=str(REPO / "examples" / "tiny-qwen3"), precision="fp32", output=str(tmp_path / "o"), family=family)
    assert str(refused.value).startswith(
        f"Unspecced.make_spec returned {returned}, not a DecoderSpec: return the spec"
    ), refused.value
    assert not (tmp_path / "o").exists()


def test_a_family_s_lazy_imports_of_its_own_modules_work_from_another_folder(tmp_path):
    """--family module:Class put the current folder on sys.path only while it imported the module,
    so a sibling module imported inside a method, as docs/architecture.md prescribes, was not found
    under onnx-builder or a script in another folder (python -m builder has the folder anyway)."""
    work, scripts = tmp_path / "work", tmp_path / "scripts"
    work.mkdir(), scripts.mkdir()
    (work / "lazy_family.py").write_text(
        "from architectures import Qwen3Builder\n\n\nclass Lazy(Qwen3Builder):\n"
        "    def feed_forward(self, spec, i):\n        from lazy_blocks import block\n\n        return block()\n"
    )
    (work / "lazy_blocks.py").write_text(
        "from builder.kit.blocks import DenseMLP\n\n\ndef block():\n    return DenseMLP()\n"
    )
    (scripts / "build_it.py").write_text(
        "import sys\nfrom builder.cli import main\n\nsys.exit(main(sys.argv[1:]))\n"  # as onnx-builder runs
    )
    proc = subprocess.run(
        [sys.executable, str(scripts / "build_it.py"), "-m", str(REPO / "examples" / "tiny-qwen3"), "--quiet"]
        + ["-o", "out", "--family", "lazy_family:Lazy"],
        **dict(capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=work, timeout=300),
    )
    assert proc.returncode == 0, proc.stderr
    assert (work / "out" / "model.onnx").is_file()


def test_a_fault_in_the_builder_s_own_family_keeps_its_traceback(tmp_path, monkeypatch):
    """Only a plugin's code is the user's to fix: the builder's own faults stay bugs."""
    from architectures import Qwen3Builder

    def make_spec(self, config, target):
        return {}["oops"]

    monkeypatch.setattr(Qwen3Builder, "make_spec", make_spec)
    with pytest.raises(KeyError):
        build(model=str(REPO / "examples" / "tiny-qwen3"), precision="int4", ep="cpu", output=str(tmp_path / "out"))


class PacksItsMlp(HeliumBuilder):
    def adjust_layout(self, layout, options):
        import dataclasses

        return dataclasses.replace(super().adjust_layout(layout, options), mlp="packed", qkv="separate")


class DropsItsQkvGroups(HeliumBuilder):
    def adjust_layout(self, layout, options):
        import dataclasses

        layout = super().adjust_layout(layout, options)
        return dataclasses.replace(layout, packed=frozenset(g for g in layout.packed if not g.endswith("qkv_proj")))


def test_the_report_notes_say_the_family_chose_its_packing(tmp_path):
    """After adjust_layout changed the packing, the report's notes still said "mlp_packing auto ->
    separate (evidence)" beside mlp_packing: packed."""
    import dataclasses

    from architectures import Qwen3Builder

    class ForcesPacking(Qwen3Builder):
        def adjust_layout(self, layout, options):
            return dataclasses.replace(layout, mlp="packed", qkv="separate")

    tiny = str(REPO / "examples" / "tiny-qwen3")
    chosen = Qwen3Builder.from_pretrained(tiny, ep="cpu").layout
    assert (chosen.qkv, chosen.mlp) == ("packed-split", "separate")  # what cpu's auto is
    layout = ForcesPacking.from_pretrained(tiny, ep="cpu").layout.describe()
    assert (layout["qkv_packing"], layout["mlp_packing"]) == ("separate", "packed")
    assert not any(n.startswith(("qkv_packing auto", "mlp_packing auto")) for n in layout["notes"]), layout["notes"]
    assert (
        "mlp_packing packed: chosen by ForcesPacking's adjust_layout (the target's choice: separate)" in layout["notes"]
    )
    assert (
        "qkv_packing separate: chosen by ForcesPacking's adjust_layout (the target's choice: packed-split)"
        in (layout["notes"])
    )


@pytest.mark.parametrize(
    "family, qkv, mlp",
    [(PacksItsMlp, "separate", "packed"), (DropsItsQkvGroups, "separate", "separate")],
)
def test_a_packing_a_family_sets_is_the_graph_it_builds(helium, tmp_path, family, qkv, mlp):
    """adjust_layout is a family's last word on the layout, but the blocks read which groups are
    packed, not the labels: mlp="packed" built separate gate/up MatMuls under a report saying
    packed, and dropping the qkv groups left a report saying packed-split."""
    import onnx

    options = dict(model=str(helium), precision="int4", ep="cpu", show_progress=False, family=family)
    default = build(output=str(tmp_path / "default"), **{**options, "family": HeliumBuilder}).report["layout"]
    assert (default["qkv_packing"], default["mlp_packing"]) == ("packed-split", "separate")  # what cpu's auto is
    result = build(output=str(tmp_path / "o"), verify=True, **options)
    assert (result.report["layout"]["qkv_packing"], result.report["layout"]["mlp_packing"]) == (qkv, mlp)
    names = [n.name for n in onnx.load(result.model_path, load_external_data=False).graph.node]
    per_layer = {
        kind: sum(n.startswith(f"/model/layers.0/{kind}/") and "MatMul" in n for n in names) for kind in ("attn", "mlp")
    }
    assert per_layer == {"attn": 4 if qkv == "separate" else 2, "mlp": 2 if mlp == "packed" else 3}, names
    assert result.report["verify"]["status"] == "passed", result.report["verify"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"mlp": "fused"}, "set mlp='fused', which no block writes; use one of packed, separate"),
        ({"qkv": "fused-norm"}, "set qkv='fused-norm', which only qkv_packing='fused-norm' chooses"),  # the keyword
        ({"silu": "relu"}, "set silu='relu', which no block writes"),
        ({"head_norm": "per-head"}, "set head_norm='per-head', which no block writes"),
        ({"packed": frozenset({"mlp.gate_up_proj"})}, "packs mlp.gate_up_proj, which is no group its pack_groups"),
        (None, "returned NoneType, not a Layout"),
    ],
)
def test_a_layout_adjust_layout_cannot_build_is_refused(tmp_path, change, message):
    """adjust_layout's labels and groups went to the report as they were: mlp="fused" (or qkv="fused-norm"
    on cpu) built the target's packing under a report naming the family's, and a group name that no
    pack_groups gives packed nothing, in silence."""

    class Adjusts(Qwen3Builder):
        def adjust_layout(self, layout, options):
            if change is not None:
                return dataclasses.replace(layout, **change)

    with pytest.raises(BuilderError) as refused:
        build(model=str(REPO / "examples" / "tiny-qwen3"), ep="cpu", output=str(tmp_path / "o"), family=Adjusts)
    assert str(refused.value).startswith(f"Adjusts.adjust_layout {message}"), refused.value
    assert not (tmp_path / "o").exists()


class AlwaysBiased(DecoderBuilder):  # transformers' Qwen2 attention: q/k/v biases whatever config.json says
    attention_bias = True
    attention_out_bias = False
    reads_mlp_bias = False


def test_attention_bias_on_a_family_is_not_turned_off_by_config_json(checkpoint, tmp_path):
    """A family's attention_bias = True was only a default: a config.json that says attention_bias
    false (a Qwen2 fine-tune re-saved by another config class) turned the biases off, and the build
    was refused for q/k/v biases it did not read."""
    folder = checkpoint("qwen2", "float32", attention_bias=False)
    result = build(model=str(folder), precision="fp32", output=str(tmp_path / "o"), family=AlwaysBiased, verify=True)
    assert result.report["verify"]["status"] == "passed", result.report["verify"]


@pytest.mark.parametrize(
    "attributes, message",
    [
        ({"not_built": "model.visual."}, "not_built is 'model.visual.', not a tuple of names: write ('model.visual.',"),
        ({"reference_leaves_out": "mtp."}, "reference_leaves_out is 'mtp.', not a tuple of names"),
        ({"hidden_acts": "silu"}, "hidden_acts is 'silu', not a tuple of names: write ('silu',)"),
        ({"model_config": lambda self, config: None}, "model_config returned NoneType, not a dict"),
        ({"config_keys": {"scale": "number"}}, "config_keys['scale'] is 'number': give (checker, null allowed)"),
        ({"config_keys": {"head_dim": (int, False)}}, "config_keys['head_dim'] is (<class 'int'>, False): give"),
        # A list or None passed the check and failed inside the builder (str.startswith takes no list).
        ({"not_built": ["model.visual."]}, "not_built is ['model.visual.'], not a tuple of names"),
        ({"reference_leaves_out": ["mtp."]}, "reference_leaves_out is ['mtp.'], not a tuple of names"),
        ({"not_built": None}, "not_built is None, not a tuple of names"),
        ({"config_keys": None}, "config_keys is None, not a dict: give {key: (checker, null allowed)}"),
        # hidden_acts' example is an activation, not not_built's tensor prefix
        ({"hidden_acts": ["silu"]}, """hidden_acts is ['silu'], not a tuple of names: write ("silu",)"""),
    ],
)
def test_a_name_tuple_given_as_a_string_or_a_model_config_without_return_is_refused(tmp_path, attributes, message):
    """A string where a tuple of names goes (("model.visual.") without its comma) was read a character
    at a time: the report's note named "m*" tensors, and hidden_acts = "silu" was refused as writing
    what it names; a model_config that returned nothing fell back to config.json in silence; a
    config_keys entry that is no (checker, null allowed) failed inside the builder's code."""
    family = type("Misnamed", (Qwen3Builder,), attributes)
    with pytest.raises(BuilderError) as refused:
        build(model=str(REPO / "examples" / "tiny-qwen3"), precision="fp32", output=str(tmp_path / "o"), family=family)
    assert str(refused.value).startswith(f"Misnamed.{message}"), refused.value
    assert not (tmp_path / "o").exists()


def _layers_only(self, layer, suffix):  # the branch for layer None forgotten
    if layer is not None:
        return f"model.layers.{layer}.{suffix}"


def _whole_names_only(self, layer, suffix):  # the return of the layer branch forgotten
    if layer is None:
        return suffix
    f"model.layers.{layer}.{suffix}"


@pytest.mark.parametrize(
    "weight, message",
    [
        (_layers_only, "NoName.weight(None, 'model.embed_tokens.weight') returned None, not a tensor name"),
        (_whole_names_only, "NoName.weight(0, 'x') returned None, not a tensor name"),
        (lambda self, layer, suffix: Path(suffix), "NoName.weight(None, 'model.embed_tokens.weight') returned Posix"),
    ],
)
def test_a_weight_that_returns_no_tensor_name_is_refused_as_the_family_s(tmp_path, weight, message):
    """A weight() without return on one branch was met with "tensor None is missing from the checkpoint
    ... the checkpoint is incomplete (re-download it)", or with AttributeError inside the builder's code."""
    family = type("NoName", (Qwen3Builder,), {"weight": weight})
    with pytest.raises(BuilderError) as refused:
        build(model=str(REPO / "examples" / "tiny-qwen3"), precision="fp32", output=str(tmp_path / "o"), family=family)
    assert str(refused.value).startswith(message), refused.value
    assert "return the checkpoint's name as a str" in str(refused.value) and "re-download" not in str(refused.value)
    assert not (tmp_path / "o").exists()


class SaysGelu(Qwen3Builder):
    hidden_acts = ("gelu_pytorch_tanh",)


def test_hidden_acts_without_an_mlp_that_writes_them_is_refused(tmp_path):
    """hidden_acts = ("gelu_pytorch_tanh",) let the config through, and the default feed_forward
    wrote SiLU: a model of another activation, built without a word (--verify: max_abs 0.61)."""
    folder = tmp_path / "ckpt"
    shutil.copytree(REPO / "examples" / "tiny-qwen3", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_act": "gelu_pytorch_tanh"}))
    options = dict(model=str(folder), precision="fp32", show_progress=False)
    with pytest.raises(BuilderError, match=r"SaysGelu.hidden_acts is \('gelu_pytorch_tanh',\), but its feed_forward"):
        build(output=str(tmp_path / "o"), family=SaysGelu, **options)
    assert not (tmp_path / "o").exists()

    class WritesGelu(SaysGelu):
        def feed_forward(self, spec, i):
            return DenseMLP(act="gelu_tanh")

    class OwnActivation(SaysGelu):  # an activation() of its own is the family's word
        def feed_forward(self, spec, i):
            return dataclasses.replace(GeluOfItsOwn(), act="silu")

    for family in (WritesGelu, OwnActivation):
        result = build(output=str(tmp_path / family.__name__), family=family, verify=True, **options)
        assert result.report["verify"]["status"] == "passed", result.report["verify"]


@dataclasses.dataclass(frozen=True)
class GeluOfItsOwn(DenseMLP):
    def activation(self, em, x, name):
        return em.graph.op("FastGelu", [x], f"{name}/FastGelu", domain="com.microsoft")


def test_a_key_only_one_family_reads_is_that_family_s_to_check(tmp_path):
    """sliding_window_pattern was checked for every config as Gemma 3's positive integer, so a
    family of one's own for EXAONE 4 (which writes 0, or a string such as "LLLG") could not build
    a valid config ("fix or re-download config.json"). Gemma 3 checks it now; Phi-3's *_pdrop
    dropout keys are not named as unread."""
    from builder.kit.checkpoint import Checkpoint
    from support.synthetic import TINY_CONFIGS

    for value in (0, "LLLG"):
        folder = tmp_path / f"exaone-{value}"
        shutil.copytree(REPO / "examples" / "tiny-qwen3", folder)
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "sliding_window_pattern": value}))
        Checkpoint.open(str(folder))  # refused before any family was chosen
    gemma = dict(TINY_CONFIGS["gemma3"], sliding_window_pattern=0)
    with pytest.raises(BuilderError, match="sliding_window_pattern = 0 is not valid; it must be a positive integer"):
        hf_config.check_keys(Gemma3Builder.config_keys, gemma)
    assert hf_config.unread_keys({"embd_pdrop": 0.1, "resid_pdrop": 0.1, "attention_multiplier": 0.5}) == [
        "attention_multiplier"
    ]


class OwnBuildGraph(Qwen3Builder):
    """A build_graph of its own, as a family writes one for a model the hooks did not fit: the
    base's walk, less what `leaves_out` names."""

    leaves_out = ""

    def build_graph(self, graph, progress):
        from builder.kit.blocks import Emitter, embedding, left_padding
        from builder.kit.blocks import attention as attention_io

        plan, spec = self.plan, self.plan.spec
        self.proj = self.projections(graph, self.checkpoint, plan.io_dtype, plan.accuracy_level)
        em = self.emitter = Emitter(graph, self.proj, plan, self.weight)
        attention_io.declare_inputs(em)
        for i in range(spec.num_layers):
            if self.leaves_out != "declare_io":
                self.mixer(spec, i).declare_io(em, i)
        attention_io.attention_metadata(em, self.rotary(spec))
        if plan.left_padding and self.leaves_out != "left_padding":
            left_padding.prepare(em, whole_model=True)
        lm_head = embedding.lm_head_weight(em)
        residual = self.embed(em, lm_head)
        hidden = self.input_norm(em, residual)
        for i in range(spec.num_layers):
            hidden, residual = self.decoder_layer(em, i, hidden, residual)
        self.logits(em, hidden, lm_head)


class ForgetsDeclareIo(OwnBuildGraph):
    leaves_out = "declare_io"


class ForgetsLeftPadding(OwnBuildGraph):
    leaves_out = "left_padding"


def test_a_build_graph_of_one_s_own_is_checked_as_the_base_one_is(tmp_path):
    """A family that replaced build_graph skipped the checks the base one ends with: without a
    block's declare_io the graph read past_key_values that no input defined, and was published (it
    did not load); without left_padding.prepare a transformers.js build read left-padded batches
    wrong (a row 4.25 off). Each is refused now, and the walk itself builds what the base does."""
    options = dict(model=str(REPO / "examples" / "tiny-qwen3"), precision="fp32", show_progress=False)
    result = build(output=str(tmp_path / "own"), family=OwnBuildGraph, verify=True, **options)
    assert result.report["verify"]["status"] == "passed", result.report["verify"]
    with pytest.raises(BuilderError, match=r"node /model/layers.0/attn/GroupQueryAttention .* reads 'past_key_values"):
        build(output=str(tmp_path / "io"), family=ForgetsDeclareIo, **options)
    with pytest.raises(BuilderError, match="ForgetsLeftPadding: its build_graph does not prepare the graph for left"):
        build(output=str(tmp_path / "tjs"), family=ForgetsLeftPadding, format="transformers.js", **options)
    build(output=str(tmp_path / "genai"), family=ForgetsLeftPadding, **options)  # genai folders pad on the right
    assert sorted(p.name for p in tmp_path.iterdir()) == ["genai", "own"]


class ReadsItsPlanTooEarly(Qwen3Builder):
    def make_spec(self, config, target=None):
        if self.options.precision == "fp32":
            pass
        return super().make_spec(config, target)


class ReadsItsOptionsInMakeSpec(Qwen3Builder):
    def make_spec(self, config, target=None):
        assert self.build_options.precision == "int4"
        return super().make_spec(config, target)


def test_a_hook_that_reads_the_plan_while_it_is_made_is_told_what_to_read(tmp_path):
    """self.options in make_spec ended in a bare RecursionError (the plan making itself)."""
    options = dict(model=str(REPO / "examples" / "tiny-qwen3"), precision="int4", show_progress=False)
    with pytest.raises(BuilderError, match=r"ReadsItsPlanTooEarly: self.plan, self.spec and self.options are not"):
        build(output=str(tmp_path / "a"), family=ReadsItsPlanTooEarly, **options)
    build(output=str(tmp_path / "b"), family=ReadsItsOptionsInMakeSpec, **options)


def _fused_qkv_checkpoint(folder: Path) -> Path:
    """tiny-qwen3 with each layer's q/k/v weights stored as one qkv_proj tensor (Phi-3's way)."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(REPO / "examples" / "tiny-qwen3", folder)
    tensors = load_file(folder / "model.safetensors")
    for i in range(2):
        parts = [tensors.pop(f"model.layers.{i}.self_attn.{p}_proj.weight") for p in "qkv"]
        tensors[f"model.layers.{i}.self_attn.qkv_proj.weight"] = np.concatenate(parts)
    save_file(tensors, folder / "model.safetensors")
    return folder


class FusedQkv(Qwen3Builder):
    rows = {"q": (0, 128), "k": (128, 192), "v": (192, 256)}  # 4 heads x 32, then 2 x 32 twice

    def weight(self, layer, suffix):
        from builder.kit.linear import RowSlice

        kind = suffix.split(".")[-2].removesuffix("_proj") if suffix.startswith("self_attn.") else None
        if kind in self.rows and suffix.endswith("_proj.weight"):
            start, stop = self.rows[kind]
            return RowSlice(f"model.layers.{layer}.self_attn.qkv_proj.weight", start, stop, (256, 64))
        return super().weight(layer, suffix)


class FusedQkvVerified(FusedQkv):
    @classmethod
    def prepare_reference(cls, model, options, io_dtype=None):
        """transformers' Qwen3 has q/k/v Linears, which this checkpoint lacks: load them from qkv_proj,
        as docs/architecture.md says a family that reads weights under other names does."""
        import torch
        from safetensors.numpy import load_file

        tensors = load_file(Path(model.config._name_or_path) / "model.safetensors")
        for i, layer in enumerate(model.model.layers):
            fused = torch.from_numpy(tensors[f"model.layers.{i}.self_attn.qkv_proj.weight"].astype(np.float32))
            for kind, (start, stop) in cls.rows.items():
                getattr(layer.self_attn, f"{kind}_proj").weight.copy_(fused[start:stop])


class FusedQkvReadingKTwice(FusedQkv):
    rows = {**FusedQkv.rows, "v": FusedQkv.rows["k"]}  # the slip: v takes k's rows


def test_a_tensor_read_in_part_is_refused_with_the_rows_never_read(tmp_path):
    """The unread-tensor check counted a tensor as read once any of its rows was: a family reading
    a fused qkv_proj in RowSlices, with v taking k's rows, built a wrong model without a word."""
    checkpoint = _fused_qkv_checkpoint(tmp_path / "ckpt")
    options = dict(model=str(checkpoint), precision="fp32", show_progress=False)
    right = build(output=str(tmp_path / "right"), family=FusedQkv, **options)
    plain = build(**{**options, "model": str(REPO / "examples" / "tiny-qwen3")}, output=str(tmp_path / "plain"))
    assert right.data_path.read_bytes() == plain.data_path.read_bytes()  # the same weights, in the same places
    with pytest.raises(
        BuilderError,
        match=r"model.layers.0.self_attn.qkv_proj.weight \(rows 192-256 of 256 never read\), "
        r"model.layers.1.self_attn.qkv_proj.weight \(rows 192-256",
    ):
        build(output=str(tmp_path / "wrong"), family=FusedQkvReadingKTwice, **options)
    assert not (tmp_path / "wrong").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "plain", "right"]


@pytest.fixture(scope="module")
def phi3(tmp_path_factory) -> Path:
    """Phi3ForCausalLM: Llama's layer with q/k/v in one qkv_proj and gate/up in one gate_up_proj."""
    root = tmp_path_factory.mktemp("phi3")
    return save_transformers_checkpoint(root / "ckpt", "Phi3Config", "Phi3ForCausalLM", head_dim=16)


class Phi3Builder(LlamaBuilder):
    genai_type = "phi3"

    def weight(self, layer, suffix):
        from builder.kit.linear import RowSlice

        hidden, inter, heads, kv = 64, 128, 4, 2
        q, k = heads * 16, kv * 16
        slices = {
            "self_attn.q_proj.weight": ("self_attn.qkv_proj.weight", 0, q, q + 2 * k),
            "self_attn.k_proj.weight": ("self_attn.qkv_proj.weight", q, q + k, q + 2 * k),
            "self_attn.v_proj.weight": ("self_attn.qkv_proj.weight", q + k, q + 2 * k, q + 2 * k),
            "mlp.gate_proj.weight": ("mlp.gate_up_proj.weight", 0, inter, 2 * inter),
            "mlp.up_proj.weight": ("mlp.gate_up_proj.weight", inter, 2 * inter, 2 * inter),
        }
        if layer is not None and suffix in slices:
            tensor, start, stop, rows = slices[suffix]
            return RowSlice(f"model.layers.{layer}.{tensor}", start, stop, (rows, hidden))
        return super().weight(layer, suffix)


@pytest.mark.parametrize("precision", ["fp32", "int4", "int8"])
def test_verify_dequantizes_a_fused_linear_part_by_part(phi3, tmp_path, precision):
    """transformers holds Phi-3's qkv_proj and gate_up_proj as one Linear each, which the plan's
    formats (by projection: q_proj, gate_proj, ...) do not name: verify left them float, so a
    right int4 build failed (nmse 0.053). Each part's rows are now dequantized in its format."""
    result = build(
        model=str(phi3),
        output=str(tmp_path / precision),
        precision=precision,
        verify=True,
        family=Phi3Builder,
        float_layers=["model.layers.1.self_attn.k_proj"] if precision == "int4" else [],  # a part of its own
        show_progress=False,
    )
    verify = result.report["verify"]
    assert verify["status"] == "passed", verify
    assert verify["nmse"] < (1e-10 if precision == "fp32" else 1e-6), verify


@pytest.mark.parametrize("precision", ["int4", "int8"])
def test_weights_a_family_loads_into_the_reference_are_dequantized(tmp_path, precision):
    """prepare_reference ran after verify had dequantized the Linears, so weights a family loaded
    under transformers' names stayed float, and a right int4 build failed verify (nmse 0.105)."""
    checkpoint = _fused_qkv_checkpoint(tmp_path / "ckpt")
    result = build(
        model=str(checkpoint),
        output=str(tmp_path / "o"),
        precision=precision,
        verify=True,
        family=FusedQkvVerified,
        show_progress=False,
    )
    assert result.report["verify"]["status"] == "passed", result.report["verify"]
    assert result.report["verify"]["nmse"] < 1e-6, result.report["verify"]
