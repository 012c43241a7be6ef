"""Qwen2 / Qwen2.5 (Qwen2ForCausalLM): Llama with q/k/v biases.

The biases ride on the projection: one packed bias Add after the packed QKV
MatMul (before the Split), or one Add per projection in the separate layout.
"""

from architectures.base import DecoderBuilder
from architectures.registry import register
from builder.kit.errors import BuilderError
from builder.kit.spec import FULL_ATTENTION, SLIDING_ATTENTION, DecoderSpec, layer_types
from builder.kit.targets import Target


def sliding_layers(config: dict, window: int | None, default_types: list[str]) -> tuple[int, ...]:
    """Layers that attend through the window: config.json's layer_types when it has them
    (transformers 5 writes them; checked: a list of the wrong length or a misspelled kind
    turned the window off in silence for the layers it missed), else the family's default."""
    if not window:
        return ()
    types = layer_types(config, len(default_types), default_types, {FULL_ATTENTION, SLIDING_ATTENTION})
    return tuple(i for i, t in enumerate(types) if t == SLIDING_ATTENTION)


# transformers' defaults where config.json lacks the key (Qwen2Config, Qwen3Config, Qwen3MoeConfig,
# MistralConfig): a window of 4096, from layer 28 on. A null sliding_window means none.
DEFAULT_WINDOW, DEFAULT_WINDOW_LAYERS = 4096, 28


def qwen_sliding_window(spec: DecoderSpec, config: dict, all_layers: bool = False) -> DecoderSpec:
    """transformers' Qwen2/Qwen3 rule: sliding_window applies only with use_sliding_window, to the
    layers from max_window_layers on, or as config.json's layer_types say; all_layers (Qwen3-MoE,
    whose attention reads neither key): to every layer."""
    window = config.get("sliding_window", DEFAULT_WINDOW) if config.get("use_sliding_window") else None
    if not window:  # no list a layer: the plan checks num_hidden_layers against the checkpoint after this
        spec.sliding_layers, spec.sliding_window = (), None
        return spec
    if all_layers:
        first = 0
    else:
        first = config.get("max_window_layers", DEFAULT_WINDOW_LAYERS)
        if first is None:
            raise BuilderError(
                "config.json: max_window_layers is null while use_sliding_window is true; it must be the "
                "first layer with the window (fix or re-download config.json)"
            )
    default = [SLIDING_ATTENTION if i >= first else FULL_ATTENTION for i in range(spec.num_layers)]
    if all_layers:
        spec.sliding_layers = tuple(i for i, t in enumerate(default) if t == SLIDING_ATTENTION)
    else:
        spec.sliding_layers = sliding_layers(config, window, default)
    spec.sliding_window = int(window) if spec.sliding_layers else None
    return spec


@register("Qwen2ForCausalLM")
class Qwen2Builder(DecoderBuilder):
    genai_type = "qwen2"
    config_defaults = {"max_position_embeddings": 32768, "num_key_value_heads": 32}  # Qwen2Config's

    attention_bias = True  # Qwen2Attention always has them; hub configs carry no attention_bias key
    attention_out_bias = False  # and o_proj never has one
    reads_mlp_bias = False  # Qwen2MLP has no biases whatever config.json says

    def make_spec(self, config: dict, target: Target | None = None) -> DecoderSpec:
        spec = super().make_spec(config, target)
        return qwen_sliding_window(spec, config)
