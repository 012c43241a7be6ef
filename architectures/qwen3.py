"""Qwen3 (Qwen3ForCausalLM): Llama plus a per-head RMSNorm on Q and K, and Qwen2's optional window.

The norm sits between the projection and attention; the layout policy decides
whether it is a separate node (BranchwiseRMSNorm or Reshape/SLN/Reshape) or
GroupQueryAttention's q_norm_weight/k_norm_weight inputs.
"""

from architectures.base import DecoderBuilder
from architectures.qwen2 import qwen_sliding_window
from architectures.registry import register
from builder.kit.spec import DecoderSpec
from builder.kit.targets import Target


@register("Qwen3ForCausalLM")
class Qwen3Builder(DecoderBuilder):
    genai_type = "qwen3"
    qk_norm = True
    reads_mlp_bias = False  # Qwen3MLP (and Qwen3-MoE's) has no biases whatever config.json says

    window_on_every_layer = False  # Qwen3-MoE's attention takes the window on every layer
    config_defaults = {"max_position_embeddings": 32768, "num_key_value_heads": 32, "head_dim": 128}  # Qwen3Config's

    def make_spec(self, config: dict, target: Target | None = None) -> DecoderSpec:
        # Qwen2's window rule: with use_sliding_window, on the layers from max_window_layers on.
        return qwen_sliding_window(super().make_spec(config, target), config, self.window_on_every_layer)
