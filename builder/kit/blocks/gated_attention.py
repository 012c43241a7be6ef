"""Gated full attention (Qwen3.5, Qwen3-Next): GroupQueryAttention whose output is scaled by
sigmoid(gate) before o_proj, the gate coming out of q_proj.

q_proj holds [q_h | gate_h] for each head h. Its rows are re-laid at conversion as [q of all heads |
gate of all heads], so q, gate, k and v come out of one packed MatMul through one Split (the reference
builder cuts the gate out with Reshape/Split/Reshape x2). Everything else is the Attention block's:
per-head Q/K RMSNorm (inside GroupQueryAttention with --qkv-packing fused-norm), rotary inside
GroupQueryAttention (partial when the cos/sin caches are narrower than head_dim / 2), the KV I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from builder.kit.blocks.attention import Attention
from builder.kit.blocks.emitter import Emitter
from builder.kit.linear import RowSlice


@dataclass(frozen=True)
class GatedAttention(Attention):
    def __post_init__(self):
        # What Attention can be told and this block does not write: refused, not ignored.
        if not self.qk_norm or self.bias or self.out_bias or self.local_rope_layers:
            raise ValueError(
                "GatedAttention writes Q/K norms, no biases and the global rotary cache only: got "
                f"qk_norm={self.qk_norm}, bias={self.bias}, out_bias={self.out_bias}, "
                f"local_rope_layers={self.local_rope_layers}"
            )

    def __call__(self, em: Emitter, i: int, x: str) -> str:
        s, g, layout = em.spec, em.graph, em.plan.layout
        base = f"/model/layers.{i}/attn"
        hd, q_rows, kv_rows = s.head_dim, s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim
        q_proj, whole = em.weight(i, f"{self.prefix}.q_proj.weight"), (2 * q_rows, s.hidden_size)
        q = [RowSlice(q_proj, 2 * h * hd, 2 * h * hd + hd, whole) for h in range(s.num_heads)]
        gate = [RowSlice(q_proj, 2 * h * hd + hd, 2 * h * hd + 2 * hd, whole) for h in range(s.num_heads)]
        k, v = (em.weight(i, f"{self.prefix}.{p}_proj.weight") for p in "kv")
        heads = [(hd, s.hidden_size)] * s.num_heads
        fmts = [em.fmt(i, f"{self.prefix}.{p}_proj") for p in "qkv"]
        if em.plan.packed(f"model.layers.{i}.{self.prefix}.qkv_proj"):
            packed = em.proj.matmul(
                x, f"{base}/qkv_proj", q + gate + [k, v], heads * 2 + [(kv_rows, s.hidden_size)] * 2, fmts[0]
            )
            query, gate_out, key, value = g.node(
                "Split",
                [packed, g.constant([q_rows, q_rows, kv_rows, kv_rows])],
                f"{base}/qkv_proj/Split",
                outputs=4,
                axis=-1,
            )
        else:
            q_gate = em.proj.matmul(x, f"{base}/q_proj", q + gate, heads * 2, fmts[0])
            query, gate_out = g.node(
                "Split", [q_gate, g.constant([q_rows, q_rows])], f"{base}/q_proj/Split", outputs=2, axis=-1
            )
            key, value = (
                em.proj.matmul(x, f"{base}/{p}_proj", [n], [(kv_rows, s.hidden_size)], f)
                for p, n, f in (("k", k, fmts[1]), ("v", v, fmts[2]))
            )
        q_norm, k_norm = (f"{self.prefix}.{p}_norm.weight" for p in "qk")
        extra = {}
        if layout.head_norm == "gqa":  # --qkv-packing fused-norm: GroupQueryAttention applies them
            extra = dict(q_norm=em.norm_weight(i, q_norm, hd), k_norm=em.norm_weight(i, k_norm, hd))
        else:
            query = self.head_norm(em, query, em.norm_weight(i, q_norm, hd), s.num_heads, f"{base}/q_norm")
            key = self.head_norm(em, key, em.norm_weight(i, k_norm, hd), s.num_kv_heads, f"{base}/k_norm")
        cos, sin = em.shared["rope/global"]
        if not layout.rotary_in_gqa:
            query, key = self.rotary_nodes(em, query, key, base, cos, sin)
        attn = self.group_query_attention(em, i, query, key, value, base, cos, sin, **extra)
        gated = g.op("Mul", [attn, g.op("Sigmoid", [gate_out], f"{base}/gate/Sigmoid")], f"{base}/gate/Mul")
        return em.proj.matmul(
            gated,
            f"{base}/o_proj",
            [em.weight(i, f"{self.prefix}.o_proj.weight")],
            [(s.hidden_size, q_rows)],
            em.fmt(i, f"{self.prefix}.o_proj"),
        )
