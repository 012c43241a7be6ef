"""Llama (LlamaForCausalLM), Llama-3 rope scaling included: the base decoder as it is."""

from architectures.base import DecoderBuilder
from architectures.registry import register


@register("LlamaForCausalLM")
class LlamaBuilder(DecoderBuilder):
    genai_type = "llama"
    config_defaults = {"max_position_embeddings": 2048}  # LlamaConfig's
