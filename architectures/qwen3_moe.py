"""Qwen3-MoE (Qwen3MoeForCausalLM): Qwen3 attention, sparse MoE MLPs (builder.kit.blocks.moe).

Experts are selected for --int8-layers/--float-layers by the module name
`model.layers.{i}.mlp.experts`, e.g. --float-layers '*.experts'.
"""

from __future__ import annotations

import numpy as np

import quant
from architectures.qwen3 import Qwen3Builder
from architectures.registry import register
from builder.kit.blocks import MoeSpec, SparseMoE
from builder.kit.blocks.moe import expert_scheme
from builder.kit.errors import BuilderError
from builder.kit.options import BuildOptions
from builder.kit.selection import format_for
from builder.kit.spec import DecoderSpec
from builder.kit.targets import Target


@register("Qwen3MoeForCausalLM")
class Qwen3MoeBuilder(Qwen3Builder):
    genai_type = "qwen3"  # genai 0.18 has no "qwen3_moe"; it only sees the decoder's inputs/outputs
    # Qwen3MoeAttention takes sliding_window on every layer: its model reads neither max_window_layers
    # nor layer_types for the prefill's mask.
    window_on_every_layer = True
    config_defaults = {"max_position_embeddings": 32768, "num_key_value_heads": 4}  # Qwen3MoeConfig's (head_dim: none)

    def make_spec(self, config: dict, target: Target | None = None) -> DecoderSpec:
        spec = super().make_spec(config, target)
        self.moe = MoeSpec.from_config(config, spec.num_layers)
        quantized = self.experts_quantized()
        if self.moe.sparse_layers and target is not None and not target.supports(target.expert_feature(quantized)):
            raise BuilderError(target.moe_refusal("Qwen3-MoE", quantized_experts=quantized))
        return spec

    def experts_quantized(self) -> bool:
        """Whether any sparse layer's experts are QMoE nodes: --float-layers '*.experts' keeps an
        int4/int8 build's experts float MoE nodes, which older runtimes run too."""
        return any(
            format_for(f"model.layers.{i}.mlp.experts", self.build_options).quantized for i in self.moe.sparse_layers
        )

    def feed_forward(self, spec: DecoderSpec, i: int):
        return SparseMoE(self.moe) if i in self.moe.sparse_layers else super().feed_forward(spec, i)

    @classmethod
    def prepare_reference(cls, model, options: BuildOptions, io_dtype=np.float32) -> None:
        moe_reference(model, options, io_dtype)


def moe_reference(model, options: BuildOptions, io_dtype=np.float32) -> None:
    """Give transformers 5's fused expert tensors the weights the graph uses
    (verify's nn.Linear pass does not see them; the router is no Linear either)."""
    level = options.accuracy_level
    if level is None:
        level = Target.from_options(options).default_accuracy_level
    for name, module in model.named_modules():
        if name.endswith("mlp.gate") and hasattr(module, "weight") and io_dtype == np.float16:
            module.weight.data.copy_(module.weight.data.half().float())
        if not (name.endswith("mlp.experts") and hasattr(module, "gate_up_proj")):
            continue
        scheme = expert_scheme(format_for(name, options), options.ep, level)
        for param in (module.gate_up_proj, module.down_proj):
            for e in range(param.shape[0]):
                if scheme.quantized:
                    weight = param.data[e].numpy()  # float32, shares the parameter's memory
                    weight[...] = quant.dequantize(quant.quantize(weight, scheme, io_dtype), scheme)
                elif io_dtype == np.float16:
                    param.data[e] = param.data[e].half().float()
