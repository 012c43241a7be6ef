"""Left-padded batches, as transformers.js pads a batch of unequal prompts.

GroupQueryAttention reads attention_mask as right padding: a row's sequence length is its mask's
sum, and its tokens are the first that many of the chunk (and of the KV cache). A left-padded row
has its pad tokens first, so GQA took the pads as that row's prompt (a tiny Qwen3's short row came
out 5.2 logits off its own run). For --format transformers.js builds the graph moves each row's
leading pads to the end of the chunk, where GQA ignores them, which is what onnxruntime-genai's
right-padded batches give GQA; the KV cache is then right-padded too, and later steps (one token
a row, no pads) need no moving.

Two ways, chosen by the mixers (DecoderBuilder.build_graph):
- whole model (attention only): input_ids (and position_ids) are moved once before the
  embedding, the final hidden state moved back before the lm_head, so every position's logits are
  where transformers.js reads them. Per token work does not care about the order.
- around attention (hybrids whose recurrent mixers keep a state, Qwen3.5): a recurrent layer
  absorbs whatever follows a row's last token, so the stream stays left-padded; each attention
  layer's input is moved and its output moved back, and a recurrent layer's input is zeroed at
  the pads, as transformers does (apply_mask_to_padding_states), which leaves a zero state zero.

The moves read each row's leading pads from the mask's last S columns (ArgMax of the first 1): a
right-padded or unpadded row has none and is left as it is.
"""

from __future__ import annotations

from builder.kit.blocks.emitter import Emitter
from builder.kit.errors import BuilderError

BASE = "/model/left_padding"


def prepare(em: Emitter, whole_model: bool) -> None:
    """The gather indices every move uses, in em.shared: "left_padding/to_right" [B, S] (chunk
    position of each right-padded position) and "left_padding/back" [B, S] (the inverse)."""
    g = em.graph
    length = g.op("Shape", ["input_ids"], f"{BASE}/Shape", start=1, end=2)  # [S]
    chunk = g.op(
        "Slice",
        ["attention_mask", g.op("Neg", [length], f"{BASE}/Neg"), g.constant([2**62]), g.constant([1])],
        f"{BASE}/Slice",
    )
    # [B, 1]: the first 1's column. On the int64 mask, as the rest of this arithmetic: the WebGPU EP
    # would take a float ArgMax, and its result would come back to the CPU every step.
    pads = g.op("ArgMax", [chunk], f"{BASE}/ArgMax", axis=1, keepdims=1)
    count = g.op("Squeeze", [length, g.constant([0])], f"{BASE}/Squeeze")
    positions = g.op("Range", [g.constant(0), count, g.constant(1)], f"{BASE}/Range")  # [S]
    last = g.op("Sub", [length, g.constant([1])], f"{BASE}/Sub")
    shifted = g.op("Add", [positions, pads], f"{BASE}/Add")
    em.shared["left_padding/to_right"] = g.op("Min", [shifted, last], f"{BASE}/Min")
    back = g.op("Sub", [positions, pads], f"{BASE}/Sub_back")
    em.shared["left_padding/back"] = g.op("Max", [back, g.constant([0])], f"{BASE}/Max")
    em.shared["left_padding/whole_model"] = whole_model
    if not em.plan.layout.rotary_in_gqa:  # RotaryEmbedding nodes read positions in the moved order
        em.shared["position_ids"] = _positions(em, "position_ids", "to_right")
    if whole_model:
        em.shared["input_ids"] = _positions(em, "input_ids", "to_right")
    else:
        mask = g.op("Cast", [chunk], f"{BASE}/Cast_mask", to=em.plan.io_type)
        em.shared["left_padding/mask"] = g.op("Unsqueeze", [mask, g.constant([2])], f"{BASE}/Unsqueeze_mask")


def active(em: Emitter) -> bool:
    return "left_padding/to_right" in em.shared


def whole_model(em: Emitter) -> bool:
    return active(em) and em.shared["left_padding/whole_model"]


def _positions(em: Emitter, name: str, which: str) -> str:
    """A [B, S] input gathered along S."""
    return em.graph.op(
        "GatherElements", [name, em.shared[f"left_padding/{which}"]], f"{BASE}/{name}/GatherElements", axis=1
    )


def move(em: Emitter, x: str, which: str, name: str) -> str:
    """x [B, S, H] gathered along S by the "to_right" or "back" indices."""
    g = em.graph
    key = f"left_padding/{which}/indices"
    if key not in em.shared:
        em.shared[key] = g.op(
            "Unsqueeze", [em.shared[f"left_padding/{which}"], g.constant([2])], f"{BASE}/Unsqueeze_{which}"
        )
    return g.op("GatherND", [x, em.shared[key]], f"{name}/GatherND", batch_dims=1)


def restore(em: Emitter, hidden: str, trailing: str | None) -> str:
    """The final hidden state [B, S, H] in the order transformers.js gave the tokens (each row's pads
    first), only its last k positions where `trailing` ([-k]) says so."""
    g = em.graph
    if not whole_model(em):  # the stream kept that order
        if trailing is None:
            return hidden
        return g.op("Slice", [hidden, trailing, g.constant([2**62]), g.constant([1])], f"{BASE}/Slice_kept")
    em.shared["left_padding/restored"] = True
    back = em.shared["left_padding/back"]
    if trailing is not None:
        back = g.op("Slice", [back, trailing, g.constant([2**62]), g.constant([1])], f"{BASE}/Slice_kept")
    indices = g.op("Unsqueeze", [back, g.constant([2])], f"{BASE}/Unsqueeze_kept")
    return g.op("GatherND", [hidden, indices], f"{BASE}/back/GatherND", batch_dims=1)


def mixer(em: Emitter, block, i: int, x: str) -> str:
    """Layer i's mixer on x, in the order it needs (around-attention mode; else as it is)."""
    if not active(em) or whole_model(em):
        return block(em, i, x)
    em.shared.setdefault("left_padding/mixed", set()).add(i)
    base = f"/model/layers.{i}/left_padding"
    if getattr(block, "recurrent", False):
        return block(em, i, em.graph.op("Mul", [x, em.shared["left_padding/mask"]], f"{base}/Mul"))
    out = block(em, i, move(em, x, "to_right", f"{base}/to_right"))
    return move(em, out, "back", f"{base}/back")


def check(em: Emitter, family: str, layers: int) -> None:
    """Refuse a graph that skipped the moves (a family's own decoder_layer, embed or logits that
    does not go through them): its left-padded rows would come out wrong, without a word."""
    if not active(em):
        return
    if not whole_model(em):
        missing = sorted(set(range(layers)) - em.shared.get("left_padding/mixed", set()))
        if missing:
            raise BuilderError(
                f"{family}: layers {missing[:8]} ran their mixer without self.mix(em, i, hidden), so a "
                "--format transformers.js build would read left-padded batches wrong; call self.mix in "
                "decoder_layer (docs/architecture.md), or build --format genai"
            )
        return
    ids = em.shared["input_ids"]
    if not any(ids in node.input for node in em.graph.nodes) or not em.shared.get("left_padding/restored"):
        raise BuilderError(
            f"{family}: its embed or logits hook does not take the token ids from embedding.embedding() "
            "or end in embedding.logits(), so a --format transformers.js build would read left-padded "
            "batches wrong; call them from its hooks (docs/architecture.md), or build --format genai"
        )
