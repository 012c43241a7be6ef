"""Right-padded batches, as onnxruntime-genai pads a batch of unequal prompts.

genai fills a shorter row with pad tokens after its last one and gives them mask 0. Attention
reads that as meant (a row's length is its mask's sum), but a recurrent mixer (Gated DeltaNet)
runs over every position of the chunk, so the pads after a row's last token went into its conv
and recurrent states, and the row's next tokens were decoded from those (a tiny Qwen3.5's short
row left its own run's tokens at its second new token). Here a recurrent layer of a genai folder:
- gets its gate inputs pushed to fp16's lowest value at the pads (gate_inputs), where the decay
  (Softplus) and the update rate (Sigmoid) are then 0: the state passes a pad unchanged;
- keeps as its conv state the k-1 inputs that end at the row's last token (conv_state), not the
  chunk's last k-1.

A row's last token of the call is min(seqlens_k, S - 1), the position --logits last reads. Decode
steps (one token) and later chunks of one row have no pads: there the gate inputs pass as they
are and the gathered conv state is the op's own. transformers.js pads on the left instead
(kit/blocks/left_padding.py).
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from builder.kit.blocks.emitter import Emitter

BASE = "/model/right_padding"
# The gate's Softplus and Sigmoid run in float32 (LinearAttentionGate): of fp16's lowest value
# both are 0, and the value fits the fp16 activations too.
PAD_GATE = -65504.0


def active(em: Emitter) -> bool:
    """--padded-batches, as the plan resolved it (genai folders of models with recurrent layers)."""
    return bool(em.plan.right_padding)


def last_token_index(em: Emitter) -> str:
    """[B] int64: each row's last token of this call.

    onnxruntime-genai pads batched prompts on the right (PadInputs), so a shorter row's last
    token is at seqlens_k (its unpadded length - 1), not at S - 1; in decode steps and later
    chunks of one sequence seqlens_k counts the past too, and S - 1 is the last token.
    """
    if "last_token_index" in em.shared:
        return em.shared["last_token_index"]
    g = em.graph
    base = "/lm_head/last_position"  # where --logits last first read it
    if em.plan.target.graph_capture:
        # Shape runs on the CPU, which a captured graph may not hold: the last index of an
        # all-equal [B, S] row (ArgMax, select_last_index) is S - 1, on the GPU.
        ids = "input_ids"
        if not em.plan.int32_inputs:
            ids = g.op("Cast", [ids], f"{base}/Cast_ids", to=TensorProto.INT32)
        same = g.op("Equal", [ids, ids], f"{base}/Equal")
        ones = em.shared["right_padding/ones"] = g.op("Cast", [same], f"{base}/Cast_same", to=TensorProto.FLOAT)
        last = g.op("ArgMax", [ones], f"{base}/ArgMax", axis=1, keepdims=0, select_last_index=1)
        last = g.op("Cast", [last], f"{base}/Cast_last", to=TensorProto.INT32)
        index = em.shared["right_padding/index32"] = g.op("Min", [em.shared["seqlens_k"], last], f"{base}/Min")
        index = g.op("Cast", [index], f"{base}/Cast_index", to=TensorProto.INT64)
    else:
        length = em.shared["right_padding/length"] = g.op("Shape", ["input_ids"], f"{base}/Shape", start=1, end=2)
        last = g.op("Sub", [length, g.constant([1])], f"{base}/Sub")
        seqlens = g.op("Cast", [em.shared["seqlens_k"]], f"{base}/Cast", to=TensorProto.INT64)
        index = g.op("Min", [seqlens, last], f"{base}/Min")
    em.shared["last_token_index"] = index
    return index


def _count(em: Emitter) -> str:
    """[B]: each row's tokens in this call (last_token_index + 1), int32 in captured graphs (no
    int64 arithmetic there), int64 elsewhere."""
    if "right_padding/count" not in em.shared:
        g = em.graph
        last = last_token_index(em)  # in captured graphs it also leaves its int32 form
        if em.plan.target.graph_capture:
            count = g.op("Add", [em.shared["right_padding/index32"], g.constant(1, np.int32)], f"{BASE}/Add")
        else:
            count = g.op("Add", [last, g.constant(1)], f"{BASE}/Add")
        em.shared["right_padding/count"] = count
    return em.shared["right_padding/count"]


def _pads(em: Emitter) -> str:
    """[B, S, 1] bool: the positions after each row's last token."""
    if "right_padding/pads" not in em.shared:
        g = em.graph
        count = _count(em)
        if em.plan.target.graph_capture:  # positions 1 .. S without Shape: CumSum of ones, in float
            positions = g.op("CumSum", [em.shared["right_padding/ones"], g.constant(1)], f"{BASE}/CumSum")
            count = g.op("Cast", [count], f"{BASE}/Cast_count", to=TensorProto.FLOAT)
        else:
            size = g.op("Squeeze", [em.shared["right_padding/length"], g.constant([0])], f"{BASE}/Squeeze")
            end = g.op("Add", [size, g.constant(1)], f"{BASE}/Add_end")
            positions = g.op("Range", [g.constant(1), end, g.constant(1)], f"{BASE}/Range")
        count = g.op("Unsqueeze", [count, g.constant([1])], f"{BASE}/Unsqueeze_count")
        pads = g.op("Greater", [positions, count], f"{BASE}/Greater")
        em.shared["right_padding/pads"] = g.op("Unsqueeze", [pads, g.constant([2])], f"{BASE}/Unsqueeze_pads")
    return em.shared["right_padding/pads"]


def gate_inputs(em: Emitter, gates: str, name: str) -> str:
    """The gate projections [B, S, n] (LinearAttentionGate's a and b) with PAD_GATE at the pads."""
    g = em.graph
    lowest = g.constant(PAD_GATE, em.plan.io_dtype)
    return g.op("Where", [_pads(em), lowest, gates], f"{name}/right_padding/Where")


def conv_state(em: Emitter, past: str, chunk: str, state_length: int, channels: int, output: str, name: str) -> None:
    """Writes `output`: the conv state [B, C, k-1] that ends at each row's last token, gathered from
    the past state and this call's conv input (channels first, [B, C, S])."""
    g = em.graph
    key = f"right_padding/conv_indices/{state_length}/{channels}"
    if key not in em.shared:
        # In the [past, chunk] window a row's last token is at (k-1) + index: its state is the
        # k-1 positions from index + 1 on.
        steps = np.arange(state_length, dtype=np.int32 if em.plan.target.graph_capture else np.int64)
        start = _count(em)
        start = g.op("Unsqueeze", [start, g.constant([1, 2])], f"{BASE}/conv/Unsqueeze")
        indices = g.op("Add", [start, g.constant(steps, steps.dtype)], f"{BASE}/conv/Add_steps")  # [B, 1, k-1]
        em.shared[key] = g.op("Expand", [indices, g.constant([1, channels, 1])], f"{BASE}/conv/Expand_{channels}")
    window = g.op("Concat", [past, chunk], f"{name}/right_padding/Concat", axis=2)
    g.node("GatherElements", [window, em.shared[key]], f"{name}/right_padding/GatherElements", outputs=[output], axis=2)
