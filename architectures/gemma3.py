"""Gemma 3 text (Gemma3ForCausalLM, model_type gemma3_text), and the text model of the 4B-27B
checkpoints (Gemma3ForConditionalGeneration), built without their vision tower.

What differs from Llama, as transformers 5.23's modeling_gemma3.py computes it:

- RMSNorm scales by (1 + weight), the per-head q_norm/k_norm included: every norm
  weight is written as 1 + w (spec.norm_offset), added in float32 as transformers does before the cast.
- Four norms per layer. post_attention_layernorm and post_feedforward_layernorm
  normalize a block's output *before* it is added to the residual stream, so they
  are plain SimplifiedLayerNormalization nodes; the residual adds ride on the norms
  that follow them (pre_feedforward_layernorm, then the next input_layernorm or the
  final norm) as SkipSimplifiedLayerNormalization:

      x -> SLN(input_layernorm) -> attention -> SLN(post_attention_layernorm) -+
      residual -----------------------------------------------------------------+-> SkipSLN(pre_feedforward)
         -> MLP -> SLN(post_feedforward_layernorm) -> SkipSLN(next input_layernorm or model.norm)

- Embeddings are multiplied by sqrt(hidden_size), cast to the activation dtype first
  (transformers: embed_scale.to(weight.dtype)). The lm_head, tied as in every Gemma 3,
  uses the unscaled table.
- MLP activation gelu_pytorch_tanh: com.microsoft FastGelu (the tanh form; on ORT 1.31
  CPU it is within 1e-6 of torch's gelu(approximate="tanh") in fp32, like ONNX Gelu-20).
- Attention scale query_pre_attn_scalar ** -0.5, not head_dim ** -0.5.
- Sliding-window ("sliding_attention") layers use GroupQueryAttention's local_window_size
  (= sliding_window, as for Mistral) and their own rotary caches from rope_local_base_freq;
  global layers use rope_theta with the config's rope scaling (linear on 4B-27B).

attn_logit_softcapping, final_logit_softcapping (None in every Gemma 3 config),
bidirectional attention (EmbeddingGemma) and attention biases are refused.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import numpy as np

from architectures.base import DecoderBuilder
from architectures.registry import register
from builder.kit import hf_config
from builder.kit.blocks import Attention, DenseMLP, Emitter
from builder.kit.errors import BuilderError
from builder.kit.layout import Layout
from builder.kit.options import BuildOptions
from builder.kit.rope import RopeSpec
from builder.kit.spec import FULL_ATTENTION, SLIDING_ATTENTION, DecoderSpec
from builder.kit.spec import layer_types as resolve_layer_types
from builder.kit.targets import Target

# Gemma3TextConfig's defaults for keys a config.json may leave out (transformers 5.23).
CONFIG_DEFAULTS = {
    "head_dim": 256,
    "num_key_value_heads": 4,
    "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "query_pre_attn_scalar": 256,
    "sliding_window": 4096,
    "rope_theta": 1_000_000.0,
    "rope_local_base_freq": 10_000.0,
    # The 4B-27B checkpoints' text_config leaves even some sizes to the defaults.
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 26,
    "num_attention_heads": 8,
    "vocab_size": 262_208,
}
SLIDING, FULL = SLIDING_ATTENTION, FULL_ATTENTION


@dataclass
class Gemma3Spec(DecoderSpec):
    local_rope: RopeSpec | None = None  # rotary of the sliding layers (spec.rope: the global layers')


def layer_types(config: dict, num_layers: int) -> list[str]:
    """config.json's layer_types, else transformers' default from sliding_window_pattern
    (every pattern-th layer global)."""
    pattern = int(config.get("sliding_window_pattern") or 6)
    default = [SLIDING if (i + 1) % pattern else FULL for i in range(num_layers)]
    return resolve_layer_types(config, num_layers, default, {SLIDING, FULL})


def rope_specs(config: dict, head_dim: int) -> tuple[RopeSpec, RopeSpec]:
    """(global, local) rotary parameters, resolved as Gemma3TextConfig does: rope_parameters
    keyed by layer type (transformers 5 files), else rope_theta + rope_scaling for the
    global layers and rope_local_base_freq for the local ones (hub files)."""
    params = config.get("rope_parameters") or {}
    if params and not set(params) <= {SLIDING, FULL}:
        raise BuilderError(
            "config.json: Gemma 3's rope_parameters must be keyed by layer type "
            f"({FULL!r}, {SLIDING!r}); got keys {sorted(params)}"
        )
    full = dict(params.get(FULL) or {"rope_type": "default"})
    full.update(config.get("rope_scaling") or {})
    full.setdefault("rope_theta", config["rope_theta"])
    local = dict(params.get(SLIDING) or {"rope_type": "default"})
    local.setdefault("rope_theta", config["rope_local_base_freq"])
    specs = []
    for kind, p in ((FULL, full), (SLIDING, local)):
        if p.get("rope_type", p.get("type")) == "yarn" and p.get("truncate", True) is not True:
            # transformers (5.25 _compute_yarn_parameters) reads truncate from the top of
            # rope_parameters, which Gemma 3 keys by layer type, so it truncates whatever this says.
            raise BuilderError(
                f"config.json: Gemma 3 yarn rope scaling with truncate {p['truncate']!r} ({kind} layers): "
                "transformers ignores truncate in Gemma 3's per-layer-type rope and truncates anyway, so "
                "the model it runs is not the one config.json describes; remove truncate to build that one"
            )
        flat = {"rope_parameters": p, "max_position_embeddings": config["max_position_embeddings"]}
        try:
            spec = RopeSpec.from_config(flat, head_dim)
        except BuilderError as e:
            raise BuilderError(f"{e} ({kind} layers)") from None
        if spec.rotary_dim != head_dim:
            # transformers' Gemma 3 makes cos/sin for that share of the head and then fails to
            # apply them to the whole head (5.25: a size mismatch), so no model runs this config.
            raise BuilderError(
                f"config.json: partial_rotary_factor inside Gemma 3's rope parameters ({kind} layers: "
                f"{spec.rotary_dim} of head_dim {head_dim}): Gemma 3 rotates the whole head, and transformers "
                "cannot run this config either; remove partial_rotary_factor"
            )
        specs.append(spec)
    return specs[0], specs[1]


@register("Gemma3ForCausalLM")
class Gemma3Builder(DecoderBuilder):
    genai_type = "gemma3_text"  # onnxruntime-genai 0.18's name for the text-only model
    hidden_acts = ("gelu_pytorch_tanh",)  # config.json hidden_activation, checked in make_spec
    # Gemma 3's alone (EXAONE 4 writes 0 or a string such as "LLLG" under the same name)
    config_keys = {"sliding_window_pattern": (hf_config.integer(1), True)}
    fp16_overflow = (
        "Gemma 3's residual stream is reported to exceed fp16's range on real checkpoints "
        "(transformers#36822; onnxruntime#26732: fp16 and q4f16 Gemma 3 give invalid outputs on WebGPU)"
    )
    qk_norm = True

    # ---- config -------------------------------------------------------------

    def make_spec(self, config: dict, target: Target | None = None) -> Gemma3Spec:
        config = {**CONFIG_DEFAULTS, **config}
        act = config["hidden_activation"]
        if act != "gelu_pytorch_tanh":
            raise BuilderError(
                f"config.json: hidden_activation {act!r} is not supported for Gemma 3 (only gelu_pytorch_tanh)"
            )
        for key in ("attn_logit_softcapping", "final_logit_softcapping"):
            if config.get(key) is not None:
                raise BuilderError(
                    f"config.json: {key} = {config[key]!r} is not implemented for Gemma 3 "
                    "(Gemma 3 checkpoints set it to null)"
                )
        if config.get("use_bidirectional_attention"):
            raise BuilderError(
                "config.json: use_bidirectional_attention is set (an embedding model); "
                "only causal Gemma 3 decoders are supported"
            )
        if config.get("attention_bias"):
            raise BuilderError("config.json: attention_bias is true; Gemma 3 with q/k/v/o biases is not supported")
        scalar = config["query_pre_attn_scalar"]
        if not isinstance(scalar, (int, float)) or isinstance(scalar, bool) or scalar <= 0:
            raise BuilderError(f"config.json: query_pre_attn_scalar = {scalar!r} must be a positive number")

        # The spec reads a flat rope config; Gemma's per-layer-type rotary is resolved here.
        base = {k: v for k, v in config.items() if k not in ("rope_parameters", "rope_scaling")}
        spec = Gemma3Spec.from_config(base, qk_norm=True, attention_bias=False, norm_offset=1.0)
        spec.rope, spec.local_rope = rope_specs(config, spec.head_dim)
        spec.attention_scale = float(scalar) ** -0.5

        types = layer_types(config, spec.num_layers)
        # Sliding layers get the window (GQA local_window_size, as for Mistral) and the local rope.
        spec.sliding_layers = tuple(i for i, t in enumerate(types) if t == SLIDING)
        window = config.get("sliding_window")
        spec.sliding_window = None
        if spec.sliding_layers:
            if not isinstance(window, int) or isinstance(window, bool) or window <= 0:
                raise BuilderError(
                    f"config.json: sliding_window = {window!r} must be a positive integer "
                    f"(layers {list(spec.sliding_layers)} are sliding_attention)"
                )
            spec.sliding_window = window
        return spec

    def adjust_layout(self, layout: Layout, options: BuildOptions) -> Layout:
        if options.silu != "auto":
            raise BuilderError(
                f"--silu {options.silu}: Gemma 3's MLP has no SiLU (it is gelu_pytorch_tanh, "
                "written as FastGelu); leave --silu at auto"
            )
        return replace(
            layout, silu="none", notes=layout.notes + ("MLP activation gelu_pytorch_tanh -> com.microsoft FastGelu",)
        )

    # ---- blocks -------------------------------------------------------------

    def mixer(self, spec: Gemma3Spec, i: int) -> Attention:
        return Attention(qk_norm=True, local_rope_layers=spec.sliding_layers)

    def feed_forward(self, spec: Gemma3Spec, i: int) -> DenseMLP:
        return DenseMLP(act="gelu_tanh")

    def rotary(self, spec: Gemma3Spec) -> dict:
        """cos_cache/sin_cache from spec.rope for the global layers, *_local for the sliding ones."""
        return {"global": spec.rope, **({"local": spec.local_rope} if spec.sliding_layers else {})}

    # ---- the graph ----------------------------------------------------------

    def decoder_layer(self, em: Emitter, i: int, hidden: str, residual: str) -> tuple[str, str]:
        spec = em.spec
        attn = self.post_norm(em, i, self.mix(em, i, hidden), "post_attention_layernorm")
        hidden, residual = em.skip_norm(
            attn,
            residual,
            em.norm_weight(i, "pre_feedforward_layernorm.weight"),
            f"/model/layers.{i}/pre_feedforward_layernorm",
        )
        mlp = self.post_norm(em, i, self.feed_forward(spec, i)(em, i, hidden), "post_feedforward_layernorm")
        return em.skip_norm(mlp, residual, *self.next_norm(em, i))

    def post_norm(self, em: Emitter, i: int, x: str, norm: str) -> str:
        """A block output's own RMSNorm, before the residual add."""
        return em.rms_norm(x, em.norm_weight(i, f"{norm}.weight"), f"/model/layers.{i}/{norm}")

    def embed(self, em: Emitter, lm_head) -> str:
        table = super().embed(em, lm_head)
        scale = em.graph.constant(np.float32(math.sqrt(em.spec.hidden_size)), dtype=em.plan.io_dtype)
        return em.graph.op("Mul", [table, scale], "/model/embed_tokens/Mul")


# Where the text model's tensors are: the hub's files (google/gemma-3-4b-it) keep transformers 4's
# names, transformers 5 saves them under model.language_model.
HUB_PREFIX, SAVED_PREFIX = "language_model.model.", "model.language_model."


# Gemma3TextConfig's token ids, where neither level of the config names one.
TOKEN_DEFAULTS = {"bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0}


def text_view(config: dict) -> dict:
    """The text model's config, flat: text_config's keys over the top level's over Gemma3TextConfig's
    defaults, except the token ids, which transformers takes from the top level first
    (GenerationConfig.from_model_config): transformers 5 saves text_config's defaults (eos 1) beside
    the top level's [1, 106], and 106 ends a chat turn."""
    top = {k: v for k, v in config.items() if k not in ("text_config", "vision_config")}
    text = config.get("text_config") or {}
    view = {**CONFIG_DEFAULTS, **top, **text}
    for key, default in TOKEN_DEFAULTS.items():
        view[key] = next((c[key] for c in (top, text) if c.get(key) is not None), default)
    return view


@register("Gemma3ForConditionalGeneration")
class Gemma3VLBuilder(Gemma3Builder):
    """The 4B-27B checkpoints: the text model beside a SigLIP vision tower and its projector. The
    folder is the text model (what onnxruntime-genai runs as gemma3_text); the vision tensors are
    left out, as Qwen3.5's are."""

    not_built = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.")
    not_built_names = {
        **dict.fromkeys(("vision_tower.", "model.vision_tower."), "the vision tower"),
        **dict.fromkeys(("multi_modal_projector.", "model.multi_modal_projector."), "the multi-modal projector"),
    }

    @functools.cached_property
    def text_prefix(self) -> str:
        checkpoint = getattr(self, "checkpoint", None)  # none where only names are asked for
        if checkpoint is None or checkpoint.has(f"{SAVED_PREFIX}embed_tokens.weight"):
            return SAVED_PREFIX
        return HUB_PREFIX if checkpoint.has(f"{HUB_PREFIX}embed_tokens.weight") else SAVED_PREFIX

    def weight(self, layer: int | None, suffix: str) -> str:
        if layer is not None:
            return f"{self.text_prefix}layers.{layer}.{suffix}"
        if suffix.startswith("model."):
            return self.text_prefix + suffix[len("model.") :]
        if suffix == "lm_head.weight" and self.text_prefix == HUB_PREFIX:
            return "language_model.lm_head.weight"
        return suffix

    def model_config(self, config: dict) -> dict:
        return text_view(config)  # genai_config.json's token ids, transformers.js' config.json

    def make_spec(self, config: dict, target: Target | None = None) -> Gemma3Spec:
        return super().make_spec(text_view(config), target)
