"""Does onnxruntime accept the built graph? Asked before a folder is published.

A family's graph with mismatched types (a Mul of fp16 activations by an fp32 scale, which a family
of one's own can write) was published, and onnxruntime refused the folder only when a user loaded it.
onnxruntime resolves every node's types when it loads a graph, so the graph is loaded here with its
weights as graph inputs: 64 ms on a Qwen3-0.6B-shape int4 graph with onnxruntime's import (14-22 ms
after it), nothing read from the weight file. Missing CPU kernels are no fault (a graph for another
EP may use ops the CPU lacks): the types were resolved before kernels are looked for.
"""

from __future__ import annotations

import re

import onnx
from onnx import helper

from builder.interruptible import import_native


def installed_onnxruntime() -> tuple[tuple[int, int], str]:
    text = import_native("onnxruntime").__version__
    match = re.match(r"(\d+)\.(\d+)", text)
    return ((int(match[1]), int(match[2])) if match else (0, 0)), text


def weightless(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with each weight stored outside it made a graph input of its type and shape."""
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    graph = stripped.graph
    kept, inputs = [], []
    for tensor in graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            inputs.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
        else:
            kept.append(tensor)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    graph.input.extend(inputs)
    return stripped


def load_check(model: onnx.ModelProto, target_version: tuple[int, int]) -> dict:
    """{'status': 'passed' | 'refused' | 'not run', 'onnxruntime': version, and 'reason' unless passed}."""
    ort = import_native("onnxruntime")

    installed, text = installed_onnxruntime()
    if installed < target_version:
        # Ops or attributes the target runs may be unknown to an older runtime: its refusal would say
        # nothing of the graph.
        wanted = f"{target_version[0]}.{target_version[1]}"
        why = "is older than" if installed > (0, 0) else "has a version that does not say whether it is as new as"
        return {
            "status": "not run",
            "onnxruntime": text,
            "reason": f"the installed onnxruntime {text} {why} the target's {wanted}",
        }
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4  # a refusal is reported once, by the builder, not also logged
    try:
        ort.InferenceSession(weightless(model).SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as e:
        if type(e).__name__ == "NotImplemented":  # no CPU kernel for a node: every type resolved already
            return {"status": "passed", "onnxruntime": text}
        said = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", " ".join(str(e).split()))
        return {"status": "refused", "onnxruntime": text, "reason": said}
    return {"status": "passed", "onnxruntime": text}
