"""Token embeddings, the lm_head and logits.

Tied int4 models read the lm_head's MatMulNBits bytes through GatherBlockQuantized
(one copy on disk); untied ones, and tied ones whose lm_head has another format,
quantize their own table. int8 tables stay float:
8-bit GatherBlockQuantized is not verified on every EP here.
"""

from __future__ import annotations

from builder.kit.blocks import left_padding, right_padding
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
    if s.tie_word_embeddings and not em.plan.fmt(EMBED).quantized:
        return table  # the Gather's float table, transposed in the graph
    weight = em.proj.float_rows([source], [(s.vocab_size, s.hidden_size)])
    return em.graph.initializer(f"{LM_HEAD}.weight", transposed(weight))


def embedding(em: Emitter, lm_head: QuantizedTensor | str) -> str:
    """Token embeddings: int4 GatherBlockQuantized, or a float Gather."""
    s, g = em.spec, em.graph
    fmt = em.plan.fmt(EMBED)
    shape = (s.vocab_size, s.hidden_size)
    table = em.weight(None, f"{EMBED}.weight")
    if fmt.quantized and fmt.bits == 4:
        if s.tie_word_embeddings and isinstance(lm_head, QuantizedTensor) and lm_head.format == fmt:
            return _gather_quantized(em, lm_head)
        # Untied, or a tied lm_head in another format (--float-layers lm_head, --int8-layers
        # lm_head): the embedding still gathers from int4, its own table, not a float copy.
        return _gather_quantized(em, em.proj.quantized_weight(EMBED, [table], fmt, [shape]))
    name = em.proj.float_initializer(f"{EMBED}.weight", table, shape)
    return g.op("Gather", [name, token_ids(em)], "/model/embed_tokens/Gather", axis=0)


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


def last_positions(em: Emitter, hidden: str) -> str:
    """hidden [B, S, H] -> [B, 1, H]: each row's last token of this call (right_padding.last_token_index)."""
    g = em.graph
    base = "/lm_head/last_position"
    index = right_padding.last_token_index(em)
    index = g.op("Unsqueeze", [index, g.constant([1])], f"{base}/Unsqueeze")
    rows = g.op("GatherND", [hidden, index], f"{base}/GatherND", batch_dims=1)
    return g.op("Unsqueeze", [rows, g.constant([1])], f"{base}/Unsqueeze_rows")
