"""The load check before publishing: onnxruntime resolves the built graph's types with its weights
as graph inputs (builder/load_check.py)."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from builder.kit.targets import NEWEST_KNOWN_ORT
from builder.load_check import installed_onnxruntime, load_check, weightless


def _model(node, inputs, outputs, initializers=()):
    graph = helper.make_graph([node], "g", inputs, outputs, list(initializers))
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def _value(name, dtype, shape=(4, 4)):
    return helper.make_tensor_value_info(name, dtype, list(shape))


@pytest.mark.parametrize(
    "name,options",
    [
        ("qwen3", dict(precision="int4", ep="cpu")),
        ("qwen3", dict(precision="int4", ep="webgpu")),
        ("qwen3", dict(precision="int4", ep="cuda")),
        ("qwen3", dict(precision="fp16", ep="cpu")),
        ("qwen3_5", dict(precision="int4", ep="cpu")),
        ("qwen3-moe", dict(precision="int4", ep="cpu")),
        ("gemma3", dict(precision="int4", ep="webgpu")),
    ],
)
def test_the_builder_s_own_graphs_pass(built, name, options):
    checked = built(name, **options).report["load_check"]
    assert checked == {"status": "passed", "onnxruntime": installed_onnxruntime()[1]}, checked


def test_a_target_newer_than_the_builder_knows_is_judged_by_the_newest_it_knows(built):
    """Such a target gets the graph of the newest runtime the builder knows (the build warns so), so an
    onnxruntime that new can judge it: the check is not left undone for want of a release that does not exist."""
    installed, text = installed_onnxruntime()
    assert installed >= NEWEST_KNOWN_ORT, f"the test venv's onnxruntime {text} predates {NEWEST_KNOWN_ORT}"
    future = f"{NEWEST_KNOWN_ORT[0]}.{NEWEST_KNOWN_ORT[1] + 1}"
    result = built("qwen3", precision="int4", ep="cpu", target_ort=future)
    assert result.report["load_check"] == {"status": "passed", "onnxruntime": text}, result.report["load_check"]


def test_weights_stored_outside_become_inputs_and_nothing_is_read(built, tmp_path):
    folder = built("qwen3", precision="int4", ep="cpu").output
    model = onnx.load(folder / "model.onnx", load_external_data=False)
    stored_outside = [t for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    inline = [t.name for t in model.graph.initializer if t.data_location != TensorProto.EXTERNAL]
    assert stored_outside and inline
    stripped = weightless(model)
    assert [t.name for t in stripped.graph.initializer] == inline
    added = {i.name: i.type.tensor_type for i in stripped.graph.input[len(model.graph.input) :]}
    assert list(added) == [t.name for t in stored_outside]
    for tensor in stored_outside:
        assert added[tensor.name].elem_type == tensor.data_type
        assert [d.dim_value for d in added[tensor.name].shape.dim] == list(tensor.dims)
    # The weight file is not there to read: the check runs on the graph alone.
    assert not (tmp_path / "model.onnx.data").exists()
    onnx.save_model(model, tmp_path / "model.onnx")
    assert load_check(onnx.load(tmp_path / "model.onnx", load_external_data=False), (1, 20))["status"] == "passed"


def test_mismatched_types_are_refused_with_onnxruntime_s_words():
    node = helper.make_node("Mul", ["x", "scale"], ["y"], name="/model/embed_tokens/Mul")
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [12.0])
    model = _model(node, [_value("x", TensorProto.FLOAT16)], [_value("y", TensorProto.FLOAT16)], [scale])
    checked = load_check(model, (1, 20))
    assert checked["status"] == "refused", checked
    assert checked["reason"].startswith("Type Error: Type parameter (T) of Optype (Mul) bound to different types")
    assert "in node (/model/embed_tokens/Mul)" in checked["reason"], checked


def test_an_op_without_a_cpu_kernel_is_no_fault():
    """A graph for another EP may hold ops the CPU lacks: its types were resolved all the same."""
    node = helper.make_node("Irfft", ["x"], ["y"], domain="com.microsoft", signal_ndim=1)
    model = _model(node, [_value("x", TensorProto.FLOAT16)], [_value("y", TensorProto.FLOAT16, (4, 6))])
    assert load_check(model, (1, 20))["status"] == "passed"


def test_a_runtime_older_than_the_target_does_not_judge_the_graph():
    node = helper.make_node("Mul", ["x", "x"], ["y"])
    model = _model(node, [_value("x", TensorProto.FLOAT)], [_value("y", TensorProto.FLOAT)])
    version, text = installed_onnxruntime()
    newer = (version[0], version[1] + 1)
    checked = load_check(model, newer)
    assert checked == {
        "status": "not run",
        "onnxruntime": text,
        "reason": f"the installed onnxruntime {text} is older than the target's {newer[0]}.{newer[1]}",
    }


def test_a_runtime_whose_version_does_not_parse_does_not_judge_the_graph(monkeypatch):
    """A local or nightly onnxruntime build may carry any version text: its refusal says nothing of a
    graph for a released target, so the check is not run, as for an older runtime."""
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "__version__", "main-local")
    node = helper.make_node("Mul", ["x", "scale"], ["y"])
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [12.0])
    model = _model(node, [_value("x", TensorProto.FLOAT16)], [_value("y", TensorProto.FLOAT16)], [scale])
    assert installed_onnxruntime() == ((0, 0), "main-local")
    checked = load_check(model, (1, 17))
    assert checked["status"] == "not run" and checked["reason"] == (
        "the installed onnxruntime main-local has a version that does not say whether it is as new as the target's 1.17"
    )
