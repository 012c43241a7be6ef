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

A row's last token of the call is min(seqlens_k, S - 1), the position --logits last reads
(embedding.last_token). Decode steps (one token) and later chunks of one row have no pads: there
the gate inputs pass as they are and the gathered conv state is the op's own. transformers.js pads
on the left instead (kit/blocks/left_padding.py).
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from builder.kit.blocks.embedding import last_token
from builder.kit.blocks.emitter import Emitter

BASE = "/model/right_padding"
# The gate's Softplus and Sigmoid run in float32 (LinearAttentionGate): of fp16's lowest value
# both are 0, and the value fits the fp16 activations too.
PAD_GATE = -65504.0


def active(em: Emitter) -> bool:
    """--padded-batches, as the plan resolved it (genai folders of models with recurrent layers)."""
    return bool(em.plan.right_padding)


def _index_dtype(em: Emitter):
    """Captured graphs may hold no int64 arithmetic (it runs on the CPU): theirs is int32."""
    return np.int32 if em.plan.target.graph_capture else np.int64


def _count(em: Emitter) -> str:
    """[B]: each row's tokens in this call, in the type of the graph's index arithmetic."""
    if "right_padding/count" not in em.shared:
        g = em.graph
        index = last_token(em).index_for_arithmetic
        one = g.constant(1, _index_dtype(em))
        em.shared["right_padding/count"] = g.op("Add", [index, one], f"{BASE}/Add")
    return em.shared["right_padding/count"]


def _pads(em: Emitter) -> str:
    """[B, S, 1] bool: the positions after each row's last token."""
    if "right_padding/pads" not in em.shared:
        g = em.graph
        last, count = last_token(em), _count(em)
        if em.plan.target.graph_capture:  # positions 1 .. S without Shape: CumSum of ones, in float
            positions = g.op("CumSum", [last.ones, g.constant(1)], f"{BASE}/CumSum")
            count = g.op("Cast", [count], f"{BASE}/Cast_count", to=TensorProto.FLOAT)
        else:
            size = g.op("Squeeze", [last.length, g.constant([0])], f"{BASE}/Squeeze")
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
        steps = np.arange(state_length, dtype=_index_dtype(em))
        start = _count(em)
        start = g.op("Unsqueeze", [start, g.constant([1, 2])], f"{BASE}/conv/Unsqueeze")
        indices = g.op("Add", [start, g.constant(steps, steps.dtype)], f"{BASE}/conv/Add_steps")  # [B, 1, k-1]
        em.shared[key] = g.op("Expand", [indices, g.constant([1, channels, 1])], f"{BASE}/conv/Expand_{channels}")
    window = g.op("Concat", [past, chunk], f"{name}/right_padding/Concat", axis=2)
    g.node("GatherElements", [window, em.shared[key]], f"{name}/right_padding/GatherElements", outputs=[output], axis=2)
