"""What every block writes with: the graph, the projection writer, the plan, and names."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from builder.kit.checkpoint import to_float
from builder.kit.errors import BuilderError
from builder.kit.graph import MS_DOMAIN, NP_TO_ONNX, Graph
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
    # The residual stream in a wider dtype than the blocks (plan.residual_dtype): the values already
    # in it, each cast made into it (by the value cast), and the norm scales written in its dtype.
    _in_stream: set[str] = field(default_factory=set)
    _cast_up: dict[str, str] = field(default_factory=dict)
    _cast_down: dict[str, str] = field(default_factory=dict)
    _stream_weights: set[str] = field(default_factory=set)
    _stream_sums: int = 0  # residual adds made in the stream (em.skip_norm with a stream scale)

    @property
    def spec(self):
        return self.plan.spec

    def module(self, layer: int, suffix: str) -> str:
        """The Hugging Face module name that --int8-layers/--float-layers patterns match."""
        return f"model.layers.{layer}.{suffix}"

    def fmt(self, layer: int, suffix: str):
        return self.plan.fmt(self.module(layer, suffix))

    # ---- the residual stream ----------------------------------------------------
    # Under --residual-dtype fp32 with fp16 activations (Gemma 3's default) the residual sums and
    # the hidden-size norms run in float32, as the reference builder writes Gemma 2/3: a block's
    # output is cast up where a norm takes it, a norm's output cast down where a block takes it.
    # Otherwise the stream is the activations' dtype and nothing here writes a node.

    @property
    def wide_stream(self) -> bool:
        return self.plan.residual_dtype != self.plan.io_dtype

    def to_stream(self, x: str, name: str) -> str:
        """x in the stream's dtype: itself, or its Cast (made once, named after the norm `name`)."""
        if not self.wide_stream or x in self._in_stream:
            return x
        if x not in self._cast_up:
            cast = self.graph.op("Cast", [x], f"{name}/Cast", to=NP_TO_ONNX[self.plan.residual_dtype])
            self._cast_up[x] = cast
            self._in_stream.add(cast)
        return self._cast_up[x]

    def to_block(self, x: str, name: str) -> str:
        """A stream value as a block's input, in the activations' dtype (one Cast however many
        blocks take it)."""
        if x not in self._in_stream:
            return x
        if x not in self._cast_down:
            self._cast_down[x] = self.graph.op("Cast", [x], f"{name}/Cast_output_0", to=self.plan.io_type)
        return self._cast_down[x]

    def check_stream(self, family: str, layers: int) -> None:
        """Refuse a graph of `layers` layers so far whose residual stream is not the float32 one
        --residual-dtype fp32 promises: an fp16 op that takes a stream value (ONNX Runtime would
        refuse to load it: a family that adds to the residual itself, or normalizes a stream value
        with a block's norm scale), or fewer residual adds in the stream than layers (a family that
        adds the residual itself in fp16, bringing only its norms' outputs to_block)."""
        if not self.wide_stream:
            return
        norms = ("SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization")
        for node in self.graph.nodes:
            taken = [x for x in node.input if x in self._in_stream]
            if not taken or node.op_type == "Cast":
                continue
            if node.op_type in norms and node.input[-1] in self._stream_weights:
                continue
            raise BuilderError(
                f"{family}: node {node.name} ({node.op_type}) takes {taken[0]}, which is in the float32 "
                "residual stream (--residual-dtype fp32): a block takes em.to_block(x, name) of it, a residual "
                "add rides on em.skip_norm, and a norm inside a block passes its size to em.norm_weight "
                "(docs/architecture.md); or build with --residual-dtype fp16"
            )
        if self._stream_sums < layers:
            raise BuilderError(
                f"{family} adds its residuals outside the float32 stream --residual-dtype fp32 asks for "
                f"({self._stream_sums} in it after {layers} layer(s), where each layer needs one at least), so "
                "they stay in fp16, where the stream overflows: a residual add rides on em.skip_norm "
                "(docs/architecture.md); or build with --residual-dtype fp16"
            )

    # ---- norms (every block and the decoder walk use these) --------------------

    def norm_weight(self, layer: int | None, suffix: str, size: int | None = None) -> str:
        """An RMSNorm's scale as the graph applies it: the stored w, or spec.norm_offset + w summed in
        float32 (as transformers does) before the cast to the activation dtype. Every norm of the
        decoder and its attention reads its scale here, so a renamed norm cannot miss the offset.
        A hidden-size norm (size None) is one of the residual stream's, written in its dtype; a
        norm inside a block (the per-head Q/K norms) passes its size."""
        name = self.weight(layer, suffix)
        shape = (size or self.spec.hidden_size,)
        stream = size is None and self.wide_stream
        if self.spec.norm_offset or stream:
            dtype = self.plan.residual_dtype if stream else self.proj.io_dtype
            summed = self.proj.float32(name, shape) + np.float32(self.spec.norm_offset)
            scale = to_float(summed, dtype)  # without numpy's overflow warning: check_finite names it
            self.proj.check_finite(name, scale)  # finite in float32, maybe not in fp16
        else:
            scale = self.proj.float_rows([name], [shape])
        if stream:
            self._stream_weights.add(name)
        return self.graph.initializer(name, scale)

    def rms_norm(self, x: str, weight: str, name: str) -> str:
        """SimplifiedLayerNormalization. With a stream norm's weight its output is in the stream
        (Gemma 3's post-norms feed the residual add; the first input_layernorm's goes to_block)."""
        stream = weight in self._stream_weights
        if stream:
            x = self.to_stream(x, name)
        out = self.graph.op(
            "SimplifiedLayerNormalization", [x, weight], f"{name}/LayerNorm", axis=-1, epsilon=self.spec.rms_norm_eps
        )
        if stream:
            self._in_stream.add(out)
        return out

    def skip_norm(self, x: str, residual: str, weight: str, name: str) -> tuple[str, str]:
        """SkipSimplifiedLayerNormalization: returns (normalized, new residual sum). The sum is the
        stream's; the normalized output goes to a block (or lm_head), in the activations' dtype."""
        inputs = (
            [x, residual]
            if weight not in self._stream_weights
            else [self.to_stream(x, name), self.to_stream(residual, f"{name}/residual")]
        )
        out, _, _, total = self.graph.node(
            "SkipSimplifiedLayerNormalization",
            [*inputs, weight],
            f"{name}/SkipLayerNorm",
            outputs=[f"{name}/output_0", "", "", f"{name}/output_3"],
            domain=MS_DOMAIN,
            epsilon=self.spec.rms_norm_eps,
        )
        if weight in self._stream_weights:
            self._in_stream.update((out, total))
            self._stream_sums += 1
            out = self.to_block(out, name)
        return out, total
