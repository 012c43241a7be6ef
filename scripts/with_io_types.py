"""Make a copy of a built model folder whose graph takes int32 ids or mask, or gives fp32 logits.

    python scripts/with_io_types.py SRC DST [input_ids=int32] [attention_mask=int32] [logits=fp32]

onnxruntime-genai keeps its next tokens as int32 and casts them to the graph's input_ids type
each step, and casts fp16 logits to fp32 before it picks a token; on a GPU EP each cast is a Run
of a second onnxruntime session (scripts/host_profile.py shows where). A variant with int32
inputs or fp32 logits measures what those casts cost, beside the folder it is made from.
The int32 variants start from a capture build with int64 inputs (--int32-inputs auto or off),
whose consumers of input_ids and attention_mask (Gather, GatherBlockQuantized, Cast) take int32
as they are. An uncaptured
build subtracts an int64 one from the mask's sum, so with an int32 mask it does not load;
it is refused. fp32 logits get a Cast after the last node. The weights are hard-linked
(copied across filesystems): onnxruntime refuses external data behind a symlink out of the folder;
the other files are copied.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import onnx
from onnx import TensorProto, helper
from variant_folder import destination_refusal, fail, source_refusal, usage, write_whole

CHANGES = ("attention_mask=int32", "input_ids=int32", "logits=fp32")
MARK = ".with_io_types"  # in each copy this script makes: a folder it may replace


def main(argv: list[str]) -> int:
    code = usage(argv, __doc__, "change")
    if code is not None:
        return code
    unknown = sorted(set(argv[2:]) - set(CHANGES))
    if unknown:
        return fail(f"{unknown[0]!r} is not a change this script makes; pass one or more of {', '.join(CHANGES)}")
    src, dst, changes = Path(argv[0]), Path(argv[1]), set(argv[2:])
    # DST is replaced only where this script made it: it once removed whatever folder DST named
    # (the source itself, given twice, or a user's files).
    refusal = source_refusal(src, "model.onnx") or destination_refusal(src, dst, MARK, same_source=False)
    if refusal:
        return fail(refusal)
    try:
        model = onnx.load(src / "model.onnx", load_external_data=False)
    except Exception as e:  # protobuf's DecodeError: not a model
        print(
            f"error: {src / 'model.onnx'} is not a readable ONNX model ({type(e).__name__}); rebuild it",
            file=sys.stderr,
        )
        return 2
    types = {value.name: value.type.tensor_type.elem_type for value in model.graph.input}
    for name in ("input_ids", "attention_mask"):
        if f"{name}=int32" in changes and types.get(name) != TensorProto.INT64:
            print(f"error: {src}'s {name} is not int64; build it with --int32-inputs off", file=sys.stderr)
            return 2
    logits = next((o for o in model.graph.output if o.name == "logits"), None)
    if "logits=fp32" in changes and logits is not None and logits.type.tensor_type.elem_type == TensorProto.FLOAT:
        print(f"error: {src}'s logits are fp32 already", file=sys.stderr)
        return 2
    uncaptured = any(n.op_type == "Shape" and "attention_mask" in n.input for n in model.graph.node)
    if "attention_mask=int32" in changes and uncaptured:
        print(
            f"error: {src} is not a graph-capture build: its int64 mask arithmetic takes no int32 mask",
            file=sys.stderr,
        )
        return 2
    shutil.rmtree(dst, ignore_errors=True)
    # The weights are copied (across filesystems, a full disk may stop it) before model.onnx is written.
    if code := write_whole(dst, lambda: write(src, dst, model, changes), ", with room for the copy"):
        return code
    print(f"{dst}: {' '.join(sorted(changes))}")
    return 0


def write(src: Path, dst: Path, model: onnx.ModelProto, changes: set[str]) -> None:
    dst.mkdir(parents=True)
    (dst / MARK).write_text(f"{src.resolve()}\n")
    for item in src.iterdir():
        if item.name in ("model.onnx", MARK) or not item.is_file():
            continue
        # The weights are linked (to what a symlinked source points at: onnxruntime refuses a link out
        # of the folder); the rest is copied, so an edit of the copy's genai_config.json stays there.
        if item.name.endswith((".data", "_data")):
            try:
                os.link(item.resolve(), dst / item.name)
                continue
            except OSError:
                pass
        shutil.copy2(item.resolve(), dst / item.name)
    for value in model.graph.input:
        if f"{value.name}=int32" in changes:
            value.type.tensor_type.elem_type = TensorProto.INT32
    if "logits=fp32" in changes:
        for node in model.graph.node:
            node.output[:] = ["logits_io" if name == "logits" else name for name in node.output]
        cast = helper.make_node("Cast", ["logits_io"], ["logits"], "/logits/Cast", to=TensorProto.FLOAT)
        model.graph.node.append(cast)
        next(o for o in model.graph.output if o.name == "logits").type.tensor_type.elem_type = TensorProto.FLOAT
    onnx.save(model, dst / "model.onnx")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
