"""Mistral (MistralForCausalLM): Llama with sliding-window attention on every layer.

config.json's sliding_window (None on v0.2+ checkpoints) becomes GroupQueryAttention's
local_window_size only: genai_config.json gets no sliding_window entry, which would
make onnxruntime-genai allocate window-sized KV buffers (builder/kit/genai_config.py).
The value is passed as is: from ORT 1.24 GQA attends to the last local_window_size
positions, the current one included, which is transformers'
`kv_idx > q_idx - sliding_window` (window +- 1 move the logits by ~2 with a 12-token
prompt and window 8). Earlier kernels attended one more, so older targets are refused
(builder.kit.targets, gqa_window).
"""

from architectures.base import DecoderBuilder
from architectures.qwen2 import DEFAULT_WINDOW, sliding_layers
from architectures.registry import register
from builder.kit.spec import SLIDING_ATTENTION, DecoderSpec
from builder.kit.targets import Target


@register("MistralForCausalLM")
class MistralBuilder(DecoderBuilder):
    genai_type = "mistral"
    config_defaults = {"max_position_embeddings": 131072, "num_key_value_heads": 8}  # MistralConfig's
    reads_mlp_bias = False  # MistralMLP has no biases whatever config.json says

    def make_spec(self, config: dict, target: Target | None = None) -> DecoderSpec:
        # MistralAttention has no q/k/v biases whatever config.json says.
        spec = super().make_spec({**config, "attention_bias": False}, target)
        window = config.get("sliding_window", DEFAULT_WINDOW)  # absent: transformers' default; null: none
        # No list a layer without a window: num_hidden_layers is checked against the checkpoint later.
        spec.sliding_layers = sliding_layers(config, window, [SLIDING_ATTENTION] * spec.num_layers) if window else ()
        spec.sliding_window = int(window) if spec.sliding_layers else None
        return spec
