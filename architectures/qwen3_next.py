"""Qwen3-Next (Qwen3NextForCausalLM): Qwen3.5-MoE's layers, from fused checkpoints.

What differs from Qwen3.5-MoE (architectures/qwen3_5.py), as transformers 5's modeling_qwen3_next.py
computes it: linear attention's projections are stored fused and interleaved per key-head group
(in_proj_qkvz, in_proj_ba; builder.kit.blocks.linear_attention reads them into the same packed rows as
Qwen3.5's), sparse layers follow decoder_sparse_step and mlp_only_layers, and norm_topk_prob says
whether the top-k weights are renormalized. onnxruntime-genai 0.18 has no qwen3_next type; qwen3_5_text
runs the same decoder inputs and outputs.
"""

from __future__ import annotations

from architectures.qwen3_5 import Qwen35MoeBuilder
from architectures.registry import register
from builder.kit.blocks import MoeSpec


@register("Qwen3NextForCausalLM")
class Qwen3NextBuilder(Qwen35MoeBuilder):
    genai_type = "qwen3_5_text"
    fused_linear = True

    def make_moe_spec(self, config: dict, num_layers: int) -> MoeSpec:
        return MoeSpec.from_config({"norm_topk_prob": True, **config}, num_layers)
