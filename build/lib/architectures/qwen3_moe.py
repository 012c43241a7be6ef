"""Qwen3-MoE (Qwen3MoeForCausalLM): Qwen3 attention, sparse MoE MLPs.

A sparse layer's MLP is one com.microsoft MoE (float) or QMoE (int4/int8) node
fed by a float router MatMul. The kernels apply softmax, top-k and (with
normalize_routing_weights) the renormalization of the top-k weights
themselves, which is exactly Qwen3MoeTopKRouter, so the node takes raw logits.

ORT 1.31 CPU kernels, as checked against transformers (tests/test_parity.py):
- MoE runs SwiGLU only interleaved (swiglu_fusion=1): FC1 rows are gate_0, up_0,
  gate_1, up_1, ...; with activation_alpha=1, beta=0 and no limit SwiGLU is
  silu(gate) * up. FC3 is not implemented.
- QMoE weights are MatMulNBits' per-expert bytes with the blocks of a row flattened:
  [E, N, K*bits/8] uint8, scales [E, N, K/block], packed zero points
  [E, N, ceil(K/block*bits/8)], default zero point 2^(bits-1). Rows are quantized
  independently, so gate/up rows are quantized alone and interleaved afterwards.
- block-wise 8-bit QMoE always quantizes activations to int8 ("no fp32 kernel"),
  about 1% off. Without block_size (one scale per output row) it computes in fp32,
  but 6x slower at decode. So int8 experts are per-row only where the user asked
  for fp32 compute (accuracy_level < 4 on cpu), block-wise otherwise.

Experts are quantized by one format per layer, selected by the name
`model.layers.{i}.mlp.experts` (transformers 5's module holding them), e.g.
--float-layers '*.experts' or --int8-layers '*.experts'. The router stays float.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

import quant

from architectures.base import DecoderSpec
from architectures.qwen3 import Qwen3Builder
from architectures.registry import register
from builder.kit.checkpoint import to_float
from builder.kit.errors import BuilderError
from builder.kit.graph import MS_DOMAIN, NP_TO_ONNX
from builder.kit.options import BuildOptions
from builder.kit.selection import format_for
from builder.kit.targets import Target
from quant import QuantScheme


@dataclass(frozen=True)
class MoeSpec:
    num_experts: int
    top_k: int
    intermediate_size: int
    normalize: bool
    sparse_layers: tuple[int, ...]


def expert_scheme(fmt: QuantScheme, options: BuildOptions) -> QuantScheme:
    """The experts' scheme: int8 gets one scale a row (fp32 compute, quant's "rowwise")
    where the user asked for fp32 compute, blocks (int8 activations) otherwise."""
    if not fmt.quantized or fmt.bits != 8 or options.ep != "cpu":
        return fmt
    level = options.accuracy_level
    if level is None:
        level = Target.from_options(options).default_accuracy_level
    return QuantScheme(8, symmetric=fmt.symmetric, method="rowwise") if level < 4 else fmt


def _interleave(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rows a0, b0, a1, b1, ...: the SwiGLU layout of FC1."""
    out = np.empty((a.shape[0] * 2,) + a.shape[1:], a.dtype)
    out[0::2], out[1::2] = a, b
    return out


@register("Qwen3MoeForCausalLM")
class Qwen3MoeBuilder(Qwen3Builder):
    genai_type = "qwen3"  # genai 0.18 has no "qwen3_moe"; it only sees the decoder's inputs/outputs

    def make_spec(self, config: dict) -> DecoderSpec:
        spec = super().make_spec(config)
        experts = int(config.get("num_experts", config.get("num_local_experts", 0)) or 0)
        step = int(config.get("decoder_sparse_step", 1) or 1)
        only_dense = set(config.get("mlp_only_layers") or [])
        sparse = tuple(i for i in range(spec.num_layers)
                       if experts > 0 and i not in only_dense and (i + 1) % step == 0)
        self.moe = MoeSpec(experts, int(config.get("num_experts_per_tok", 0) or 0),
                           int(config.get("moe_intermediate_size", 0) or 0),
                           bool(config.get("norm_topk_prob", False)), sparse)
        if sparse and not (0 < self.moe.top_k <= experts and self.moe.intermediate_size > 0):
            raise BuilderError("config.json: num_experts_per_tok and moe_intermediate_size must be positive, "
                               "num_experts_per_tok <= num_experts")
        if sparse and not self.target.supports("moe_swiglu"):
            raise BuilderError(f"Qwen3-MoE builds only for cpu (ONNX Runtime >= 1.31) here: its MoE/QMoE "
                               f"nodes were verified on the CPU kernels only, and onnxruntime-webgpu 1.27 "
                               f"rejects them at load; got -e {self.target.ep} with ORT {self.target.version_text}")
        return spec

    def projection_modules(self) -> list[str]:
        sparse = {f"model.layers.{i}.mlp." for i in self.moe.sparse_layers}
        modules = [m for m in super().projection_modules() if m[:m.rfind(".") + 1] not in sparse]
        return modules + [f"model.layers.{i}.mlp.experts" for i in self.moe.sparse_layers]

    # ---- the MoE block --------------------------------------------------------

    def mlp(self, i: int, x: str) -> str:
        if i not in self.moe.sparse_layers:
            return super().mlp(i, x)
        s, m, g = self.spec, self.moe, self.graph
        base = f"/model/layers.{i}/moe"
        router = self.weight(i, "mlp.gate.weight")
        gate_w = self.proj.float_rows([router], [(m.num_experts, s.hidden_size)])
        gate_w = g.initializer(f"model.layers.{i}.mlp.gate.weight", np.ascontiguousarray(gate_w.T))
        logits = g.op("MatMul", [x, gate_w], f"{base}/gate/MatMul")
        logits = g.op("Reshape", [logits, g.constant([-1, m.num_experts])], f"{base}/gate/Reshape")

        fmt = self.fmt(f"model.layers.{i}.mlp.experts")
        attrs = dict(k=m.top_k, activation_type="swiglu", swiglu_fusion=1, activation_alpha=1.0,
                     activation_beta=0.0, normalize_routing_weights=int(m.normalize))
        prefix = f"model.layers.{i}.mlp.experts"
        if not fmt.quantized:
            fc1 = self._float_experts(f"{prefix}.gate_up_proj", i, ("gate_proj", "up_proj"))
            fc2 = self._float_experts(f"{prefix}.down_proj", i, ("down_proj",))
            return g.op("MoE", [x, logits, fc1, "", fc2], f"{base}/MoE", domain=MS_DOMAIN, **attrs)

        scheme = expert_scheme(fmt, self.options)
        if scheme.block_size and (s.hidden_size % scheme.block_size or m.intermediate_size % scheme.block_size):
            raise BuilderError(f"QMoE needs hidden_size {s.hidden_size} and moe_intermediate_size "
                               f"{m.intermediate_size} to be multiples of --block-size {scheme.block_size}")
        fc1 = self._quantized_experts(f"{prefix}.gate_up_proj", i, ("gate_proj", "up_proj"), scheme)
        fc2 = self._quantized_experts(f"{prefix}.down_proj", i, ("down_proj",), scheme)
        inputs = [x, logits, fc1[0], fc1[1], "", fc2[0], fc2[1], "", "", "", ""]
        if not scheme.symmetric:
            inputs += [fc1[2], fc2[2]]
        if scheme.block_size:  # none: one scale a row
            attrs["block_size"] = scheme.block_size
        return g.op("QMoE", inputs, f"{base}/QMoE", domain=MS_DOMAIN, expert_weight_bits=scheme.bits,
                    accuracy_level=self.accuracy_level, **attrs)

    # ---- expert weights, streamed one expert at a time ----------------------

    def _expert_parts(self, i: int, e: int, projs: tuple[str, ...]) -> list[np.ndarray]:
        """[N, K] weights of one expert as stored (hub files and transformers 5 both store
        experts one by one; transformers fuses them only in memory)."""
        shapes = {"gate_proj": (self.moe.intermediate_size, self.spec.hidden_size),
                  "up_proj": (self.moe.intermediate_size, self.spec.hidden_size),
                  "down_proj": (self.spec.hidden_size, self.moe.intermediate_size)}
        return [self.checkpoint.tensor(self.weight(i, f"mlp.experts.{e}.{p}.weight"), expect_shape=shapes[p])
                for p in projs]

    def _fc_shape(self, projs: tuple[str, ...]) -> tuple[int, int]:
        """(N, K) of one expert's FC: FC1 stacks gate and up, FC2 is down_proj."""
        s, m = self.spec, self.moe
        if projs == ("down_proj",):
            return s.hidden_size, m.intermediate_size
        return m.intermediate_size * len(projs), s.hidden_size

    def _float_experts(self, name: str, i: int, projs: tuple[str, ...]) -> str:
        def chunks():
            for e in range(self.moe.num_experts):
                parts = [to_float(p, self.io_dtype) for p in self._expert_parts(i, e, projs)]
                yield parts[0] if len(parts) == 1 else _interleave(*parts)

        return self.graph.streamed_initializer(f"{name}.weight", NP_TO_ONNX[self.io_dtype],
                                               [self.moe.num_experts, *self._fc_shape(projs)], chunks())

    def _quantized_experts(self, name: str, i: int, projs: tuple[str, ...], scheme: QuantScheme):
        """(weights, scales, zero points or "") of one QMoE FC; the scales and zero
        points are [E, N, blocks...] with blocks, [E, N] with one scale a row."""
        n, k = self._fc_shape(projs)
        scales, zero_points = [], []

        def chunks():
            for e in range(self.moe.num_experts):
                qs = [quant.quantize(p, scheme, self.io_dtype) for p in self._expert_parts(i, e, projs)]
                # QMoE takes MatMulNBits' bytes with a row's blocks flattened.
                qs = [(q.packed.reshape(q.n, -1), q.scales, q.zero_points) for q in qs]
                packed, scale, zp = (parts[0] if len(qs) == 1 or parts[0] is None else _interleave(*parts)
                                     for parts in zip(*qs))
                scales.append(scale)
                if zp is not None:
                    zero_points.append(zp)
                yield np.ascontiguousarray(packed)

        g = self.graph
        weights = g.streamed_initializer(f"{name}.qweight", TensorProto.UINT8,
                                         [self.moe.num_experts, n, k * scheme.bits // 8], chunks())
        scale_name = g.initializer(f"{name}.scales", np.stack(scales))
        zp_name = g.initializer(f"{name}.qzeros", np.stack(zero_points)) if zero_points else ""
        return weights, scale_name, zp_name

    # ---- the transformers reference (builder.verify) -------------------------

    @classmethod
    def prepare_reference(cls, model, options: BuildOptions, io_dtype=np.float32) -> None:
        """Give transformers 5's fused expert tensors the weights the graph uses
        (verify's nn.Linear pass does not see them; the router is no Linear either)."""
        for name, module in model.named_modules():
            if name.endswith("mlp.gate") and hasattr(module, "weight") and io_dtype == np.float16:
                module.weight.data.copy_(module.weight.data.half().float())
            if not (name.endswith("mlp.experts") and hasattr(module, "gate_up_proj")):
                continue
            scheme = expert_scheme(format_for(name, options), options)
            for param in (module.gate_up_proj, module.down_proj):
                for e in range(param.shape[0]):
                    if scheme.quantized:
                        weight = param.data[e].numpy()  # float32, shares the parameter's memory
                        weight[...] = quant.dequantize(quant.quantize(weight, scheme, io_dtype), scheme)
                    elif io_dtype == np.float16:
                        param.data[e] = param.data[e].half().float()
