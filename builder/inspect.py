"""`python -m builder inspect OUT`: node counts by op type and one layer's node sequence.

Reads only model.onnx (not the weights), so it is instant on any model size.
Works on folders from other builders too, for side-by-side comparisons.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
from pathlib import Path

import onnx

from builder.arg_parser import ArgumentParser
from builder.cli import write_stdout
from builder.kit.errors import BuilderError


def _model_in(folder: Path) -> Path:
    """The graph of a folder: the one its build report names, else model.onnx, else its one .onnx
    file, or a transformers.js folder's (in onnx/), as other builders and the hub lay them out."""
    try:
        report = json.loads((folder / "build_report.json").read_text())
    except (OSError, ValueError):
        report = None
    files = report.get("files") if isinstance(report, dict) else None
    named = files.get("model") if isinstance(files, dict) else None
    if isinstance(named, str):
        return folder / named
    if (folder / "model.onnx").is_file():
        return folder / "model.onnx"
    for where in (folder, folder / "onnx"):
        found = sorted(where.glob("*.onnx"))
        if len(found) == 1:
            return found[0]
        if found:
            names = ", ".join(str(f.relative_to(folder)) for f in found[:4]) + (", ..." if len(found) > 4 else "")
            raise BuilderError(f"{folder} holds {len(found)} models ({names}); pass the one to inspect")
    try:
        inside = [child for child in sorted(folder.iterdir()) if (child / "build_report.json").is_file()]
    except OSError:
        inside = []
    if inside:
        # A batch's output root (or out/): "ROOT/model.onnx not found" asked for a file no build writes there.
        more = f" ... ({len(inside)} builds)" if len(inside) > 4 else ""
        named = " ".join(str(child) for child in inside[:4]) + more
        raise BuilderError(f"{folder} holds no model, only builds in its folders: python -m builder inspect {named}")
    return folder / "model.onnx"


def _kind_of(path: Path) -> str:
    if path.is_dir():
        return "a folder"
    if path.is_char_device() or path.is_block_device():
        return "a device"
    if path.is_fifo():
        return "a pipe"
    if path.is_socket():
        return "a socket"
    return "not a regular file"


def summarize(model_path: Path, layer: int = 0) -> dict:
    if model_path.is_dir():
        model_path = _model_in(model_path)
    elif model_path.name.endswith((".onnx.data", ".onnx_data")) or ".onnx_data_" in model_path.name:
        raise BuilderError(f"{model_path} holds a model's weights, not its graph; pass the folder or its .onnx file")
    if not model_path.is_file():
        if model_path.exists():  # /dev/null, a fifo, a folder named model.onnx: 'not found' was untrue
            raise BuilderError(
                f"{model_path} is {_kind_of(model_path)}, not an ONNX model file; "
                "pass a built output folder or its model.onnx"
            )
        raise BuilderError(f"{model_path} not found; pass a built output folder or its model.onnx")
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except OSError as e:
        raise BuilderError(f"could not read {model_path} ({e.strerror or e})") from None
    except Exception as e:  # protobuf's DecodeError and friends: the bytes are not a model
        why = " ".join(str(e).split())  # one line: protobuf's JSON parser reports over several
        why = why if len(why) <= 160 else why[:157] + "..."
        fix = "truncated or not ONNX: rebuild it" if model_path.suffix == ".onnx" else "not ONNX: pass an .onnx file"
        raise BuilderError(
            f"{model_path} is not a readable ONNX model ({type(e).__name__}: {why}); the file is {fix}"
        ) from None
    if not model.graph.output or not model.opset_import:
        # Protobuf parses an empty file, and a file cut between two fields, as a model that
        # lacks whatever came after the cut: a graph has outputs and the model opsets.
        raise BuilderError(f"{model_path} holds no ONNX graph; the file is truncated or not ONNX: rebuild it")
    nodes = model.graph.node
    counts = collections.Counter(n.op_type for n in nodes)
    # Node names follow /model/layers.{i}/... (this builder's, onnxruntime-genai's and torch.onnx
    # exports'); a graph named otherwise gets an empty sequence, which the text output says.
    pattern = re.compile(rf"/model/layers\.{layer}/")
    sequence = [n.op_type for n in nodes if pattern.search(n.name)]
    layers = {int(m.group(1)) for n in nodes if (m := re.search(r"/model/layers\.(\d+)/", n.name))}
    if layers and not sequence:
        raise BuilderError(f"--layer {layer}: {model_path} has layers 0-{max(layers)}; pass one of them")
    return {
        "model": str(model_path),
        "nodes": sum(counts.values()),
        "by_op_type": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        f"layer_{layer}": sequence,
    }


def main(argv: list[str]) -> int:
    parser = ArgumentParser(
        prog="python -m builder inspect", description="Print node counts by op type and one layer's node sequence."
    )
    parser.add_argument("outputs", nargs="+", metavar="OUT", help="Built model folder(s) or model.onnx file(s).")
    parser.add_argument("--layer", type=int, default=0, help="Which layer's node sequence to show (default: 0).")
    parser.add_argument("--json", action="store_true", help="Print JSON instead of text.")
    parser.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    # `--quiet inspect OUT` as `--quiet` builds: accepted, and there is no progress to hide.
    parser.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    summaries = [summarize(Path(p), args.layer) for p in args.outputs]
    if args.json:
        write_stdout(json.dumps(summaries, indent=2) + "\n")
        return 0
    for s in summaries:
        lines = [f"{s['model']}: {s['nodes']} nodes", *(f"  {n:6d}  {op}" for op, n in s["by_op_type"].items())]
        sequence = s[f"layer_{args.layer}"]
        # A blank line read as a layer without nodes; the graph names none /model/layers.N/.
        shown = " -> ".join(sequence) if sequence else f"(no node is named /model/layers.{args.layer}/...)"
        lines.append(f"  layer {args.layer}: {shown}")
        write_stdout("\n".join(lines) + "\n")
    return 0
