"""Qwen3.5 (Qwen3_5ForConditionalGeneration, Qwen3_5ForCausalLM, Qwen3_5MoeForConditionalGeneration,
Qwen3_5MoeForCausalLM).

As transformers 5's modeling_qwen3_5(_moe).py computes it. `layer_types` (else `full_attention_interval`,
default 4: every 4th layer is full attention) picks each layer's mixer:
- linear_attention: builder.kit.blocks.linear_attention.GatedDeltaNet (one packed in_proj_qkvz
  MatMul(NBits), one float in_proj_ba, from Qwen3.5's split tensors or Qwen3-Next's fused ones).
- full_attention: builder.kit.blocks.gated_attention.GatedAttention (q_proj holds a sigmoid output gate
  per head; per-head Q/K RMSNorm; partial rotary, partial_rotary_factor default 0.25; the text positions
  of mRoPE are equal on all three axes, which is plain RoPE).
Every RMSNorm scales by (1 + w) (spec.norm_offset) except linear attention's gated norm (a plain weight).
MoE (Qwen3.5-MoE: every layer): the Qwen3-MoE experts block plus a shared expert scaled by
sigmoid(shared_expert_gate x).

ConditionalGeneration checkpoints keep the text model under `model.language_model.` next to a vision
tower (`model.visual.*`) and an MTP head (`mtp.*`): both are skipped (text only), and the build report
says so. cpu and webgpu (the plugin EP), ONNX Runtime >= 1.31, run every op here (builder.kit.targets
"linear_attention"); the MoE families are cpu only, like Qwen3-MoE ("moe_swiglu").
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from architectures.base import DecoderBuilder
from architectures.qwen3_moe import moe_reference
from architectures.registry import register
from builder.kit.blocks import DenseMLP, MoeSpec, SparseMoE
from builder.kit.blocks.gated_attention import GatedAttention
from builder.kit.blocks.linear_attention import GatedDeltaNet, LinearAttentionDims
from builder.kit.errors import BuilderError
from builder.kit.layout import Layout
from builder.kit.options import BuildOptions
from builder.kit.spec import FULL_ATTENTION, LINEAR_ATTENTION, DecoderSpec, layer_types
from builder.kit.targets import Target


@dataclass
class Qwen35Spec(DecoderSpec):
    linear: LinearAttentionDims | None = None
    moe: MoeSpec | None = None
    shared_expert_size: int = 0


LINEAR_NODES = "CausalConvWithState/LinearAttention/LinearAttentionGate nodes"
TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def text_config(config: dict) -> dict:
    """The text model's config, flat: ConditionalGeneration nests it under text_config, whose keys win,
    except the token ids: transformers takes those from the top level first (GenerationConfig.
    from_model_config; a top-level eos 478 beside text_config's 479 generates with 478)."""
    nested = config.get("text_config") or {}
    text = {**config, **nested}
    text.pop("text_config", None)
    for key in TOKEN_IDS:
        value = next((c[key] for c in (config, nested) if c.get(key) is not None), None)
        if value is not None:
            text[key] = value
    rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
    # transformers' Qwen3_5TextConfig / Qwen3NextConfig: partial_rotary_factor defaults to 0.25.
    text["partial_rotary_factor"] = rope.get("partial_rotary_factor", text.get("partial_rotary_factor", 0.25))
    text.setdefault("head_dim", 256)
    return text


class SharedExpertMoE:
    """Sparse experts plus a dense shared expert scaled by sigmoid(shared_expert_gate x)."""

    def __init__(self, moe: MoeSpec, shared_size: int):
        self.experts, self.shared, self.size = SparseMoE(moe), DenseMLP(prefix="mlp.shared_expert"), shared_size

    def modules(self, i: int) -> list[str]:
        return self.experts.modules(i) + self.shared.modules(i)

    def pack_groups(self, i: int) -> list:
        return self.shared.pack_groups(i)

    def __call__(self, em, i: int, x: str) -> str:
        g, base = em.graph, f"/model/layers.{i}/shared_expert"
        routed = self.experts(em, i, x)
        shared = self.shared(em, i, x, size=self.size, base=base)
        gate_w = em.weight(i, "mlp.shared_expert_gate.weight")
        gate_w = g.initializer(gate_w, np.ascontiguousarray(em.proj.float_rows([gate_w], [(1, em.spec.hidden_size)]).T))
        gate = g.op("Sigmoid", [g.op("MatMul", [x, gate_w], f"{base}/gate/MatMul")], f"{base}/gate/Sigmoid")
        return g.op("Add", [routed, g.op("Mul", [shared, gate], f"{base}/gate/Mul")], f"{base}/Add")


@register("Qwen3_5ForCausalLM")
class Qwen35Builder(DecoderBuilder):
    genai_type = "qwen3_5_text"
    # Qwen3_5TextConfig's (head_dim 256: text_config() sets it, for the outputs' config too)
    config_defaults = {"max_position_embeddings": 32768, "num_key_value_heads": 4}
    qk_norm = True
    partial_rotary = True  # a quarter of each head by default (text_config)
    reads_mlp_bias = False  # transformers' Qwen3.5 and Qwen3-Next MLPs have no biases
    fused_linear = False  # checkpoint layout of the linear-attention projections (Qwen3-Next: fused)
    text_prefix = "model."  # the text model's tensors (ConditionalGeneration: model.language_model.)
    not_built = ("model.visual.", "mtp.")
    not_built_names = {"model.visual.": "the vision tower", "mtp.": "the multi-token-prediction head"}
    reference_leaves_out = not_built  # transformers' _keys_to_ignore_on_load_unexpected

    def weight(self, layer: int | None, suffix: str) -> str:
        if layer is not None:
            return f"{self.text_prefix}layers.{layer}.{suffix}"
        return self.text_prefix + suffix[len("model.") :] if suffix.startswith("model.") else suffix

    def model_config(self, config: dict) -> dict:
        return self.text_config(config)  # genai_config.json reads the token ids from it

    def make_spec(self, config: dict, target: Target | None = None) -> Qwen35Spec:
        text = self.text_config(config)
        base = super().make_spec(text, target)
        default = [
            FULL_ATTENTION if (i + 1) % int(text.get("full_attention_interval", 4)) == 0 else LINEAR_ATTENTION
            for i in range(base.num_layers)
        ]
        types = layer_types(text, base.num_layers, default, {FULL_ATTENTION, LINEAR_ATTENTION})
        spec = Qwen35Spec(
            **{**base.__dict__, "norm_offset": 1.0, "layer_types": tuple(types)},
            linear=LinearAttentionDims.from_config(text),
            moe=self.make_moe_spec(text, base.num_layers),
            shared_expert_size=int(text.get("shared_expert_intermediate_size", 0) or 0),
        )
        if target is not None and not target.supports("linear_attention"):
            raise BuilderError(
                f"{self.architectures[0]} builds for {target.supported_where('linear_attention')}: its "
                f"{LINEAR_NODES} were verified on those kernels only; got -e {target.ep} with {target.runtime}"
            )
        if FULL_ATTENTION in types and (spec.rope.rotary_dim // 2) % 8:
            raise BuilderError(
                f"config.json: head_dim {spec.head_dim} x partial_rotary_factor gives "
                f"{spec.rope.rotary_dim} rotary dims; GroupQueryAttention needs half of them to be "
                "a multiple of 8 (every released Qwen3.5 has 64)"
            )
        return spec

    def text_config(self, config: dict) -> dict:
        return text_config(config)

    def make_moe_spec(self, config: dict, num_layers: int) -> MoeSpec | None:
        return None

    def mixer(self, spec: Qwen35Spec, i: int):
        if spec.layer_types[i] == LINEAR_ATTENTION:
            return GatedDeltaNet(spec.linear, self.fused_linear)
        return GatedAttention(qk_norm=True)

    def feed_forward(self, spec: Qwen35Spec, i: int):
        if spec.moe is None or i not in spec.moe.sparse_layers:
            return DenseMLP()
        if spec.shared_expert_size:
            return SharedExpertMoE(spec.moe, spec.shared_expert_size)
        return SparseMoE(spec.moe)

    def adjust_layout(self, layout: Layout, options: BuildOptions) -> Layout:
        if options.head_norm == "auto" and layout.head_norm == "reshape-sln":
            if Target.from_options(options).supports("branchwise_rmsnorm"):
                # Qwen3.5-0.8B int4 on the 2-core cpu: all per-head norms as BranchwiseRMSNorm
                # decoded 1.016x Reshape/SimplifiedLayerNormalization/Reshape (5/5 rounds),
                # prefill 0.98x the time (docs/packing.md#cpu); Qwen3 measured the other way.
                layout = replace(
                    layout,
                    head_norm="branchwise",
                    notes=layout.notes + ("head_norm auto -> branchwise (docs/packing.md#cpu, Qwen3.5)",),
                )
        return layout

    @classmethod
    def prepare_reference(cls, model, options: BuildOptions, io_dtype=np.float32) -> None:
        # The float Linears (linear attention's b/a, the shared-expert gate) are verify's to round.
        moe_reference(model, options, io_dtype)


@register("Qwen3_5ForConditionalGeneration")
class Qwen35VLBuilder(Qwen35Builder):
    """The released checkpoints: the text model under model.language_model., a vision tower and an MTP
    head beside it (both skipped)."""

    text_prefix = "model.language_model."


@register("Qwen3_5MoeForCausalLM")
class Qwen35MoeBuilder(Qwen35Builder):
    """Every layer's MLP sparse, with a shared expert. Registered for the text-only checkpoints
    (model.*, config model_type qwen3_5_moe_text, as transformers' save_pretrained writes them)."""

    genai_type = "qwen3_5_moe_text"
    # Qwen3_5MoeTextConfig's (Qwen3NextConfig's alike)
    config_defaults = {"max_position_embeddings": 32768, "num_key_value_heads": 2}

    def text_config(self, config: dict) -> dict:
        text = text_config(config)
        # Qwen3.5-MoE configs have no dense MLP size (every layer is sparse); the spec wants one.
        text.setdefault("intermediate_size", text.get("moe_intermediate_size") or 1)
        return text

    def make_moe_spec(self, config: dict, num_layers: int) -> MoeSpec:
        # Every layer sparse; the router always renormalizes the top-k weights (Qwen3VLMoeTextTopKRouter).
        spec = MoeSpec.from_config(
            {**config, "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": []}, num_layers
        )
        if not spec.sparse_layers:
            raise BuilderError("config.json: num_experts must be positive for Qwen3.5-MoE")
        return spec

    def make_spec(self, config: dict, target: Target | None = None) -> Qwen35Spec:
        # Before the linear-attention check, which would send a cuda build to webgpu (and a cpu one
        # below 1.31 too): the MoE nodes narrow it to cpu, at the version both kinds of node need.
        if target is not None and not (target.supports(target.moe_feature) and target.supports("linear_attention")):
            raise BuilderError(target.moe_refusal(self.architectures[0], also=("linear_attention", LINEAR_NODES)))
        return super().make_spec(config, target)


@register("Qwen3_5MoeForConditionalGeneration")
class Qwen35MoeVLBuilder(Qwen35MoeBuilder):
    text_prefix = "model.language_model."
