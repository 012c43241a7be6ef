"""What every block writes with: the graph, the projection writer, the plan, and names."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from builder.kit.graph import MS_DOMAIN, Graph
from builder.kit.linear import Projections
from builder.kit.plan import BuildPlan


@dataclass
class Emitter:
    graph: Graph
    proj: Projections
    plan: BuildPlan
    # (layer or None, suffix) -> the checkpoint's tensor name (Hugging Face naming)
    weight: Callable[[int | None, str], str]
    # Filled by the blocks that make them: GQA's seqlens_k / total_sequence_length and
    # the rotary caches by name ("global", "local").
    shared: dict[str, object] = field(default_factory=dict)

    @property
    def spec(self):
        return self.plan.spec

    def module(self, layer: int, suffix: str) -> str:
        """The Hugging Face module name that --int8-layers/--float-layers patterns match."""
        return f"model.layers.{layer}.{suffix}"

    def fmt(self, layer: int, suffix: str):
        return self.plan.fmt(self.module(layer, suffix))

    # ---- norms (every block and the decoder walk use these) --------------------

    def norm_weight(self, layer: int | None, suffix: str, size: int | None = None) -> str:
        """An RMSNorm's scale as the graph applies it: the stored w, or spec.norm_offset + w summed in
        float32 (as transformers does) before the cast to the activation dtype. Every norm of the
        decoder and its attention reads its scale here, so a renamed norm cannot miss the offset."""
        name = self.weight(layer, suffix)
        shape = (size or self.spec.hidden_size,)
        if self.spec.norm_offset:
            scale = (self.proj.float32(name, shape) + np.float32(self.spec.norm_offset)).astype(self.proj.io_dtype)
        else:
            scale = self.proj.float_rows([name], [shape])
        return self.graph.initializer(name, scale)

    def rms_norm(self, x: str, weight: str, name: str) -> str:
        return self.graph.op(
            "SimplifiedLayerNormalization", [x, weight], f"{name}/LayerNorm", axis=-1, epsilon=self.spec.rms_norm_eps
        )

    def skip_norm(self, x: str, residual: str, weight: str, name: str) -> tuple[str, str]:
        """SkipSimplifiedLayerNormalization: returns (normalized, new residual sum)."""
        out, _, _, total = self.graph.node(
            "SkipSimplifiedLayerNormalization",
            [x, residual, weight],
            f"{name}/SkipLayerNorm",
            outputs=[f"{name}/output_0", "", "", f"{name}/output_3"],
            domain=MS_DOMAIN,
            epsilon=self.spec.rms_norm_eps,
        )
        return out, total
