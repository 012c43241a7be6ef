"""WebGPU targets: the plugin EP (default, capture-ready graphs) and onnxruntime-webgpu 1.27.

They run on the GPU machine (scripts/check_webgpu.py) and, with fp32 activations, on
SwiftShader here (tests/test_webgpu_swiftshader.py); here we check
what decides whether they load and whether the runtime can capture them: every node
is one the WebGPU EP runs, no Shape and no int64 arithmetic (ONNX Runtime places
those on the CPU, and a graph with a CPU node is refused for capture), and the
genai_config entries capture needs.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from test_targets import COMMON

from builder import BuilderError, BuildOptions
from builder.ep_runtime import WEBGPU_INSTALL
from builder.verify import dequantized_reference, genai_greedy, onnx_logits, onnx_session, transformers_greedy
from support.no_webgpu import NO_WEBGPU_SITECUSTOMIZE

# Ops the WebGPU EP has kernels for, that our graphs use: the GPU EPs' table in
# test_targets, less Shape (a CPU-only kernel, allowed only in uncaptured graphs), plus
# Gemma 3's FastGelu.
WEBGPU_OPS = (COMMON - {"Shape"}) | {"FastGelu"}
# A hybrid's recurrent layers keep genai's right pads out of their state (kit/blocks/right_padding.py):
# positions by CumSum, the pads by Greater/Where, the conv state by Concat/Expand/GatherElements.
RIGHT_PADDING_OPS = {"CumSum", "Greater", "Where", "Concat", "Expand", "GatherElements"}


# int64 index plumbing the WebGPU EP runs on the GPU: ArgMax's output is int64 by definition and
# GatherND's indices must be (the last-token selection; captured on the H200, docs/packing.md).
INT64_INDEX_PRODUCERS = {"ArgMax", "Cast", "Unsqueeze"}
INT64_INDEX_CONSUMERS = {"Cast", "Unsqueeze", "GatherND"}


def int64_values(model) -> set[str]:
    """Names of the int64 tensors the graph computes (after ONNX shape inference), other than
    index plumbing from ArgMax/Cast/Unsqueeze into Cast/Unsqueeze/GatherND."""
    inferred = onnx.shape_inference.infer_shapes(model)
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    consumers: dict[str, set] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, set()).add(n.op_type)
    return {
        v.name
        for v in inferred.graph.value_info
        if v.type.tensor_type.elem_type == onnx.TensorProto.INT64
        and not (
            producers.get(v.name) in INT64_INDEX_PRODUCERS and consumers.get(v.name, set()) <= INT64_INDEX_CONSUMERS
        )
    }


def load(result):
    return onnx.load(str(result.model_path), load_external_data=False)


@pytest.mark.parametrize(
    "name,precision",
    [("qwen3", "int4"), ("qwen3", "fp16"), ("llama", "int4"), ("qwen2", "int4"), ("mistral-nosw", "int4")],
)
def test_default_webgpu_build_is_capture_ready(built, name, precision):
    result = built(name, precision=precision, ep="webgpu")
    target = result.report["target"]
    assert target["runtime"].endswith("onnxruntime-ep-webgpu") and target["graph_capture"] is True
    model = load(result)
    ops = {n.op_type for n in model.graph.node}
    assert ops <= WEBGPU_OPS, ops - WEBGPU_OPS
    assert "Shape" not in ops
    assert not int64_values(model), "int64 arithmetic runs on the CPU and blocks capture"
    # input_ids and the mask are int64 (--int32-inputs auto: int64 decoded faster on an H100), and
    # the mask is cast to int32 once, on the GPU, before any arithmetic.
    types = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    assert types["input_ids"] == types["attention_mask"] == onnx.TensorProto.INT64
    assert target["int32_inputs"] is False
    readers = [n for n in model.graph.node if "attention_mask" in n.input]
    assert [n.op_type for n in readers] == ["Cast"] and readers[0].attribute[0].i == onnx.TensorProto.INT32
    gqa = next(n for n in model.graph.node if n.op_type == "GroupQueryAttention")
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    assert producers[gqa.input[5]] == "Sub" and producers[gqa.input[6]] == "ReduceMax"


def test_int32_inputs_on_sum_the_mask_as_it_comes(built):
    result = built("qwen3", precision="int4", ep="webgpu", int32_inputs="on")
    model = load(result)
    assert result.report["target"]["int32_inputs"] is True and result.report["target"]["graph_capture"] is True
    types = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    assert types["input_ids"] == types["attention_mask"] == onnx.TensorProto.INT32
    assert not int64_values(model)
    assert {n.op_type for n in model.graph.node if "attention_mask" in n.input} == {"ReduceSum"}


@pytest.mark.parametrize("ep,graph_capture", [("webgpu", "auto"), ("webgpu", "off"), ("cpu", "auto")])
def test_int32_inputs_compute_the_same_logits(built, ep, graph_capture):
    """int32 input_ids and mask against the int64 build of the same form (CPU EP), bit for bit."""
    ids, steps = np.arange(3, 14)[None], [5, 9, 2]
    common = dict(precision="fp32", ep=ep, graph_capture=graph_capture)
    int32 = onnx_logits(onnx_session(built("qwen3", int32_inputs="on", **common).output), ids, steps)
    int64 = onnx_logits(onnx_session(built("qwen3", int32_inputs="off", **common).output), ids, steps)
    for a, b in zip(int32, int64):
        np.testing.assert_array_equal(a, b)


def test_int32_inputs_genai_greedy_tokens_match_transformers(built, checkpoint):
    """genai feeds its int32 tokens to an int32 graph as they are (here on the CPU)."""
    result = built("qwen3", precision="fp32", int32_inputs="on")
    assert load(result).graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT32
    prompt, new_tokens = [5, 17, 42, 99, 120, 7, 64, 300], 16
    reference = dequantized_reference(checkpoint("qwen3"), BuildOptions(model="x", precision="fp32"))
    assert genai_greedy(result.output, prompt, new_tokens) == transformers_greedy(reference, prompt, new_tokens)


def test_int32_inputs_are_refused_for_transformers_js(built):
    with pytest.raises(BuilderError, match="--int32-inputs on: --format transformers.js feeds int64"):
        built("qwen3", precision="int4", ep="webgpu", format="transformers.js", int32_inputs="on")


def test_capture_genai_config(built):
    config = json.loads(built("qwen3", precision="int4", ep="webgpu").genai_config_path.read_text())
    options = config["model"]["decoder"]["session_options"]["provider_options"]
    assert options == [{"webgpu": {"enableGraphCapture": "1", "validationMode": "disabled"}}]
    assert config["search"]["past_present_share_buffer"] is True
    # Capture sizes the KV buffers at max_length up front: 4096, not the whole context.
    assert config["search"]["max_length"] == min(4096, config["model"]["context_length"])


def test_max_length_option(built):
    config = json.loads(built("qwen3", precision="int4", ep="webgpu", max_length=96).genai_config_path.read_text())
    assert config["search"]["max_length"] == 96
    assert config["model"]["context_length"] > 96


def test_max_length_above_context_is_refused(built):
    with pytest.raises(BuilderError, match="--max-length 512 is larger than --context-length 256"):
        built("qwen3", precision="int4", ep="webgpu", max_length=512, context_length=256)
    # The tiny config's max_position_embeddings is 256 too.
    with pytest.raises(BuilderError, match="--max-length 512 is larger than the context length 256"):
        built("qwen3", precision="int4", ep="webgpu", max_length=512)


def test_graph_capture_off_keeps_the_uncaptured_form(built):
    result = built("qwen3", precision="int4", ep="webgpu", graph_capture="off")
    assert result.report["target"]["graph_capture"] is False
    config = json.loads(result.genai_config_path.read_text())
    assert config["model"]["decoder"]["session_options"]["provider_options"] == [
        {"webgpu": {"enableGraphCapture": "0", "validationMode": "basic"}}
    ]
    assert config["search"]["max_length"] == min(4096, config["model"]["context_length"])
    assert "Shape" in {n.op_type for n in load(result).graph.node}


@pytest.mark.parametrize("ep,target_ort", [("webgpu", "1.27"), ("cpu", None), ("cuda", None)])
def test_graph_capture_on_is_refused_where_the_runtime_does_not_capture(built, ep, target_ort):
    with pytest.raises(BuilderError, match="--graph-capture on"):
        built("qwen3", precision="int4" if ep != "cuda" else "fp16", ep=ep, target_ort=target_ort, graph_capture="on")


@pytest.mark.parametrize("logits", ["all", "last"])
def test_capture_ready_metadata_computes_the_same_logits(built, logits):
    """The int32 mask arithmetic (and the Shape-free last-token selection) gives the numbers the
    Shape form gives (run on the CPU EP)."""
    ids, steps = np.arange(3, 14)[None], [5, 9, 2]
    captured = onnx_logits(
        onnx_session(built("qwen3", precision="fp32", ep="webgpu", logits=logits).output), ids, steps
    )
    plain = onnx_logits(
        onnx_session(built("qwen3", precision="fp32", ep="webgpu", graph_capture="off", logits=logits).output),
        ids,
        steps,
    )
    for a, b in zip(captured, plain):
        np.testing.assert_array_equal(a, b)


def test_webgpu_1_27_target_keeps_todays_layout(built):
    """What onnxruntime-webgpu 1.27 loads: GQA without q/k-norm inputs (<= 9 inputs), the
    Shape-based metadata it ran before, no capture."""
    result = built("qwen3", precision="int4", ep="webgpu", target_ort="1.27")
    model = load(result)
    assert all(len(n.input) <= 9 for n in model.graph.node if n.op_type == "GroupQueryAttention")
    assert {n.op_type for n in model.graph.node} <= WEBGPU_OPS | {"Shape"}
    assert result.report["layout"]["qkv_packing"] == "separate"
    with pytest.raises(BuilderError, match="fused-norm"):
        built("qwen3", precision="int4", ep="webgpu", target_ort="1.27", qkv_packing="fused-norm")


def test_default_webgpu_target_follows_the_plugin(monkeypatch):
    from builder.kit import targets

    versions = {"onnxruntime": "1.32.0", "onnxruntime-ep-webgpu": "0.4.0"}

    def version(package):
        import importlib.metadata

        if package not in versions:
            raise importlib.metadata.PackageNotFoundError(package)
        return versions[package]

    monkeypatch.setattr("importlib.metadata.version", version)
    assert targets.default_ort_version("webgpu") == (1, 32)
    versions.clear()
    versions["onnxruntime-webgpu"] = "1.27.0"
    assert targets.default_ort_version("webgpu") == (1, 27)
    versions.clear()
    assert targets.default_ort_version("webgpu") == (1, 31)


def test_generate_without_a_webgpu_runtime_says_what_to_install(built, tmp_path):
    """scripts/generate.py on a webgpu folder, where no WebGPU runtime is installed: one line, exit 2."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "sitecustomize.py").write_text(NO_WEBGPU_SITECUSTOMIZE)
    folder = built("qwen3", precision="int4", ep="webgpu").output
    repo = Path(__file__).resolve().parents[1]
    child = subprocess.run(
        [sys.executable, str(repo / "scripts" / "generate.py"), str(folder)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(repo)])},
    )
    assert child.returncode == 2
    lines = child.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install onnxruntime-genai onnxruntime-ep-webgpu" in lines[0], child.stderr
    assert "Traceback" not in child.stderr


@pytest.mark.parametrize("name", ["mistral", "gemma3"])
def test_sliding_window_models_build_without_capture(built, name):
    """genai's tokens left transformers' past the window with capture on (docs/packing.md#graph-capture)."""
    result = built(name, precision="int4", ep="webgpu")
    assert result.report["target"]["graph_capture"] is False
    assert any(
        note.startswith("graph capture is off: this model has sliding-window") for note in result.report["notes"]
    )
    config = json.loads(result.genai_config_path.read_text())
    assert config["model"]["decoder"]["session_options"]["provider_options"][0]["webgpu"]["enableGraphCapture"] == "0"
    with pytest.raises(BuilderError, match="sliding-window"):
        built(name, precision="int4", ep="webgpu", graph_capture="on")


def test_generate_without_a_webgpu_adapter_blames_the_machine(built, tmp_path):
    """The plugin EP installed, the Vulkan loader found, no Vulkan driver: onnxruntime-genai says only
    that WebGPU 'is not supported in this build', which scripts/generate.py read as a damaged folder
    and told the user to rebuild. It must say what the machine lacks instead (exit 2, one line)."""
    import subprocess
    import sys
    from pathlib import Path

    from support.swiftshader import no_driver_env, plugin_ready

    icd = plugin_ready()  # Chromium's folder holds a Vulkan loader: the driver alone is missing
    folder = built("qwen3", precision="int4", ep="webgpu").output
    repo = Path(__file__).resolve().parents[1]
    env = no_driver_env(icd, tmp_path / "no_driver.json", str(repo))
    child = subprocess.run(
        [sys.executable, str(repo / "scripts" / "generate.py"), str(folder), "--max-new-tokens", "2"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert child.returncode == 2, child.stderr[-2000:]
    lines = child.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: WebGPU found no GPU adapter: install a GPU driver"), lines
    assert "rebuild" not in lines[0]


def test_generate_on_swiftshader_without_the_software_flag_names_it(built, tmp_path):
    """SwiftShader set up as the README shows (its Vulkan loader and driver), but without
    ORT_WEBGPU_EP_ALLOW_SOFTWARE_ADAPTER=1: the plugin EP passes over the CPU driver, and the error
    said only to install a GPU driver. It names the variable (one line, exit 2)."""
    import subprocess
    import sys
    from pathlib import Path

    from support.swiftshader import plugin_ready, swiftshader_env

    icd = plugin_ready()
    folder = built("qwen3", precision="int4", ep="webgpu", io_dtype="fp32").output
    repo = Path(__file__).resolve().parents[1]
    env = {**swiftshader_env(icd), "PYTHONPATH": str(repo)}
    del env["ORT_WEBGPU_EP_ALLOW_SOFTWARE_ADAPTER"]
    command = [sys.executable, str(repo / "scripts" / "generate.py"), str(folder), "--max-new-tokens", "2"]
    child = subprocess.run(command, capture_output=True, text=True, env=env)
    assert child.returncode == 2, child.stderr[-2000:]
    lines = child.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: WebGPU found no GPU adapter: install a GPU driver"), lines
    assert "for a CPU Vulkan driver such as SwiftShader set ORT_WEBGPU_EP_ALLOW_SOFTWARE_ADAPTER=1" in lines[0], lines
    # With it, the same command runs on SwiftShader.
    env["ORT_WEBGPU_EP_ALLOW_SOFTWARE_ADAPTER"] = "1"
    child = subprocess.run(command, capture_output=True, text=True, env=env)
    assert child.returncode == 0 and "new tokens:" in child.stdout, child.stderr[-2000:]


def test_a_missing_vulkan_loader_is_named(monkeypatch):
    """Without libvulkan.so.1 the plugin EP finds no adapter either; the message names the loader."""
    import ctypes

    from builder import ep_runtime

    def no_loader(name, *args, **kwargs):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", no_loader)
    monkeypatch.setattr(ep_runtime.sys, "platform", "linux")
    assert "libvulkan.so.1 is missing (Debian/Ubuntu: apt install libvulkan1)" in ep_runtime.no_webgpu_device()


def test_the_software_adapter_variable_is_named_only_where_it_is_not_set(monkeypatch):
    """A machine that set ORT_WEBGPU_EP_ALLOW_SOFTWARE_ADAPTER=1 and still found no adapter has no use
    for being told to set it."""
    from builder import ep_runtime

    monkeypatch.setattr(ep_runtime.sys, "platform", "darwin")  # no Vulkan loader to look for
    monkeypatch.setattr(ep_runtime, "_webgpu_built_in", lambda: False)
    monkeypatch.delenv("ORT_WEBGPU_EP_ALLOW_SOFTWARE_ADAPTER", raising=False)
    assert "set ORT_WEBGPU_EP_ALLOW_SOFTWARE_ADAPTER=1" in ep_runtime.no_webgpu_device()
    monkeypatch.setenv("ORT_WEBGPU_EP_ALLOW_SOFTWARE_ADAPTER", "1")
    assert ep_runtime.no_webgpu_device() == (
        "WebGPU found no GPU adapter: install a GPU driver with Vulkan (Linux), D3D12 (Windows) or Metal (macOS)"
    )


@pytest.mark.parametrize("built_in, devices", [(True, []), (False, []), (False, ["a device"]), (False, None)])
def test_a_load_failure_is_blamed_on_the_adapter_only_when_the_plugin_has_none(
    built_in, devices, monkeypatch, tmp_path
):
    """genai_model turns a failed load into 'no GPU adapter' only where the plugin EP is the runtime
    and offers no device; with a device, or WebGPU built in (onnxruntime-webgpu 1.27), the load
    error stands."""
    from builder import ep_runtime

    class FakeGenai:
        class Config:
            def __init__(self, folder):
                pass

            def clear_providers(self):
                pass

            def append_provider(self, name):
                pass

        @staticmethod
        def Model(config):  # noqa: N802 (og's name)
            raise RuntimeError("Load model from model.onnx failed: Protobuf parsing failed.")

    monkeypatch.setattr(ep_runtime, "_webgpu_built_in", lambda: built_in)

    def plugin_devices():
        if devices is None:  # the lookup failed: the load error stands, not a guess at the device
            raise RuntimeError("get_ep_devices failed")
        return devices

    monkeypatch.setattr(ep_runtime, "webgpu_plugin_devices", plugin_devices)
    monkeypatch.setattr(ep_runtime, "prepare_genai", lambda og, provider: None)
    if built_in or devices is None or devices:
        with pytest.raises(RuntimeError, match="Protobuf parsing failed"):
            ep_runtime.genai_model(FakeGenai, tmp_path, "webgpu")
    else:
        with pytest.raises(BuilderError, match="WebGPU found no GPU"):
            ep_runtime.genai_model(FakeGenai, tmp_path, "webgpu")


@pytest.mark.parametrize(
    "options, provider",
    [(None, "cpu"), ([], "cpu"), ([{}], "cpu"), ([{"webgpu": {}}], "webgpu")],
)
def test_a_folder_runs_on_the_provider_its_config_names(options, provider, tmp_path):
    """genai_config.json's provider_options name the folder's provider; none, or an empty entry, is the CPU."""
    from builder.ep_runtime import folder_provider

    session_options = {} if options is None else {"provider_options": options}
    config = {"model": {"decoder": {"session_options": session_options}}}
    (tmp_path / "genai_config.json").write_text(json.dumps(config))
    assert folder_provider(tmp_path) == provider


class RecordingGenai:
    """The onnxruntime_genai calls that genai_model makes, in order."""

    def __init__(self):
        self.calls = []

    def register_execution_provider_library(self, name, path):
        self.calls.append(("register", path))

    def Config(self, folder):  # noqa: N802 (og's name)
        calls = self.calls

        class Config:
            def clear_providers(self):
                calls.append(("clear_providers",))

            def append_provider(self, name):
                calls.append(("append_provider", name))

        return Config()

    def Model(self, config):  # noqa: N802 (og's name)
        self.calls.append(("Model",))
        return "model"


def test_genai_model_opens_a_folder_on_its_own_provider(built, monkeypatch):
    """Without a provider named, a webgpu folder opens on WebGPU, with the plugin EP registered with
    genai once a process, and a cpu folder on genai's default with nothing registered."""
    import onnxruntime_ep_webgpu

    from builder import ep_runtime

    monkeypatch.setattr(ep_runtime, "_registered", set())
    og = RecordingGenai()
    for _ in range(2):
        assert ep_runtime.genai_model(og, built("qwen3", precision="int4", ep="webgpu").output) == "model"
    opened = [("clear_providers",), ("append_provider", "webgpu"), ("Model",)]
    assert og.calls == [("register", onnxruntime_ep_webgpu.get_library_path()), *opened, *opened]
    og = RecordingGenai()
    ep_runtime.genai_model(og, built("qwen3", precision="int4").output)
    assert og.calls == [("clear_providers",), ("Model",)]


def test_genai_model_registers_nothing_where_webgpu_is_built_in_or_missing(built, monkeypatch):
    """onnxruntime-webgpu 1.27 has WebGPU built in and refuses the plugin; with neither, the refusal
    is one line saying what to install."""
    import onnxruntime

    from builder import ep_runtime

    folder = built("qwen3", precision="int4", ep="webgpu").output
    monkeypatch.setattr(ep_runtime, "_registered", set())
    providers = onnxruntime.get_available_providers()
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["WebGpuExecutionProvider", *providers])
    og = RecordingGenai()
    ep_runtime.genai_model(og, folder)
    assert og.calls == [("clear_providers",), ("append_provider", "webgpu"), ("Model",)]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: providers)
    monkeypatch.setattr(ep_runtime, "webgpu_plugin_library", lambda: None)
    og = RecordingGenai()
    with pytest.raises(BuilderError) as refused:
        ep_runtime.genai_model(og, folder)
    assert str(refused.value) == f"this folder runs on WebGPU, and no WebGPU runtime is installed: {WEBGPU_INSTALL}"
    assert "pip install onnxruntime-genai onnxruntime-ep-webgpu" in str(refused.value) and og.calls == []


def test_built_in_webgpu_without_an_adapter_quotes_the_runtimes_reason(built, monkeypatch):
    """onnxruntime-webgpu 1.27's error puts a source path and an assertion before its reason, and a
    stack after: the one line quotes the reason, and says nothing of the plugin EP's variable."""
    import onnxruntime

    from builder import ep_runtime

    class NoAdapterGenai(RecordingGenai):
        def Model(self, config):  # noqa: N802 (og's name)
            raise RuntimeError(
                "/onnxruntime_src/onnxruntime/core/providers/webgpu/webgpu_context.cc:77 void "
                "onnxruntime::webgpu::WebGpuContext::Initialize() status == wgpu::Status::Success was false. "
                "Failed to get a WebGPU adapter: No supported adapters\nStacktrace:\n  webgpu_context.cc:77"
            )

    monkeypatch.setattr(ep_runtime, "_registered", set())
    providers = onnxruntime.get_available_providers()
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["WebGpuExecutionProvider", *providers])
    monkeypatch.setattr(ep_runtime.sys, "platform", "darwin")  # no Vulkan loader to look for
    monkeypatch.delenv("ORT_WEBGPU_EP_ALLOW_SOFTWARE_ADAPTER", raising=False)
    with pytest.raises(BuilderError) as refused:
        ep_runtime.genai_model(NoAdapterGenai(), built("qwen3", precision="int4", ep="webgpu").output)
    assert str(refused.value) == (
        "WebGPU found no GPU adapter: install a GPU driver with Vulkan (Linux), D3D12 (Windows) or Metal (macOS) "
        "(the runtime said: Failed to get a WebGPU adapter: No supported adapters)"
    )


def test_no_plugin_offers_no_webgpu_device(monkeypatch):
    from builder import ep_runtime

    monkeypatch.setattr(ep_runtime, "_registered", set())
    monkeypatch.setattr(ep_runtime, "webgpu_plugin_library", lambda: None)
    assert ep_runtime.webgpu_plugin_devices() == []


def identity_model(path):
    from onnx import TensorProto, helper

    value = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1]) for name in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", value[:1], value[1:])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


@pytest.mark.filterwarnings("ignore:Specified provider .CUDAExecutionProvider. is not in available")
def test_ort_session_keeps_the_session_options_and_refuses_a_fallback(tmp_path):
    """The caller's SessionOptions are the session's (verify's quiet log level), and an EP that does not
    start is refused: onnxruntime would quietly run the model on the CPU EP instead."""
    import onnxruntime

    from builder.ep_runtime import ort_session

    model = identity_model(tmp_path / "identity.onnx")
    so = onnxruntime.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    assert ort_session(model, session_options=so).get_providers() == ["CPUExecutionProvider"]
    assert (tmp_path / "optimized.onnx").is_file()
    assert "CUDAExecutionProvider" not in onnxruntime.get_available_providers()  # the CPU wheel
    with pytest.raises(BuilderError, match=r"CUDAExecutionProvider did not start \(onnxruntime fell back to \["):
        ort_session(model, "CUDAExecutionProvider")


def test_a_load_error_without_words_still_blames_the_missing_adapter(built, monkeypatch):
    """genai's error may carry no message at all: the one line stands, with nothing to quote."""
    from builder import ep_runtime

    class SilentGenai(RecordingGenai):
        def Model(self, config):  # noqa: N802 (og's name)
            raise RuntimeError()

    monkeypatch.setattr(ep_runtime, "_webgpu_built_in", lambda: False)
    monkeypatch.setattr(ep_runtime, "webgpu_plugin_devices", lambda: [])
    monkeypatch.setattr(ep_runtime, "prepare_genai", lambda og, provider: None)
    with pytest.raises(BuilderError, match="^WebGPU found no GPU"):
        ep_runtime.genai_model(SilentGenai(), built("qwen3", precision="int4", ep="webgpu").output)
