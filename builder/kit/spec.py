"""The dimensions of a decoder, normalized from its Hugging Face config."""

from __future__ import annotations

from dataclasses import dataclass, field

from builder.kit.errors import BuilderError
from builder.kit.rope import RopeSpec

FULL_ATTENTION, SLIDING_ATTENTION, LINEAR_ATTENTION = "full_attention", "sliding_attention", "linear_attention"


def positive(config: dict, key: str):
    """config[key] as a positive number, or a one-line error naming the key."""
    if key not in config:
        raise BuilderError(
            f"config.json has no {key!r}; it is required for this architecture (fix or re-download config.json)"
        )
    value = config[key]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise BuilderError(f"config.json: {key} = {value!r} must be a positive number (fix or re-download config.json)")
    return value


def layer_types(config: dict, num_layers: int, default: list[str], allowed: set[str]) -> list[str]:
    """Each layer's kind: config.json's layer_types, else `default` (the family's rule)."""
    types = config.get("layer_types")
    types = list(default if types is None else types)
    if len(types) != num_layers or set(types) - allowed:
        raise BuilderError(
            f"config.json: layer_types {types} must name {num_layers} layers, each one of {sorted(allowed)} "
            "(fix or re-download config.json)"
        )
    return types


@dataclass
class DecoderSpec:
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float
    tie_word_embeddings: bool
    max_position_embeddings: int
    rope: RopeSpec
    qk_norm: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False  # gate/up/down_proj biases (a Llama with mlp_bias)
    sliding_window: int | None = None
    sliding_layers: tuple[int, ...] = field(default=())
    attention_scale: float | None = None  # default 1/sqrt(head_dim); Gemma: query_pre_attn_scalar**-0.5
    # Every RMSNorm scales by (norm_offset + w): Gemma and Qwen3.5 store w as the offset from 1.
    norm_offset: float = 0.0
    # Each layer's mixer kind, for families that mix them (Qwen3.5: linear and full attention);
    # empty where every layer is attention.
    layer_types: tuple[str, ...] = field(default=())

    @property
    def linear_layers(self) -> tuple[int, ...]:
        """The layers whose state is recurrent (conv + recurrent inputs) rather than a KV cache."""
        return tuple(i for i, t in enumerate(self.layer_types) if t == LINEAR_ATTENTION)

    @classmethod
    def from_config(cls, config: dict, **overrides) -> DecoderSpec:
        hidden = int(positive(config, "hidden_size"))
        heads = int(positive(config, "num_attention_heads"))
        head_dim = int(config.get("head_dim") or hidden // heads)
        values = dict(
            hidden_size=hidden,
            num_layers=int(positive(config, "num_hidden_layers")),
            num_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=head_dim,
            intermediate_size=int(positive(config, "intermediate_size")),
            vocab_size=int(positive(config, "vocab_size")),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            max_position_embeddings=int(config.get("max_position_embeddings", 4096)),
            rope=RopeSpec.from_config(config, head_dim),
        )
        values.update(overrides)
        spec = cls(**values)
        if spec.num_heads % spec.num_kv_heads:
            raise BuilderError(
                f"config.json: num_attention_heads {spec.num_heads} is not a multiple of "
                f"num_key_value_heads {spec.num_kv_heads} (fix or re-download config.json)"
            )
        if spec.head_dim % 8:
            # GroupQueryAttention refuses it when run (CPU, 1.32: 'head_size must be a multiple of 8'),
            # after a whole build.
            raise BuilderError(
                f"config.json: head_dim {spec.head_dim} (hidden_size / num_attention_heads unless given) is "
                "not a multiple of 8, which onnxruntime's GroupQueryAttention needs; this model cannot be built"
            )
        return spec
