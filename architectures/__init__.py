"""Per-architecture builder classes, registered under their HF `architectures` names.

    from architectures import Qwen3Builder
    from builder import BuildOptions, build
    build(BuildOptions(model="path/to/qwen3", precision="int4", ep="webgpu"), family=Qwen3Builder)

Subclass DecoderBuilder (or a family) and decorate it with
`@register("MyForCausalLM")`; installed packages can also add families through
the `builder.architectures` entry-point group.
"""

from architectures.base import DecoderBuilder, DecoderSpec
from architectures.gemma3 import Gemma3Builder, Gemma3VLBuilder
from architectures.llama import LlamaBuilder
from architectures.mistral import MistralBuilder
from architectures.qwen2 import Qwen2Builder
from architectures.qwen3 import Qwen3Builder
from architectures.qwen3_5 import Qwen35Builder, Qwen35MoeBuilder, Qwen35MoeVLBuilder, Qwen35VLBuilder
from architectures.qwen3_moe import Qwen3MoeBuilder
from architectures.qwen3_next import Qwen3NextBuilder
from architectures.registry import builder_class_for, register, registered

__all__ = [
    "DecoderBuilder",
    "DecoderSpec",
    "Gemma3Builder",
    "Gemma3VLBuilder",
    "LlamaBuilder",
    "MistralBuilder",
    "Qwen2Builder",
    "Qwen35Builder",
    "Qwen35MoeBuilder",
    "Qwen35MoeVLBuilder",
    "Qwen35VLBuilder",
    "Qwen3Builder",
    "Qwen3MoeBuilder",
    "Qwen3NextBuilder",
    "builder_class_for",
    "register",
    "registered",
]
