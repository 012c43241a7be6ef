"""Make a copy of a built model folder whose graph takes int32 ids or mask, or gives fp32 logits.

    python scripts/with_io_types.py SRC DST [input_ids=int32] [attention_mask=int32] [logits=fp32]

onnxruntime-genai keeps its next tokens as int32 and casts them to the graph's input_ids type
each step, and casts fp16 logits to fp32 before it picks a token; on a GPU EP each cast is a Run
of a second onnxruntime session (scripts/host_profile.py shows where). A variant with int32
inputs or fp32 logits measures what those casts cost, beside the folder it is made from.
Graph-capture builds take int32 inputs already (--int32-inputs auto), so the int32 variants
start from a capture build with --int32-inputs off, whose consumers of input_ids and
attention_mask (Gather, GatherBlockQuantized, Cast) take int32 as they are. An uncaptured
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

CHANGES = {"input_ids=int32", "attention_mask=int32", "logits=fp32"}
MARK = ".with_io_types"  # in each copy this script makes: a folder it may replace


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        return 0
    if len(argv) < 3:
        print(__doc__.strip(), file=sys.stderr)
        print("error: pass SRC, DST and at least one change", file=sys.stderr)
        return 2
    unknown = sorted(set(argv[2:]) - CHANGES)
    if unknown:
        print(
            f"error: {unknown[0]!r} is not a change this script makes; "
            f"pass one or more of {', '.join(sorted(CHANGES))}",
            file=sys.stderr,
        )
        return 2
    src, dst, changes = Path(argv[0]), Path(argv[1]), set(argv[2:])
    if not (src / "model.onnx").is_file():
        tjs = (src / "onnx").is_dir() and (src / "config.json").is_file()
        what = (
            "is a --format transformers.js folder; this script rewrites genai folders" if tjs else "has no model.onnx"
        )
        print(f"error: {src} {what}; pass a built model folder", file=sys.stderr)
        return 2
    # DST replaced the source given twice (it had this script's mark), or was made inside it.
    real_src, real_dst = src.resolve(), dst.resolve()
    if real_dst == real_src or real_src in real_dst.parents or real_dst in real_src.parents:
        print(f"error: {dst} is {src}, or inside it or around it; pass a folder beside it for DST", file=sys.stderr)
        return 2
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
    # DST is replaced only where this script made it: it once removed whatever folder DST named
    # (the source itself, given twice, or a user's files).
    if dst.exists() and not (dst / MARK).is_file():
        print(f"error: {dst} exists and is not a copy this script made; pass a new folder for DST", file=sys.stderr)
        return 2
    shutil.rmtree(dst, ignore_errors=True)
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
    print(f"{dst}: {' '.join(sorted(changes))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
