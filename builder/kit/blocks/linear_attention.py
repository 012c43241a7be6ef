"""Gated DeltaNet linear attention (Qwen3.5, Qwen3-Next) on ONNX Runtime's com.microsoft ops.

What transformers 5 computes (Qwen3NextGatedDeltaNet / Qwen3_5GatedDeltaNet), per token:

    qkv = silu(causal_conv1d(in_proj_qkv x)); q, k, v = split(qkv); q, k = l2norm per head
    beta = sigmoid(in_proj_b x); g = -exp(A_log) * softplus(in_proj_a x + dt_bias)
    S = exp(g) S + k beta (v - exp(g) S^T k)^T;  o = S^T q / sqrt(dk)     (per value head)
    out_proj(rmsnorm_per_head(o, norm.weight) * silu(in_proj_z x))

Emitted, for Hk key heads and Hv = r * Hk value heads (r >= 1):

    x -> in_proj_qkvz MatMul(NBits) -> Split [conv_dim, value_dim] -> qkv, z
    x -> in_proj_ba MatMul (float)  -> Split [Hv, Hv]              -> b, a
    qkv -> Transpose -> CausalConvWithState(silu; past.{i}.conv [B, conv_dim, K-1]) -> Transpose
        -> Split [2*key_dim, value_dim] -> BranchwiseRMSNorm over the 2*Hk q/k heads -> Split -> q, k
    a, b -> LinearAttentionGate(dt_bias, -exp(A_log)) -> decay, beta
    LinearAttention(q, k, v; past.{i}.recurrent [B, Hv, dk, dv], q_num_heads=Hk, kv_num_heads=Hv)
    -> BranchwiseRMSNorm(norm.weight) * silu(z) -> out_proj

Choices, measured on ORT 1.32's CPU kernels or checked against transformers
(scripts/bench_linear_attention.py; one layer at Qwen3.5-0.8B's head dims, paired rounds):
- l2norm(x) = rmsnorm(x, eps / dk) / sqrt(dk): one BranchwiseRMSNorm with a constant dk^-0.5 scale over
  q and k together, and LinearAttention's scale 1/sqrt(dk) is the query scaling. The reference builder
  spends 7 nodes on this (Reshape/LpNormalization/Reshape twice and a Mul).
- The gated norm is BranchwiseRMSNorm, Sigmoid/Mul (SiLU) and a Mul: com.microsoft GatedRMSNorm, one node,
  took 9x the time at decode (228 vs 26 us) and 30x at a 128-token prefill (21.5 vs 0.7 ms).
- CausalConvWithState runs channels-first between two Transposes: its channels_last mode (no Transposes)
  was as fast at decode but 1.7x slower at a 128-token prefill (27.9 vs 16.6 ms).
  Together: a layer decodes in 0.80x and prefills in 0.73x the time of the reference builder's chain.
- LinearAttention with q/k at Hk heads and v/decay/beta/state at Hv heads (the op's inverse GQA) matches
  transformers' repeat_interleave: value head j reads key head j // r.
- -exp(A_log) is computed here in float64 and stored as float32 (LinearAttentionGate's decay_scale).
- in_proj_b and in_proj_a stay float and packed: with 2*Hv rows they are <0.5% of a layer's time either
  way (int4 was 4-77 us faster a token at the 0.8B/4B shapes, but slower at prefill), and the gates
  drive exp(g) through the whole recurrence.
- com.microsoft GatedDeltaNet does all of it in one node, but its CPU kernel was 3x slower at decode and
  4x at prefill than LinearAttention + LinearAttentionGate: not used.

Checkpoint layouts, both read into the same rows (identical model.onnx.data):
- Qwen3.5: in_proj_qkv [q_all | k_all | v_all], in_proj_z, in_proj_b, in_proj_a.
- Qwen3-Next: in_proj_qkvz with rows per key-head group g of [q_g (dk) | k_g (dk) | v_g (r dv) | z_g (r dv)]
  and in_proj_ba with [b_g (r) | a_g (r)]; the value heads of group g are heads g*r .. g*r+r-1, which is
  Qwen3.5's order, so reading the groups' slices in turn gives the split layout's rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from builder.kit.blocks import right_padding
from builder.kit.blocks.mlp import activation
from builder.kit.errors import BuilderError
from builder.kit.graph import MS_DOMAIN
from builder.kit.layout import PackGroup
from builder.kit.linear import RowSlice, Source
from quant import QuantScheme


@dataclass(frozen=True)
class LinearAttentionDims:
    num_key_heads: int
    num_value_heads: int
    key_head_dim: int
    value_head_dim: int
    conv_kernel: int

    @classmethod
    def from_config(cls, config: dict) -> LinearAttentionDims:
        # transformers' Qwen3NextConfig / Qwen3_5TextConfig defaults for absent keys.
        dims = cls(
            int(config.get("linear_num_key_heads", 16)),
            int(config.get("linear_num_value_heads", 32)),
            int(config.get("linear_key_head_dim", 128)),
            int(config.get("linear_value_head_dim", 128)),
            int(config.get("linear_conv_kernel_dim", 4)),
        )
        if (
            min(dims.num_key_heads, dims.num_value_heads, dims.key_head_dim, dims.value_head_dim) <= 0
            or dims.conv_kernel < 2
            or dims.num_value_heads % dims.num_key_heads
        ):
            raise BuilderError(
                f"config.json: linear attention dims {dims} are invalid: heads and head dims "
                "must be positive, linear_num_value_heads a multiple of linear_num_key_heads, "
                "linear_conv_kernel_dim >= 2"
            )
        return dims

    @property
    def key_dim(self) -> int:
        return self.num_key_heads * self.key_head_dim

    @property
    def value_dim(self) -> int:
        return self.num_value_heads * self.value_head_dim

    @property
    def conv_dim(self) -> int:
        return 2 * self.key_dim + self.value_dim

    @property
    def ratio(self) -> int:
        return self.num_value_heads // self.num_key_heads

    def conv_state_shape(self) -> list:
        return ["batch_size", self.conv_dim, self.conv_kernel - 1]

    def recurrent_state_shape(self) -> list:
        return ["batch_size", self.num_value_heads, self.key_head_dim, self.value_head_dim]


def declare_state_io(graph, i: int, dims: LinearAttentionDims, io_type: int) -> None:
    """past.{i}.conv / past.{i}.recurrent and their present pairs, as onnxruntime-genai 0.18 names them."""
    for kind, shape in (("conv", dims.conv_state_shape()), ("recurrent", dims.recurrent_state_shape())):
        graph.add_input(f"past.{i}.{kind}", io_type, shape)
    for kind, shape in (("conv", dims.conv_state_shape()), ("recurrent", dims.recurrent_state_shape())):
        graph.add_output(f"present.{i}.{kind}", io_type, shape)


def fused_layout(checkpoint, prefix: str, default: bool) -> bool:
    """Whether the layer's projections are Qwen3-Next's fused in_proj_qkvz/in_proj_ba (else Qwen3.5's
    split in_proj_qkv/z/b/a): the family's own layout unless the checkpoint holds only the other one."""
    mine, other = ("in_proj_qkvz", "in_proj_qkv") if default else ("in_proj_qkv", "in_proj_qkvz")
    if not checkpoint.has(f"{prefix}{mine}.weight") and checkpoint.has(f"{prefix}{other}.weight"):
        return not default
    return default


def row_sources(prefix: str, dims: LinearAttentionDims, hidden: int, fused: bool) -> dict[str, list[Source]]:
    """Where the q, k, v, z, b and a rows of one layer live, in Qwen3.5's split order, for either layout.

    prefix: e.g. 'model.layers.0.linear_attn.'.
    """
    d = dims
    if not fused:
        qkv = f"{prefix}in_proj_qkv.weight"
        whole = (d.conv_dim, hidden)
        return {
            "q": [RowSlice(qkv, 0, d.key_dim, whole)],
            "k": [RowSlice(qkv, d.key_dim, 2 * d.key_dim, whole)],
            "v": [RowSlice(qkv, 2 * d.key_dim, d.conv_dim, whole)],
            "z": [f"{prefix}in_proj_z.weight"],
            "b": [f"{prefix}in_proj_b.weight"],
            "a": [f"{prefix}in_proj_a.weight"],
        }
    qkvz, ba = f"{prefix}in_proj_qkvz.weight", f"{prefix}in_proj_ba.weight"
    rv = d.ratio * d.value_head_dim
    group = 2 * d.key_head_dim + 2 * rv
    qkvz_shape, ba_shape = (d.num_key_heads * group, hidden), (2 * d.num_value_heads, hidden)
    parts = {
        "q": (0, d.key_head_dim),
        "k": (d.key_head_dim, 2 * d.key_head_dim),
        "v": (2 * d.key_head_dim, 2 * d.key_head_dim + rv),
        "z": (2 * d.key_head_dim + rv, group),
    }
    out: dict[str, list[Source]] = {
        p: [RowSlice(qkvz, g * group + lo, g * group + hi, qkvz_shape) for g in range(d.num_key_heads)]
        for p, (lo, hi) in parts.items()
    }
    for j, p in enumerate("ba"):
        out[p] = [
            RowSlice(ba, g * 2 * d.ratio + j * d.ratio, g * 2 * d.ratio + (j + 1) * d.ratio, ba_shape)
            for g in range(d.num_key_heads)
        ]
    return out


def _shapes(sources: list[Source], hidden: int, dims: LinearAttentionDims, part: str) -> list[tuple[int, int]]:
    total = {
        "q": dims.key_dim,
        "k": dims.key_dim,
        "v": dims.value_dim,
        "z": dims.value_dim,
        "b": dims.num_value_heads,
        "a": dims.num_value_heads,
    }[part]
    if len(sources) == 1 and not isinstance(sources[0], RowSlice):
        return [(total, hidden)]
    return [(s.stop - s.start, hidden) for s in sources]


@dataclass(frozen=True)
class GatedDeltaNet:
    """One linear-attention layer, as a block: modules, pack groups, state I/O and nodes.

    fused: the family's checkpoint layout (Qwen3-Next: True), used unless a layer holds only the other.
    Module names are the layout's (Qwen3.5: in_proj_qkv, in_proj_z, out_proj; Qwen3-Next: in_proj_qkvz,
    out_proj), so --int8-layers/--float-layers patterns read like the checkpoint. in_proj_b/a
    (in_proj_ba) are no quantizable module: they stay float.
    """

    dims: LinearAttentionDims
    fused: bool = False
    prefix: str = "linear_attn"
    # Keeps a state across tokens: transformers.js's left pads reach it as zeros (left_padding.py),
    # genai's right pads not at all (right_padding.py, --padded-batches).
    recurrent = True

    def _module(self, i: int, name: str) -> str:
        return f"model.layers.{i}.{self.prefix}.{name}"

    def modules(self, i: int) -> list[str]:
        names = ["in_proj_qkvz"] if self.fused else ["in_proj_qkv", "in_proj_z"]
        return [self._module(i, n) for n in names + ["out_proj"]]

    def pack_groups(self, i: int) -> list[PackGroup]:
        if self.fused:
            return []
        return [
            PackGroup(
                self._module(i, "in_proj_qkvz"),
                (self._module(i, "in_proj_qkv"), self._module(i, "in_proj_z")),
                "always",
            )
        ]

    def declare_io(self, em, i: int) -> None:
        declare_state_io(em.graph, i, self.dims, em.plan.io_type)

    def __call__(self, em, i: int, x: str) -> str:
        d, g, proj = self.dims, em.graph, em.proj
        hidden, eps = em.spec.hidden_size, em.spec.rms_norm_eps
        base = f"/model/layers.{i}/linear_attn"
        name = em.weight(i, f"{self.prefix}.")
        src = row_sources(name, d, hidden, fused_layout(proj.checkpoint, name, self.fused))

        def parts(*keys):
            tensors, shapes = [], []
            for k in keys:
                tensors += src[k]
                shapes += _shapes(src[k], hidden, d, k)
            return tensors, shapes

        if self.fused or em.plan.packed(self._module(i, "in_proj_qkvz")):
            fmt = em.plan.fmt(self._module(i, "in_proj_qkvz" if self.fused else "in_proj_qkv"))
            qkvz = proj.matmul(x, f"{base}/in_proj_qkvz", *parts("q", "k", "v", "z"), fmt)
            qkv, z = g.node(
                "Split", [qkvz, g.constant([d.conv_dim, d.value_dim])], f"{base}/in_proj_qkvz/Split", outputs=2, axis=-1
            )
        else:  # the llama.cpp rule: only projections of one weight format share a MatMul
            qkv = proj.matmul(
                x, f"{base}/in_proj_qkv", *parts("q", "k", "v"), em.plan.fmt(self._module(i, "in_proj_qkv"))
            )
            z = proj.matmul(x, f"{base}/in_proj_z", *parts("z"), em.plan.fmt(self._module(i, "in_proj_z")))
        ba = proj.matmul(x, f"{base}/in_proj_ba", *parts("b", "a"), QuantScheme.FLOAT)
        padded = right_padding.active(em)  # genai pads batches on the right: keep the pads out of the state
        if padded:
            ba = right_padding.gate_inputs(em, ba, f"{base}/in_proj_ba")
        b, a = g.node(
            "Split", [ba, g.constant([d.num_value_heads] * 2)], f"{base}/in_proj_ba/Split", outputs=2, axis=-1
        )

        conv_w = em.weight(i, f"{self.prefix}.conv1d.weight")
        conv_w = g.initializer(conv_w, proj.float_rows([conv_w], [(d.conv_dim, 1, d.conv_kernel)]))
        qkv = g.op("Transpose", [qkv], f"{base}/conv/Transpose_in", perm=[0, 2, 1])
        conv, _ = g.node(
            "CausalConvWithState",
            [qkv, conv_w, "", f"past.{i}.conv"],
            f"{base}/CausalConvWithState",
            outputs=[
                f"{base}/CausalConvWithState/output_0",
                f"{base}/CausalConvWithState/present_state" if padded else f"present.{i}.conv",
            ],
            domain=MS_DOMAIN,
            activation="silu",
        )
        if padded:
            right_padding.conv_state(
                em, f"past.{i}.conv", qkv, d.conv_kernel - 1, d.conv_dim, f"present.{i}.conv", f"{base}/conv"
            )
        conv = g.op("Transpose", [conv], f"{base}/conv/Transpose_out", perm=[0, 2, 1])
        qk, v = g.node(
            "Split", [conv, g.constant([2 * d.key_dim, d.value_dim])], f"{base}/conv/Split", outputs=2, axis=-1
        )
        l2_scale = g.initializer(
            f"model.layers.{i}.linear_attn.l2norm_scale",
            np.full(d.key_head_dim, d.key_head_dim**-0.5, dtype=em.plan.io_dtype),
        )
        qk = per_head_rms_norm(
            em, qk, l2_scale, f"{base}/qk_l2norm", 2 * d.num_key_heads, d.key_head_dim, 1e-6 / d.key_head_dim
        )
        q, k = g.node("Split", [qk, g.constant([d.key_dim, d.key_dim])], f"{base}/qk_l2norm/Split", outputs=2, axis=-1)

        vec = (d.num_value_heads,)
        dt_bias_name = em.weight(i, f"{self.prefix}.dt_bias")
        dt_bias = g.initializer(dt_bias_name, proj.float32(dt_bias_name, vec))
        a_log = proj.float32(em.weight(i, f"{self.prefix}.A_log"), vec)
        neg_exp_a = g.initializer(
            f"model.layers.{i}.linear_attn.neg_exp_A_log", (-np.exp(a_log.astype(np.float64))).astype(np.float32)
        )
        decay, beta = g.node(
            "LinearAttentionGate",
            [a, dt_bias, neg_exp_a, b],
            f"{base}/LinearAttentionGate",
            outputs=2,
            domain=MS_DOMAIN,
        )
        attn, _ = g.node(
            "LinearAttention",
            [q, k, v, f"past.{i}.recurrent", decay, beta],
            f"{base}/LinearAttention",
            outputs=[f"{base}/LinearAttention/output_0", f"present.{i}.recurrent"],
            domain=MS_DOMAIN,
            q_num_heads=d.num_key_heads,
            kv_num_heads=d.num_value_heads,
            update_rule="gated_delta",
            scale=1.0 / math.sqrt(d.key_head_dim),
        )
        # Not em.norm_weight: transformers applies this gated norm with its plain weight, whatever
        # the model's norm_offset.
        norm_w = em.weight(i, f"{self.prefix}.norm.weight")
        norm_w = g.initializer(norm_w, proj.float_rows([norm_w], [(d.value_head_dim,)]))
        normed = per_head_rms_norm(em, attn, norm_w, f"{base}/norm", d.num_value_heads, d.value_head_dim, eps)
        normed = g.op("Mul", [normed, activation(em, "silu", z, f"{base}/norm/act_fn")], f"{base}/norm/Mul")
        return proj.matmul(
            normed,
            f"{base}/out_proj",
            [em.weight(i, f"{self.prefix}.out_proj.weight")],
            [(hidden, d.value_dim)],
            em.plan.fmt(self._module(i, "out_proj")),
        )


def per_head_rms_norm(em, x: str, weight: str, name: str, heads: int, dim: int, epsilon: float) -> str:
    """RMSNorm over each of `heads` groups of x [B, S, heads*dim] with a [dim] scale.

    As the attention layers' Q/K norms, by --head-norm: Reshape/SimplifiedLayerNormalization/
    Reshape by default (decoded faster at Qwen3-1.7B, docs/packing.md), one BranchwiseRMSNorm
    with --head-norm branchwise (cpu, ONNX Runtime >= 1.31; the layout refuses it elsewhere).
    """
    g = em.graph
    if em.plan.layout.head_norm == "branchwise":
        return g.op(
            "BranchwiseRMSNorm",
            [x, weight],
            f"{name}/BranchwiseRMSNorm",
            domain=MS_DOMAIN,
            num_branches=heads,
            epsilon=epsilon,
        )
    split = g.op("Reshape", [x, g.constant([0, 0, heads, dim])], f"{name}/Reshape_in")
    normed = g.op(
        "SimplifiedLayerNormalization",
        [split, weight],
        f"{name}/SimplifiedLayerNormalization",
        axis=-1,
        epsilon=epsilon,
    )
    return g.op("Reshape", [normed, g.constant([0, 0, heads * dim])], f"{name}/Reshape_out")
