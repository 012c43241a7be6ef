"""Sparse experts as one com.microsoft MoE (float) or QMoE (int4/int8) node.

The router is a float MatMul; the kernels apply softmax, top-k and (with
normalize_routing_weights) the renormalization of the top-k weights themselves,
so the node takes raw logits (what Qwen3MoeTopKRouter computes). QMoE renormalizes
even when told not to, so for norm_topk_prob=false its output is scaled back by the
top-k probability mass, computed beside it.

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
- Both break ties in the routing probabilities toward the higher expert index (1.32):
  with logits [1, 1, 1, 0, ...] and k=2 they route to experts 2 and 1. torch.topk
  keeps no fixed order among equal values (it picked 1 and 0 there, and 6 and 5 of
  eight zeros), so where two routing probabilities are exactly equal at the k-th
  place the graph and transformers may route to different experts; no expert order
  in the graph can follow torch there.

Experts are quantized by one format per layer, selected by the module name
`model.layers.{i}.mlp.experts` (transformers 5's module holding them), e.g.
--float-layers '*.experts'. The router stays float.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

import quant
from builder.kit.blocks.emitter import Emitter
from builder.kit.checkpoint import to_float
from builder.kit.errors import BuilderError
from builder.kit.graph import MS_DOMAIN, NP_TO_ONNX
from builder.kit.layout import PackGroup
from builder.kit.linear import RowSlice
from quant import QuantScheme


@dataclass(frozen=True)
class MoeSpec:
    num_experts: int
    top_k: int
    intermediate_size: int
    normalize: bool
    sparse_layers: tuple[int, ...]

    @classmethod
    def from_config(cls, config: dict, num_layers: int) -> MoeSpec:
        experts = int(config.get("num_experts", config.get("num_local_experts", 0)) or 0)
        step = int(config.get("decoder_sparse_step", 1) or 1)
        only_dense = set(config.get("mlp_only_layers") or [])
        sparse = tuple(i for i in range(num_layers) if experts > 0 and i not in only_dense and (i + 1) % step == 0)
        spec = cls(
            experts,
            int(config.get("num_experts_per_tok", 0) or 0),
            int(config.get("moe_intermediate_size", 0) or 0),
            bool(config.get("norm_topk_prob", False)),
            sparse,
        )
        if sparse and not (0 < spec.top_k <= experts and spec.intermediate_size > 0):
            raise BuilderError(
                "config.json: num_experts_per_tok and moe_intermediate_size must be positive, "
                "num_experts_per_tok <= num_experts"
            )
        return spec


def expert_scheme(fmt: QuantScheme, ep: str, accuracy_level: int) -> QuantScheme:
    """The experts' scheme: int8 gets one scale a row (fp32 compute, quant's "rowwise")
    where the user asked for fp32 compute, blocks (int8 activations) otherwise."""
    if not fmt.quantized or fmt.bits != 8 or ep != "cpu" or accuracy_level >= 4:
        return fmt
    return QuantScheme(8, symmetric=fmt.symmetric, method="rowwise")


def unblockable_experts(hidden: int, intermediate: int, scheme: QuantScheme, ep: str) -> str:
    """The refusal of experts whose rows split into no whole blocks (QMoE's [E, N, K * bits / 8]
    weights hold no padded last block, as MatMulNBits' [N, blocks, blob] do), with the options
    that build them."""
    fits = [b for b in quant.BLOCK_SIZES if hidden % b == 0 and intermediate % b == 0]
    ways = [f"--block-size {max(fits)}"] if fits else []
    if scheme.bits == 8 and ep == "cpu":
        ways.append("--accuracy-level 0 (int8 experts with one scale a row, whatever their sizes)")
    ways.append("--float-layers '*.experts' (float experts)")
    return (
        f"QMoE needs hidden_size {hidden} and moe_intermediate_size {intermediate} to be multiples of "
        f"--block-size {scheme.block_size}; build with " + ", or ".join(ways)
    )


def _interleave(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rows a0, b0, a1, b1, ...: the SwiGLU layout of FC1."""
    out = np.empty((a.shape[0] * 2,) + a.shape[1:], a.dtype)
    out[0::2], out[1::2] = a, b
    return out


@dataclass(frozen=True)
class SparseMoE:
    moe: MoeSpec
    prefix: str = "mlp"
    # Its SwiGLU runs inside the MoE/QMoE node, in no form --silu picks (plan.writes_silu).
    writes_silu = False

    def modules(self, i: int) -> list[str]:
        return [f"model.layers.{i}.{self.prefix}.experts"]

    def pack_groups(self, i: int) -> list[PackGroup]:
        return []

    def __call__(self, em: Emitter, i: int, x: str) -> str:
        s, m, g = em.spec, self.moe, em.graph
        base = f"/model/layers.{i}/moe"
        router = em.weight(i, f"{self.prefix}.gate.weight")
        gate_w = em.proj.float_rows([router], [(m.num_experts, s.hidden_size)])
        gate_w = g.initializer(f"model.layers.{i}.{self.prefix}.gate.weight", np.ascontiguousarray(gate_w.T))
        logits_3d = g.op("MatMul", [x, gate_w], f"{base}/gate/MatMul")
        logits = g.op("Reshape", [logits_3d, g.constant([-1, m.num_experts])], f"{base}/gate/Reshape")

        fmt = em.fmt(i, f"{self.prefix}.experts")
        attrs = dict(
            k=m.top_k,
            activation_type="swiglu",
            swiglu_fusion=1,
            activation_alpha=1.0,
            activation_beta=0.0,
            normalize_routing_weights=int(m.normalize),
        )
        prefix = f"model.layers.{i}.{self.prefix}.experts"
        if not fmt.quantized:
            fc1 = self._float_experts(em, f"{prefix}.gate_up_proj", i, ("gate_proj", "up_proj"))
            fc2 = self._float_experts(em, f"{prefix}.down_proj", i, ("down_proj",))
            return g.op("MoE", [x, logits, fc1, "", fc2], f"{base}/MoE", domain=MS_DOMAIN, **attrs)

        # QMoE renormalizes the top-k weights whatever normalize_routing_weights says (ORT 1.31-1.32
        # CPU: a norm_topk_prob=false build equalled the renormalized model to 2e-6 and was 1.0 off
        # transformers), so it is asked to, and the sum it divided by is multiplied back.
        attrs["normalize_routing_weights"] = 1
        unnormalize = None if m.normalize else self._top_k_mass(em, base, logits_3d)
        scheme = expert_scheme(fmt, em.plan.target.ep, em.plan.accuracy_level)
        if scheme.block_size and (s.hidden_size % scheme.block_size or m.intermediate_size % scheme.block_size):
            raise BuilderError(unblockable_experts(s.hidden_size, m.intermediate_size, scheme, em.plan.target.ep))
        fc1 = self._quantized_experts(em, f"{prefix}.gate_up_proj", i, ("gate_proj", "up_proj"), scheme)
        fc2 = self._quantized_experts(em, f"{prefix}.down_proj", i, ("down_proj",), scheme)
        inputs = [x, logits, fc1[0], fc1[1], "", fc2[0], fc2[1], "", "", "", ""]
        if not scheme.symmetric:
            inputs += [fc1[2], fc2[2]]
        if scheme.block_size:  # none: one scale a row
            attrs["block_size"] = scheme.block_size
        out = g.op(
            "QMoE",
            inputs,
            f"{base}/QMoE",
            domain=MS_DOMAIN,
            expert_weight_bits=scheme.bits,
            accuracy_level=em.plan.accuracy_level,
            **attrs,
        )
        return out if unnormalize is None else g.op("Mul", [out, unnormalize], f"{base}/QMoE/Unnormalize")

    def _top_k_mass(self, em: Emitter, base: str, logits: str) -> str:
        """Each token's summed softmax probability of its top-k experts, [batch, seq, 1] in the
        activation dtype: what a renormalizing kernel divided the routing weights by (softmax and
        top-k in fp32, as the kernels compute them)."""
        g, name = em.graph, f"{base}/router_mass"
        narrow = em.proj.io_dtype != np.float32
        wide = g.op("Cast", [logits], f"{name}/Cast", to=TensorProto.FLOAT) if narrow else logits
        probs = g.op("Softmax", [wide], f"{name}/Softmax", axis=-1)
        top = g.node("TopK", [probs, g.constant([self.moe.top_k])], f"{name}/TopK", 2, axis=-1)[0]
        mass = g.op("ReduceSum", [top, g.constant([-1])], f"{name}/ReduceSum", keepdims=1)
        return g.op("Cast", [mass], f"{name}/Cast_out", to=NP_TO_ONNX[em.proj.io_dtype]) if narrow else mass

    # ---- expert weights, streamed one expert at a time ----------------------

    def _expert_parts(self, em: Emitter, i: int, e: int, projs: tuple[str, ...]) -> tuple[list[str], list[np.ndarray]]:
        """The checkpoint tensors and [N, K] weights of one expert, as float32. Checkpoints store
        experts one by one (Qwen3-MoE's and Qwen3-Next's hub files, transformers 5's save_pretrained)
        or fused as transformers holds them in memory (Qwen3.5-MoE's hub files: experts.gate_up_proj
        [E, 2I, H], gate rows first, and experts.down_proj [E, H, I]); expert e of a fused tensor is
        its row e."""
        s, m = em.spec, self.moe
        shapes = {
            "gate_proj": (m.intermediate_size, s.hidden_size),
            "up_proj": (m.intermediate_size, s.hidden_size),
            "down_proj": (s.hidden_size, m.intermediate_size),
        }
        names = [em.weight(i, f"{self.prefix}.experts.{e}.{p}.weight") for p in projs]
        fused = em.weight(i, f"{self.prefix}.experts.{'down_proj' if projs == ('down_proj',) else 'gate_up_proj'}")
        checkpoint = em.proj.checkpoint
        if checkpoint.has(names[0]) or not checkpoint.has(fused):  # one by one (or missing: that error)
            return names, [em.proj.float32(name, shapes[p]) for name, p in zip(names, projs)]
        rows = sum(shapes[p][0] for p in projs)
        whole = (m.num_experts, rows, shapes[projs[0]][1])
        expert = em.proj.float32(RowSlice(fused, e, e + 1, whole), (1, *whole[1:]))[0]
        return [fused] * len(projs), list(np.split(expert, len(projs))) if len(projs) > 1 else [expert]

    def _fc_shape(self, em: Emitter, projs: tuple[str, ...]) -> tuple[int, int]:
        """(N, K) of one expert's FC: FC1 stacks gate and up, FC2 is down_proj."""
        s, m = em.spec, self.moe
        if projs == ("down_proj",):
            return s.hidden_size, m.intermediate_size
        return m.intermediate_size * len(projs), s.hidden_size

    def _float_experts(self, em: Emitter, name: str, i: int, projs: tuple[str, ...]) -> str:
        io = em.plan.io_dtype

        def chunks():
            for e in range(self.moe.num_experts):
                names, parts = self._expert_parts(em, i, e, projs)
                parts = [to_float(p, io) for p in parts]  # without numpy's overflow warning: ours names it
                for tensor, part in zip(names, parts):  # finite in float32, maybe not in fp16
                    em.proj.check_finite(tensor, part)
                yield parts[0] if len(parts) == 1 else _interleave(*parts)

        return em.graph.streamed_initializer(
            f"{name}.weight", NP_TO_ONNX[np.dtype(io)], [self.moe.num_experts, *self._fc_shape(em, projs)], chunks()
        )

    def _quantized_experts(self, em: Emitter, name: str, i: int, projs: tuple[str, ...], scheme: QuantScheme):
        """(weights, scales, zero points or "") of one QMoE FC; the scales and zero
        points are [E, N, blocks...] with blocks, [E, N] with one scale a row."""
        n, k = self._fc_shape(em, projs)
        scales, zero_points = [], []

        def chunks():
            for e in range(self.moe.num_experts):
                names, parts = self._expert_parts(em, i, e, projs)
                qs = [quant.quantize(p, scheme, em.plan.io_dtype) for p in parts]
                for tensor, q in zip(names, qs):
                    em.proj.check_quantized(tensor, q, scheme)
                # QMoE takes MatMulNBits' bytes with a row's blocks flattened.
                qs = [(q.packed.reshape(q.n, -1), q.scales, q.zero_points) for q in qs]
                packed, scale, zp = (
                    parts[0] if len(qs) == 1 or parts[0] is None else _interleave(*parts) for parts in zip(*qs)
                )
                scales.append(scale)
                if zp is not None:
                    zero_points.append(zp)
                yield np.ascontiguousarray(packed)

        g = em.graph
        weights = g.streamed_initializer(
            f"{name}.qweight", TensorProto.UINT8, [self.moe.num_experts, n, k * scheme.bits // 8], chunks()
        )
        scale_name = g.initializer(f"{name}.scales", np.stack(scales))
        zp_name = g.initializer(f"{name}.qzeros", np.stack(zero_points)) if zero_points else ""
        return weights, scale_name, zp_name
