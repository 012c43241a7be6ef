"""Qwen3 (Qwen3ForCausalLM): Llama plus a per-head RMSNorm on Q and K.

The norm sits between the projection and attention; the layout policy decides
whether it is a separate node (BranchwiseRMSNorm or Reshape/SLN/Reshape) or
GroupQueryAttention's q_norm_weight/k_norm_weight inputs.
"""

from architectures.base import DecoderBuilder
from architectures.registry import register


@register("Qwen3ForCausalLM")
class Qwen3Builder(DecoderBuilder):
    genai_type = "qwen3"
    qk_norm = True
