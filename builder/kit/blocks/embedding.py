"""Token embeddings, the lm_head and logits.

Tied int4 models read the lm_head's MatMulNBits bytes through GatherBlockQuantized
(one copy on disk); untied ones, and tied ones whose lm_head has another format,
quantize their own table. int8 tables stay float:
8-bit GatherBlockQuantized is not verified on every EP here.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnx import TensorProto

from builder.kit.blocks import left_padding
from builder.kit.blocks.emitter import Emitter
from builder.kit.graph import MS_DOMAIN
from builder.kit.linear import QuantizedTensor, transposed

EMBED, LM_HEAD = "model.embed_tokens", "lm_head"


def lm_head_weight(em: Emitter) -> QuantizedTensor | str:
    """The lm_head weight: quantized (and shared with the embedding when tied) or float [H, V]."""
    s = em.spec
    table = em.weight(None, f"{EMBED}.weight")
    source = table if s.tie_word_embeddings else em.weight(None, f"{LM_HEAD}.weight")
    fmt = em.plan.fmt(LM_HEAD)
    if fmt.quantized:
        return em.proj.quantized_weight(LM_HEAD, [source], fmt, [(s.vocab_size, s.hidden_size)])
    if s.tie_word_embeddings and not gathers_int4(em):
        # The Gather's float table, transposed in the graph. An int8 embedding format (-p int8,
        # --int8-layers model.embed_tokens) is a float table too: testing `quantized` wrote the
        # table twice in float there.
        return table
    weight = em.proj.float_rows([source], [(s.vocab_size, s.hidden_size)])
    return em.graph.initializer(f"{LM_HEAD}.weight", transposed(weight))


def embedding(em: Emitter, lm_head: QuantizedTensor | str) -> str:
    """Token embeddings: int4 GatherBlockQuantized, or a float Gather."""
    s, g = em.spec, em.graph
    fmt = em.plan.fmt(EMBED)
    shape = (s.vocab_size, s.hidden_size)
    table = em.weight(None, f"{EMBED}.weight")
    if gathers_int4(em):
        if s.tie_word_embeddings and isinstance(lm_head, QuantizedTensor) and lm_head.format == fmt:
            return _gather_quantized(em, lm_head)
        # Untied, or a tied lm_head in another format (--float-layers lm_head, --int8-layers
        # lm_head): the embedding still gathers from int4, its own table, not a float copy.
        return _gather_quantized(em, em.proj.quantized_weight(EMBED, [table], fmt, [shape]))
    name = em.proj.float_initializer(f"{EMBED}.weight", table, shape)
    return g.op("Gather", [name, token_ids(em)], "/model/embed_tokens/Gather", axis=0)


def gathers_int4(em: Emitter) -> bool:
    """Whether the embedding gathers from an int4 table; any other format keeps a float one."""
    fmt = em.plan.fmt(EMBED)
    return fmt.quantized and fmt.bits == 4


def token_ids(em: Emitter) -> str:
    """input_ids, or their left-padding reordering (kit/blocks/left_padding.py)."""
    return em.shared.get("input_ids", "input_ids")


def _gather_quantized(em: Emitter, q: QuantizedTensor) -> str:
    s, g = em.spec, em.graph
    n_blocks = -(-s.hidden_size // q.format.block_size)
    flat = n_blocks * q.format.block_size // 2
    data = g.op("Reshape", [q.b, g.constant([s.vocab_size, flat])], "/model/embed_tokens/Reshape")
    inputs = [data, token_ids(em), q.scales] + ([q.zero_points] if q.zero_points else [])
    out = g.op(
        "GatherBlockQuantized",
        inputs,
        "/model/embed_tokens/GatherBlockQuantized",
        domain=MS_DOMAIN,
        bits=4,
        block_size=q.format.block_size,
        gather_axis=0,
        quantize_axis=1,
    )
    if n_blocks * q.format.block_size != s.hidden_size:
        # Rows are padded to whole blocks; the padding is not part of the embedding.
        out = g.op(
            "Slice", [out, g.constant([0]), g.constant([s.hidden_size]), g.constant([-1])], "/model/embed_tokens/Slice"
        )
    return out


def logits(em: Emitter, hidden: str, lm_head: QuantizedTensor | str) -> None:
    g = em.graph
    if left_padding.active(em):  # transformers.js: rows back in its order, the positions it asks for
        hidden = left_padding.restore(em, hidden, trailing_positions(em))
    elif em.plan.last_logits:
        hidden = last_positions(em, hidden)
    if isinstance(lm_head, QuantizedTensor):
        out = em.proj.matmul_nbits(hidden, "/lm_head/MatMulNBits", lm_head)
    elif lm_head == em.weight(None, f"{EMBED}.weight"):
        transposed = g.op("Transpose", [f"{EMBED}.weight"], "/lm_head/Transpose", perm=[1, 0])
        out = g.op("MatMul", [hidden, transposed], "/lm_head/MatMul")
    else:
        out = g.op("MatMul", [hidden, lm_head], "/lm_head/MatMul")
    # Nothing reads the projection's output yet, so renaming it costs no Identity node.
    assert g.nodes[-1].output[0] == out
    g.nodes[-1].output[0] = "logits"


def trailing_positions(em: Emitter) -> str | None:
    """[-k], where a left-padded graph keeps only its last k positions (each row's last token is
    the last column): num_logits_to_keep's k (0 keeps every one: a Slice from -0), or 1 under
    --logits last; None keeps every position."""
    g = em.graph
    if em.plan.logits_to_keep:
        count = g.op("Unsqueeze", ["num_logits_to_keep", g.constant([0])], "/lm_head/num_logits_to_keep/Unsqueeze")
        return g.op("Neg", [count], "/lm_head/num_logits_to_keep/Neg")
    return g.constant([-1]) if em.plan.last_logits else None


@dataclass(frozen=True)
class LastToken:
    """Each row's last token of this call, as the graph computes it once (last_token).

    index: [B] int64. index_for_arithmetic: the same in the type the graph's index arithmetic
    runs in (int32 in captured graphs, which may hold no int64 arithmetic; int64 elsewhere).
    Captured graphs also keep `ones`, [B, S] float32 (they may hold no Shape); the others
    `length`, [1] int64: S.
    """

    index: str
    index_for_arithmetic: str
    ones: str | None = None
    length: str | None = None


def last_token(em: Emitter) -> LastToken:
    """onnxruntime-genai pads batched prompts on the right (PadInputs), so a shorter row's last
    token is at seqlens_k (its unpadded length - 1), not at S - 1; in decode steps and later
    chunks of one sequence seqlens_k counts the past too, and S - 1 is the last token."""
    if "last_token" in em.shared:
        return em.shared["last_token"]
    g = em.graph
    base = "/lm_head/last_position"  # where --logits last first read it
    if em.plan.target.graph_capture:
        # Shape runs on the CPU, which a captured graph may not hold: the last index of an
        # all-equal [B, S] row (ArgMax, select_last_index) is S - 1, on the GPU.
        ids = "input_ids"
        if not em.plan.int32_inputs:
            ids = g.op("Cast", [ids], f"{base}/Cast_ids", to=TensorProto.INT32)
        same = g.op("Equal", [ids, ids], f"{base}/Equal")
        ones = g.op("Cast", [same], f"{base}/Cast_same", to=TensorProto.FLOAT)
        last = g.op("ArgMax", [ones], f"{base}/ArgMax", axis=1, keepdims=0, select_last_index=1)
        last = g.op("Cast", [last], f"{base}/Cast_last", to=TensorProto.INT32)
        index32 = g.op("Min", [em.shared["seqlens_k"], last], f"{base}/Min")
        index = g.op("Cast", [index32], f"{base}/Cast_index", to=TensorProto.INT64)
        found = LastToken(index, index32, ones=ones)
    else:
        length = g.op("Shape", ["input_ids"], f"{base}/Shape", start=1, end=2)
        last = g.op("Sub", [length, g.constant([1])], f"{base}/Sub")
        seqlens = g.op("Cast", [em.shared["seqlens_k"]], f"{base}/Cast", to=TensorProto.INT64)
        index = g.op("Min", [seqlens, last], f"{base}/Min")
        found = LastToken(index, index, length=length)
    em.shared["last_token"] = found
    return found


def last_positions(em: Emitter, hidden: str) -> str:
    """hidden [B, S, H] -> [B, 1, H]: each row's last token of this call (last_token)."""
    g = em.graph
    base = "/lm_head/last_position"
    index = g.op("Unsqueeze", [last_token(em).index, g.constant([1])], f"{base}/Unsqueeze")
    rows = g.op("GatherND", [hidden, index], f"{base}/GatherND", batch_dims=1)
    return g.op("Unsqueeze", [rows, g.constant([1])], f"{base}/Unsqueeze_rows")
