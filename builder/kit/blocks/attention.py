"""GroupQueryAttention: q/k/v projections (packed or not), optional per-head Q/K RMSNorm,
rotary inside GQA or as RotaryEmbedding nodes, the shared KV buffer, o_proj.

Which variant is emitted is the plan's (builder.kit.layout); this block only reads it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from builder.kit.blocks.emitter import Emitter
from builder.kit.graph import MS_DOMAIN
from builder.kit.layout import PackGroup


def declare_inputs(em: Emitter) -> None:
    """input_ids, attention_mask (and position_ids where rotary is not inside GQA), logits."""
    g, s = em.graph, em.spec
    g.add_input("input_ids", em.plan.index_type, ["batch_size", "sequence_length"])
    g.add_input("attention_mask", em.plan.index_type, ["batch_size", "total_sequence_length"])
    if not em.plan.layout.rotary_in_gqa:
        g.add_input("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"])
    if em.plan.logits_to_keep:
        g.add_input("num_logits_to_keep", TensorProto.INT64, [])
    positions = 1 if em.plan.last_logits else "num_logits" if em.plan.logits_to_keep else "sequence_length"
    g.add_output("logits", em.plan.io_type, ["batch_size", positions, s.vocab_size])


def attention_metadata(em: Emitter, ropes: dict) -> None:
    """seqlens_k (tokens seen - 1, per batch row), total_sequence_length, and rotary caches.

    ropes: cache name -> RopeSpec ("global" for every layer unless a block asks for another).
    """
    g = em.graph
    base = "/model/attn_mask_reformat"
    if em.plan.target.graph_capture:
        # A captured graph may hold no CPU node: int64 arithmetic and Shape run on the
        # CPU, so sum the mask in int32 on the GPU. With capture the mask is a static
        # [B, max_length] buffer zero past the sequence, so the total is the longest
        # row's sum, not the mask's width (the reference's capture form, REFERENCE 3c).
        mask = "attention_mask"
        if not em.plan.int32_inputs:
            mask = g.op("Cast", [mask], f"{base}/Cast", to=TensorProto.INT32)
        lengths = g.op("ReduceSum", [mask, g.constant([1])], f"{base}/ReduceSum", keepdims=0)
        em.shared["seqlens_k"] = g.op("Sub", [lengths, g.constant(1, np.int32)], f"{base}/Sub")
        em.shared["total_seq_len"] = g.op("ReduceMax", [lengths], f"{base}/ReduceMax", keepdims=0)
    else:
        # Uncaptured form: total_sequence_length is the mask's width (Shape, on the CPU).
        total = g.op("ReduceSum", ["attention_mask", g.constant([1])], f"{base}/ReduceSum", keepdims=0)
        one = g.constant(1, np.int32 if em.plan.int32_inputs else np.int64)
        minus_one = g.op("Sub", [total, one], f"{base}/Sub")
        em.shared["seqlens_k"] = g.op("Cast", [minus_one], f"{base}/Cast_seqlens", to=TensorProto.INT32)
        shape = g.op("Shape", ["attention_mask"], f"{base}/Shape")
        length = g.op("Gather", [shape, g.constant(1)], f"{base}/Gather", axis=0)
        em.shared["total_seq_len"] = g.op("Cast", [length], f"{base}/Cast_total", to=TensorProto.INT32)
    for name, rope in ropes.items():
        cos, sin = rope.caches(em.plan.context_length, em.plan.io_dtype)
        suffix = "" if name == "global" else f"_{name}"
        em.shared[f"rope/{name}"] = (g.initializer(f"cos_cache{suffix}", cos), g.initializer(f"sin_cache{suffix}", sin))


@dataclass(frozen=True)
class Attention:
    """Self-attention of one layer, configured by the family.

    qk_norm: per-head RMSNorm on Q and K (Qwen3, Gemma 3). bias: q/k/v biases (Qwen2).
    out_bias: an o_proj bias where the checkpoint stores one (Llama or Qwen3 with attention_bias).
    local_rope_layers: layers that read the "local" rotary cache (Gemma 3's sliding layers).
    """

    qk_norm: bool = False
    bias: bool = False
    out_bias: bool = False
    local_rope_layers: tuple[int, ...] = ()
    prefix: str = "self_attn"
    # No SiLU here: a model of attention and MoE layers alone has none in --silu's form (plan.writes_silu).
    writes_silu = False

    def modules(self, i: int) -> list[str]:
        return [f"model.layers.{i}.{self.prefix}.{p}_proj" for p in "qkvo"]

    def pack_groups(self, i: int) -> list[PackGroup]:
        return [
            PackGroup(
                f"model.layers.{i}.{self.prefix}.qkv_proj",
                tuple(f"model.layers.{i}.{self.prefix}.{p}_proj" for p in "qkv"),
                "qkv",
            )
        ]

    def declare_io(self, em: Emitter, i: int) -> None:
        s, g, io = em.spec, em.graph, em.plan.io_type
        for kind in ("key", "value"):
            g.add_input(
                f"past_key_values.{i}.{kind}", io, ["batch_size", s.num_kv_heads, "past_sequence_length", s.head_dim]
            )
        for kind in ("key", "value"):
            g.add_output(f"present.{i}.{kind}", io, ["batch_size", s.num_kv_heads, "total_sequence_length", s.head_dim])

    def __call__(self, em: Emitter, i: int, x: str) -> str:
        s, g, layout = em.spec, em.graph, em.plan.layout
        base = f"/model/layers.{i}/attn"
        names = [em.weight(i, f"{self.prefix}.{p}_proj.weight") for p in "qkv"]
        shapes = [(s.num_heads * s.head_dim, s.hidden_size)] + [(s.num_kv_heads * s.head_dim, s.hidden_size)] * 2
        biases = [em.weight(i, f"{self.prefix}.{p}_proj.bias") for p in "qkv"] if self.bias else None
        fmts = [em.fmt(i, f"{self.prefix}.{p}_proj") for p in "qkv"]
        cos, sin = em.shared["rope/local" if i in self.local_rope_layers else "rope/global"]

        key = value = ""
        if em.plan.packed(f"model.layers.{i}.{self.prefix}.qkv_proj"):
            qkv = em.proj.matmul(x, f"{base}/qkv_proj", names, shapes, fmts[0], biases)
            if layout.packed_qkv_into_gqa:
                query = qkv
            else:
                query, key, value = g.node(
                    "Split", [qkv, g.constant([r for r, _ in shapes])], f"{base}/qkv_proj/Split", outputs=3, axis=-1
                )
        else:
            query, key, value = (
                em.proj.matmul(x, f"{base}/{p}_proj", [names[j]], [shapes[j]], fmts[j], [biases[j]] if biases else None)
                for j, p in enumerate("qkv")
            )

        extra = {}
        if self.qk_norm and layout.head_norm == "gqa":
            extra = dict(
                q_norm=em.norm_weight(i, f"{self.prefix}.q_norm.weight", s.head_dim),
                k_norm=em.norm_weight(i, f"{self.prefix}.k_norm.weight", s.head_dim),
            )
        elif self.qk_norm:
            q_norm, k_norm = (f"{self.prefix}.{p}_norm.weight" for p in "qk")
            query = self.head_norm(em, query, em.norm_weight(i, q_norm, s.head_dim), s.num_heads, f"{base}/q_norm")
            key = self.head_norm(em, key, em.norm_weight(i, k_norm, s.head_dim), s.num_kv_heads, f"{base}/k_norm")

        if not layout.rotary_in_gqa:
            query, key = self.rotary_nodes(em, query, key, base, cos, sin)

        attn = self.group_query_attention(em, i, query, key, value, base, cos, sin, **extra)
        o_shape = [(s.hidden_size, s.num_heads * s.head_dim)]
        o_bias = em.weight(i, f"{self.prefix}.o_proj.bias")
        # Only where stored: a family of one's own whose attention_bias means q/k/v alone (GLM)
        # still builds from the default.
        return em.proj.matmul(
            attn,
            f"{base}/o_proj",
            [em.weight(i, f"{self.prefix}.o_proj.weight")],
            o_shape,
            em.fmt(i, f"{self.prefix}.o_proj"),
            [o_bias] if self.out_bias and em.proj.checkpoint.has(o_bias) else None,
        )

    @staticmethod
    def rotary_nodes(em: Emitter, query: str, key: str, base: str, cos: str, sin: str) -> tuple[str, str]:
        """RotaryEmbedding nodes on Q and K, for targets whose GQA does not apply rotary (dml)."""
        s, g = em.spec, em.graph
        partial = s.rope.rotary_dim if s.rope.rotary_dim != s.head_dim else None  # Qwen3.5: 1/4 of head_dim
        return tuple(
            g.op(
                "RotaryEmbedding",
                [t, em.shared.get("position_ids", "position_ids"), cos, sin],
                f"{base}/{n}_rotary/RotaryEmbedding",
                domain=MS_DOMAIN,
                num_heads=h,
                interleaved=int(s.rope.interleaved),
                rotary_embedding_dim=partial,
            )
            for t, n, h in ((query, "q", s.num_heads), (key, "k", s.num_kv_heads))
        )

    @staticmethod
    def head_norm(em: Emitter, x: str, weight: str, heads: int, name: str) -> str:
        """RMSNorm over each head of x [B, S, heads*D] with a [D] scale (em.norm_weight's)."""
        g, d = em.graph, em.spec.head_dim
        if em.plan.layout.head_norm == "branchwise":
            return g.op(
                "BranchwiseRMSNorm",
                [x, weight],
                f"{name}/BranchwiseRMSNorm",
                domain=MS_DOMAIN,
                num_branches=heads,
                epsilon=em.spec.rms_norm_eps,
            )
        split = g.op("Reshape", [x, g.constant([0, 0, heads, d])], f"{name}/Reshape_in")
        normed = em.rms_norm(split, weight, name)
        return g.op("Reshape", [normed, g.constant([0, 0, heads * d])], f"{name}/Reshape_out")

    def group_query_attention(
        self,
        em: Emitter,
        i: int,
        query: str,
        key: str,
        value: str,
        base: str,
        cos: str,
        sin: str,
        q_norm: str | None = None,
        k_norm: str | None = None,
    ) -> str:
        s, g = em.spec, em.graph
        rotary = em.plan.layout.rotary_in_gqa
        inputs = [
            query,
            key,
            value,
            f"past_key_values.{i}.key",
            f"past_key_values.{i}.value",
            em.shared["seqlens_k"],
            em.shared["total_seq_len"],
            cos if rotary else "",
            sin if rotary else "",
        ]
        attrs = {}
        if q_norm:
            inputs += ["", "", "", "", "", q_norm, k_norm]  # position_ids .. v_scale unused
            attrs["qk_norm_epsilon"] = s.rms_norm_eps
        window = s.sliding_window if i in s.sliding_layers else None
        out, _, _ = g.node(
            "GroupQueryAttention",
            inputs,
            f"{base}/GroupQueryAttention",
            outputs=[f"{base}/GroupQueryAttention/output_0", f"present.{i}.key", f"present.{i}.value"],
            domain=MS_DOMAIN,
            num_heads=s.num_heads,
            kv_num_heads=s.num_kv_heads,
            scale=s.attention_scale or 1.0 / math.sqrt(s.head_dim),
            do_rotary=int(rotary),
            rotary_interleaved=int(s.rope.interleaved),
            local_window_size=window,
            **attrs,
        )
        return out
