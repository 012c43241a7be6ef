"""--format transformers.js: the folder layout, and transformers.js 4 itself running it.

Node runs examples/web/generate.mjs (transformers.js on onnxruntime-node's CPU EP);
its greedy tokens are compared with transformers' on the same checkpoint.
scripts/setup.sh installs the pinned @huggingface/transformers into
examples/web/node_modules; without it these tests fail and say so.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest

from builder import BuilderError, BuildOptions
from builder.formats import transformers_js

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "examples" / "web"
PROMPT = [395, 455, 119, 149, 417, 203]  # greedy output of the tiny qwen3 varies (5-6 distinct tokens)
NEW_TOKENS = 8


def node_ready() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "node is not installed: run `bash scripts/setup.sh` (it installs nodejs with apt-get), "
            "or install Node.js 18+"
        )
    if not (WEB / "node_modules" / "@huggingface" / "transformers" / "package.json").is_file():
        pytest.fail(
            f"{WEB}/node_modules lacks @huggingface/transformers: run `bash scripts/setup.sh` "
            "(npm install --ignore-scripts in examples/web)"
        )
    return node


def run_node(folder: Path, *extra: str) -> dict:
    node = node_ready()
    out = subprocess.run(
        [
            node,
            str(WEB / "generate.mjs"),
            str(folder),
            "--ids",
            ",".join(map(str, PROMPT)),
            "--max-new-tokens",
            str(NEW_TOKENS),
            "--min-new-tokens",
            str(NEW_TOKENS),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def build_tjs(checkpoint_dir: Path, output: Path, **options):
    from architectures.registry import builder_class_for
    from builder.kit.checkpoint import Checkpoint
    from builder.pipeline import run

    ckpt = Checkpoint(checkpoint_dir)
    opts = BuildOptions(model=str(ckpt.directory), output=str(output), format="transformers.js", **options)
    return run(builder_class_for(ckpt.config)(ckpt, opts), show_progress=False)


def onnx_greedy(model_path: Path, prompt: list[int], new_tokens: int) -> list[int]:
    """Greedy decoding with ONNX Runtime in Python, feeding the cache as transformers.js does."""
    return left_padded_greedy(model_path, [prompt], new_tokens)[0][0]


def test_folder_layout_and_config(built):
    result = built("qwen3", precision="int4", io_dtype="fp32", format="transformers.js")
    out = result.output
    assert result.model_path == out / "onnx" / "model_q4.onnx"
    assert (out / "onnx" / "model_q4.onnx_data").is_file()
    for name in (
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "build_report.json",
    ):
        assert (out / name).is_file(), name
    assert not (out / "genai_config.json").exists()
    assert result.genai_config_path is None  # it named the genai_config.json this folder lacks
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "qwen3"
    assert config["transformers.js_config"] == {"dtype": "q4", "use_external_data_format": {"model_q4.onnx": 1}}
    files = result.report["files"]
    assert {k: files[k] for k in ("model", "data")} == {
        "model": "onnx/model_q4.onnx",
        "data": ["onnx/model_q4.onnx_data"],
    }
    assert files["mtime_ns"] == {
        name: (out / name).stat().st_mtime_ns for name in ("onnx/model_q4.onnx", *files["data"])
    }


@pytest.mark.parametrize(
    "precision,ep,io,suffix",
    [
        ("fp32", "cpu", "auto", ""),
        ("fp16", "cpu", "auto", "_fp16"),
        ("int4", "webgpu", "auto", "_q4f16"),
        ("int4", "webgpu", "fp32", "_q4"),
        ("int4", "cpu", "auto", "_q4"),
        ("int8", "cpu", "auto", "_int8"),
    ],
)
def test_file_suffix_follows_transformers_js_dtypes(built, precision, ep, io, suffix):
    result = built("qwen3", precision=precision, ep=ep, io_dtype=io, format="transformers.js")
    assert result.model_path.name == f"model{suffix}.onnx"
    model = onnx.load(str(result.model_path), load_external_data=False)
    locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {f"model{suffix}.onnx_data"}


def test_declared_cache_dims_are_numbers(built):
    """transformers.js makes the empty past from the declared dims, every symbol but batch_size -> 0."""
    result = built("qwen3", precision="int4", ep="webgpu", format="transformers.js")
    model = onnx.load(str(result.model_path), load_external_data=False)
    dims = {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in list(model.graph.input) + list(model.graph.output)
    }
    assert [n.name for n in model.graph.input][:2] == ["input_ids", "attention_mask"]
    assert "position_ids" not in dims  # rotary is inside GroupQueryAttention; transformers.js then feeds none
    for i in range(2):
        for kind in ("key", "value"):
            assert dims[f"past_key_values.{i}.{kind}"] == ["batch_size", 2, "past_sequence_length", 32]
            assert dims[f"present.{i}.{kind}"] == ["batch_size", 2, "total_sequence_length", 32]
    assert dims["num_logits_to_keep"] == []  # a scalar: transformers.js feeds 1 when it generates, 0 when it scores
    assert dims["logits"] == ["batch_size", "num_logits", 480]


def test_an_input_transformers_js_does_not_feed_is_refused():
    """transformers.js feeds a decoder only its own input names: a graph wanting another would fail on load."""
    value = onnx.helper.make_tensor_value_info("pixel_values", onnx.TensorProto.FLOAT, ["batch_size", 3])
    model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [value], []))
    with pytest.raises(BuilderError, match="graph input 'pixel_values' is not one transformers.js feeds"):
        transformers_js.check_inputs(model)


def test_linear_attention_states_get_transformers_js_names():
    """Hybrid models (Qwen3.5): genai's past.N.conv/recurrent become past_conv.N/past_recurrent.N, and a
    state whose size is symbolic is refused (transformers.js would start it with a 0-sized dim)."""
    from onnx import TensorProto as T
    from onnx import helper as h

    def model(recurrent_dims):
        graph = h.make_graph(
            [
                h.make_node("Identity", ["past.1.conv"], ["present.1.conv"]),
                h.make_node("Identity", ["past.1.recurrent"], ["present.1.recurrent"]),
            ],
            "g",
            [
                h.make_tensor_value_info("input_ids", T.INT64, ["batch_size", "sequence_length"]),
                h.make_tensor_value_info("past.1.conv", T.FLOAT, ["batch_size", 96, 3]),
                h.make_tensor_value_info("past.1.recurrent", T.FLOAT, recurrent_dims),
            ],
            [
                h.make_tensor_value_info("present.1.conv", T.FLOAT, ["batch_size", 96, 3]),
                h.make_tensor_value_info("present.1.recurrent", T.FLOAT, ["batch_size", 4, 16, 16]),
            ],
        )
        return h.make_model(graph)

    good = model(["batch_size", 4, 16, 16])
    transformers_js.rename_states(good)
    transformers_js.check_inputs(good)
    assert [v.name for v in good.graph.input] == ["input_ids", "past_conv.1", "past_recurrent.1"]
    assert [v.name for v in good.graph.output] == ["present_conv.1", "present_recurrent.1"]
    assert [list(n.input) + list(n.output) for n in good.graph.node] == [
        ["past_conv.1", "present_conv.1"],
        ["past_recurrent.1", "present_recurrent.1"],
    ]
    bad = model(["batch_size", 4, "head_k", 16])
    transformers_js.rename_states(bad)
    with pytest.raises(BuilderError, match="past_recurrent.1 declares dims"):
        transformers_js.check_inputs(bad)


def test_default_target_is_the_runtime_inside_transformers_js(built):
    for ep, version in (("cpu", "1.30"), ("webgpu", "1.31")):
        result = built("qwen3", precision="int4", ep=ep, format="transformers.js")
        assert result.report["target"]["ort_version"] == version
        assert result.report["target"]["runtime"].startswith("transformers.js 4.3 (onnxruntime-")


def test_another_runtime_is_not_called_the_one_transformers_js_pins(built):
    """--target-ort 1.27 recorded 'transformers.js 4.3 (onnxruntime-web 1.27)', a pairing that
    does not exist."""
    result = built("qwen3", precision="int4", ep="webgpu", format="transformers.js", target_ort="1.27")
    assert result.report["target"]["runtime"] == "transformers.js with onnxruntime-web 1.27"


def test_config_names_the_context_the_graph_holds(built, checkpoint):
    """The rotary cache ends at --context-length, but config.json kept the checkpoint's 256:
    a longer generation failed inside onnxruntime instead of being refused by the caller."""
    short = built("qwen3", precision="int4", format="transformers.js", context_length=64)
    assert json.loads((short.output / "config.json").read_text())["max_position_embeddings"] == 64
    hybrid = built("qwen3_5", precision="fp32", format="transformers.js", context_length=64)
    assert json.loads((hybrid.output / "config.json").read_text())["max_position_embeddings"] == 64
    original = json.loads((checkpoint("qwen3_5") / "config.json").read_text())
    assert original["text_config"]["max_position_embeddings"] > 64


def test_options_only_genai_config_holds_are_named(built):
    """--max-length and --intra-op-threads were taken and dropped in silence."""
    result = built("qwen3", precision="int4", format="transformers.js", max_length=128, intra_op_threads=4)
    assert (
        "--max-length 128, --intra-op-threads 4 had no effect on this build: they go into genai_config.json, "
        "which --format transformers.js does not write"
    ) in result.report["notes"]
    past = built("qwen3", precision="int4", format="transformers.js", max_length=10**6)  # not refused: no effect
    assert (
        "--max-length 1000000 had no effect on this build: it goes into genai_config.json, which --format "
        "transformers.js does not write"
    ) in past.report["notes"]
    plain = BuildOptions(model="x", format="transformers.js")
    assert {"max_length", "intra_op_threads"} <= set(plain.inert_options())  # batch does not rebuild for them
    assert not set(BuildOptions(model="x").inert_options()) & {"max_length", "intra_op_threads"}


def test_a_hybrid_refused_off_its_kernels_names_this_formats_runtimes(built):
    """It said 'ONNX Runtime >= 1.31' for transformers.js, whose cpu build targets 1.30."""
    with pytest.raises(BuilderError) as refused:
        built("qwen3_5", precision="int4", ep="cuda", format="transformers.js")
    assert "builds for cpu (onnxruntime-node >= 1.30) and webgpu (onnxruntime-web >= 1.31)" in str(refused.value)
    assert str(refused.value).endswith("got -e cuda with transformers.js 4.3 (onnxruntime-node 1.30)")
    with pytest.raises(BuilderError) as refused:
        built("qwen3_5", precision="int4", ep="webgpu", target_ort="1.27")
    assert "cpu (onnxruntime >= 1.31) and webgpu (onnxruntime >= 1.31 with the onnxruntime-ep-webgpu plugin)" in str(
        refused.value
    )
    assert str(refused.value).endswith("got -e webgpu with onnxruntime-webgpu 1.27")


def test_io_dtype_option(built):
    fp32 = built("qwen3", precision="int4", ep="webgpu", io_dtype="fp32")
    model = onnx.load(str(fp32.model_path), load_external_data=False)
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert fp32.report["target"]["io_dtype"] == "float32"
    fp16 = built("qwen3", precision="int4", ep="cpu", io_dtype="fp16")
    assert fp16.report["target"]["io_dtype"] == "float16"


@pytest.mark.parametrize(
    "options,message",
    [
        ({"precision": "fp32", "io_dtype": "fp16"}, "--io-dtype fp16 contradicts -p fp32"),
        ({"precision": "int4", "ep": "cuda", "io_dtype": "fp32"}, "no fp32 kernel on cuda"),
        ({"precision": "int4", "ep": "dml", "io_dtype": "fp32"}, "no fp32 kernel on dml"),
        ({"precision": "int8", "ep": "webgpu", "format": "transformers.js"}, "add --io-dtype fp32"),
    ],
)
def test_refused_combinations(built, options, message):
    with pytest.raises(BuilderError, match=message):
        built("qwen3", **options)


def test_cli_and_batch_know_the_options():
    from builder.cli import build_parser, options_from_args

    args = build_parser().parse_args(["-m", "x", "--format", "transformers.js", "--io-dtype", "fp32"])
    options = options_from_args(args)
    assert (options.format, options.io_dtype) == ("transformers.js", "fp32")
    assert BuildOptions.from_mapping({"model": "x", "format": "transformers.js", "io-dtype": "fp16"}).io_dtype == "fp16"
    with pytest.raises(BuilderError, match="--format"):
        BuildOptions(model="x", format="tjs").validated()


def test_node_fp32_tokens_equal_transformers(checkpoint, tmp_path, monkeypatch):
    """Greedy tokens of transformers.js (Node) == transformers', with the data split into chunks."""
    from builder.verify import dequantized_reference, transformers_greedy

    monkeypatch.setattr(transformers_js, "CHUNK_BYTES", 160 * 1024)
    ckpt = checkpoint("qwen3")
    result = build_tjs(ckpt, tmp_path / "tjs-fp32", precision="fp32")
    chunks = result.report["files"]["data"]
    assert len(chunks) > 2
    assert chunks == ["onnx/model.onnx_data"] + [f"onnx/model.onnx_data_{k}" for k in range(1, len(chunks))]
    assert all((result.output / c).stat().st_size <= 160 * 1024 for c in chunks)
    config = json.loads((result.output / "config.json").read_text())
    assert config["transformers.js_config"]["use_external_data_format"] == {"model.onnx": len(chunks)}

    theirs = transformers_greedy(
        dequantized_reference(ckpt, BuildOptions(model=str(ckpt), precision="fp32")), PROMPT, NEW_TOKENS
    )
    ours = run_node(result.output, "--encode", "Hello world")
    assert ours["dtype"] == "fp32"
    assert ours["tokens"] == theirs

    from transformers import AutoTokenizer

    assert ours["encoded"] == AutoTokenizer.from_pretrained(ckpt).encode("Hello world")
    assert "encoded" not in run_node(result.output)  # only when asked


def node_chat_template(folder: Path, messages: list[dict]) -> str:
    """transformers.js's AutoTokenizer.apply_chat_template on the folder, as text."""
    script = (
        'import { AutoTokenizer, env } from "@huggingface/transformers";\n'
        'env.allowRemoteModels = false; env.localModelPath = "/";\n'
        "const tok = await AutoTokenizer.from_pretrained(process.argv[1]);\n"
        "const text = tok.apply_chat_template(JSON.parse(process.argv[2]), "
        "{ tokenize: false, add_generation_prompt: true });\n"
        "console.log(JSON.stringify(text));\n"
    )
    out = subprocess.run(
        [node_ready(), "--input-type=module", "-e", script, str(folder), json.dumps(messages)],
        cwd=WEB,  # where node_modules resolves
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_node_applies_a_chat_template_saved_as_its_own_file(checkpoint, tmp_path):
    """transformers 5 saves the chat template in chat_template.jinja alone (no chat_template key in
    tokenizer_config.json); transformers.js 4's tokenizer reads only the key, so the folder had no chat
    template ("tokenizer.chat_template is not set")."""
    from transformers import AutoTokenizer

    folder = tmp_path / "ckpt"
    shutil.copytree(checkpoint("qwen3"), folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "chat_template.jinja").write_text(config.pop("chat_template").replace("assistant", "FILE-assistant"))
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi 你好"}]
    expected = AutoTokenizer.from_pretrained(folder).apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False
    )
    assert "FILE-assistant" in expected
    result = build_tjs(folder, tmp_path / "tjs", precision="fp32")
    assert node_chat_template(result.output, messages) == expected


def external_model(folder: Path, sizes: list[int], order: list[int]) -> tuple[onnx.ModelProto, list[np.ndarray]]:
    """A model whose float32 initializers of `sizes` bytes lie back to back in onnx/model.onnx_data,
    listed in the graph in `order` (the split must not rely on the graph listing them by offset)."""
    folder.mkdir()
    arrays = [np.arange(n // 4, dtype=np.float32) + 1000 * k for k, n in enumerate(sizes)]
    (folder / "model.onnx_data").write_bytes(b"".join(a.tobytes() for a in arrays))
    offsets = np.cumsum([0, *sizes])
    tensors = []
    for k in order:
        t = onnx.TensorProto(name=f"w{k}", data_type=onnx.TensorProto.FLOAT, dims=arrays[k].shape)
        t.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", "model.onnx_data"), ("offset", offsets[k]), ("length", sizes[k])):
            t.external_data.add(key=key, value=str(value))
        tensors.append(t)
    return onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [], initializer=tensors)), arrays


@pytest.mark.parametrize(
    "sizes, limit, chunk_sizes",
    [
        ([4096, 4096, 4096], 8192, [8192, 4096]),  # a chunk may fill the limit exactly
        ([8192, 4096], 4096, [8192, 4096]),  # a tensor past the limit gets a chunk of its own, never an empty one
        ([4096, 4096], 1 << 20, [8192]),  # under the limit: the one file transformers.js names without a suffix
    ],
)
def test_split_external_data_chunks_and_rebases_every_tensor(tmp_path, sizes, limit, chunk_sizes):
    folder = tmp_path / "onnx"
    model, arrays = external_model(folder, sizes, order=list(reversed(range(len(sizes)))))
    names = transformers_js.split_external_data(model, folder, "model.onnx", limit)
    assert names == ["onnx/model.onnx_data"] + [f"onnx/model.onnx_data_{k}" for k in range(1, len(chunk_sizes))]
    assert [(tmp_path / n).stat().st_size for n in names] == chunk_sizes
    for t in model.graph.initializer:
        k = int(t.name[1:])
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(t, base_dir=str(folder)), arrays[k])


@pytest.mark.parametrize(
    "name,precision",
    [("gemma3", "fp32"), ("gemma3", "fp16"), ("gemma3-vl", "fp32"), ("mistral", "fp32")]
    + [("qwen3_5", "fp32"), ("qwen3_5-text", "fp32"), ("qwen3_5-moe", "fp32"), ("qwen3_5-moe-text", "fp32")]
    + [("qwen3-moe", "fp32"), ("qwen3-moe", "fp16")],
)
def test_node_other_families(built, checkpoint, name, precision):
    """Gemma 3 (gemma3_text: (1 + w) norms, local/global rotary; in fp16 with its fp32 residual
    stream), Mistral (a sliding window shorter than prompt + decode) and Qwen3.5 (Gated DeltaNet
    layers: conv/recurrent states under transformers.js names, layer_types, per-head norms without
    BranchwiseRMSNorm; as a ForConditionalGeneration checkpoint and a text one) in transformers.js:
    greedy tokens == transformers', and (tokens can repeat one id) the graph's logits over a prompt
    and decode steps == transformers' in onnxruntime: max |d| < 1e-4 in fp32, NMSE < 1e-5 in fp16."""
    from builder.verify import dequantized_reference, transformers_greedy, verify_build

    # float MoE experts (QMoE, of int4/int8 builds, needs onnxruntime 1.31): they were refused too
    result = built(name, precision=precision, format="transformers.js")
    ckpt = checkpoint(name)
    options = BuildOptions(model=str(ckpt), precision=precision)
    theirs = transformers_greedy(dequantized_reference(ckpt, options), PROMPT, NEW_TOKENS)
    assert run_node(result.output)["tokens"] == theirs
    parity = verify_build(result.model_path, ckpt, BuildOptions(**result.report["options"]), 12, 4)
    assert (parity.max_abs < 1e-4 if precision == "fp32" else parity.nmse < 1e-5) and parity.argmax_agree == 1, parity


SHORT = [7, 300, 12]  # a batch with PROMPT: padded on the left by 3


def first_feed(session, prompts: list[list[int]]) -> tuple[np.ndarray, np.ndarray, dict]:
    """input_ids and attention_mask of a batch padded on the left, and the empty caches, made as
    transformers.js makes them from the declared dims (batch_size -> the batch, other symbols -> 0)."""
    width, rows = max(map(len, prompts)), len(prompts)
    ids, mask = np.zeros((rows, width), np.int64), np.zeros((rows, width), np.int64)
    for r, prompt in enumerate(prompts):
        ids[r, width - len(prompt) :], mask[r, width - len(prompt) :] = prompt, 1
    past = {
        i.name: np.zeros(
            [rows if d == "batch_size" else (0 if isinstance(d, str) else d) for d in i.shape],
            np.float16 if "float16" in i.type else np.float32,
        )
        for i in session.get_inputs()
        if i.name.startswith("past_")
    }
    return ids, mask, past


def left_padded_greedy(model_path: Path, prompts: list[list[int]], new_tokens: int):
    """Greedy decoding of a batch padded on the left, fed as transformers.js feeds it (position_ids,
    where the graph takes them, from the mask). Returns each row's tokens and its last logits a step."""
    from builder.verify import onnx_session

    session = onnx_session(model_path)
    inputs = {i.name for i in session.get_inputs()}
    step, mask, feeds = first_feed(session, prompts)
    rows = len(prompts)
    tokens, logits = [list(p) for p in prompts], []
    for _ in range(new_tokens):
        feed = {"input_ids": step, "attention_mask": mask, "num_logits_to_keep": np.array(1, np.int64), **feeds}
        if "position_ids" in inputs:  # transformers.js create_position_ids
            positions = np.cumsum(mask, -1) - 1
            positions[mask == 0] = 1
            feed["position_ids"] = positions[:, -step.shape[1] :]
        named = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
        logits.append(named["logits"][:, -1].astype(np.float32))
        for r, token in enumerate(logits[-1].argmax(-1)):
            tokens[r].append(int(token))
        # transformers.js: present.N.key -> past_key_values.N.key, present_conv.N -> past_conv.N
        feeds = {
            n.replace("present.", "past_key_values.").replace("present_", "past_"): v
            for n, v in named.items()
            if n.startswith("present")
        }
        step = np.array([[t[-1]] for t in tokens], np.int64)
        mask = np.concatenate([mask, np.ones((rows, 1), np.int64)], axis=1)
    return tokens, logits


@pytest.mark.parametrize(
    "name,options",
    [
        ("qwen3", dict(precision="fp32")),
        ("qwen3", dict(precision="int4", ep="webgpu")),  # q4f16
        ("qwen3", dict(precision="fp16", ep="dml")),  # RotaryEmbedding nodes read position_ids
        ("gemma3", dict(precision="fp32")),  # sliding window layers
        ("qwen3_5-text", dict(precision="fp32")),  # Gated DeltaNet: only the attention layers reorder
        ("qwen3_5", dict(precision="int4", ep="webgpu")),
    ],
)
def test_left_padded_batch_rows_equal_their_own_runs(built, name, options):
    """transformers.js pads a batch on the left, and GroupQueryAttention reads the mask as right
    padding: the graph moves each row's pads behind its tokens (the short row was 5.2 logits off
    its own run before). Every row's logits, prompt and decode steps, equal the row alone."""
    result = built(name, format="transformers.js", **options)
    batch, batch_logits = left_padded_greedy(result.model_path, [PROMPT, SHORT], 5)
    for r, prompt in enumerate([PROMPT, SHORT]):
        alone, alone_logits = left_padded_greedy(result.model_path, [prompt], 5)
        assert batch[r] == alone[0]
        for step, (ours, theirs) in enumerate(zip(batch_logits, alone_logits)):
            # fp16 logits (webgpu's q4f16) may round one ulp apart, since a batch of two takes other CPU
            # kernels than one row (an AVX2 machine gave 2.4e-4 at 0.26); the pads' bug was 5.2 logits.
            rtol = 2**-10 if np.dtype(result.report["target"]["io_dtype"]) == np.float16 else 0
            np.testing.assert_allclose(ours[r], theirs[0], rtol=rtol, atol=1e-4, err_msg=f"row {r}, step {step}")


def prefill(session, prompts: list[list[int]], **extra) -> np.ndarray:
    """Logits of one left-padded prefill, with empty caches."""
    ids, mask, past = first_feed(session, prompts)
    return session.run(["logits"], {"input_ids": ids, "attention_mask": mask, **past, **extra})[0]


@pytest.mark.parametrize("name", ["qwen3", "qwen3_5-text"])
def test_num_logits_to_keep_picks_the_trailing_positions(built, name):
    """transformers.js feeds num_logits_to_keep 1 when it generates (the lm_head then runs on one
    position, not the whole prompt) and 0 when it scores a text: 0 gives every position, each real
    one equal to the row alone; k gives the last k, in the order the tokens came."""
    from builder.verify import onnx_session

    session = onnx_session(built(name, precision="fp32", format="transformers.js").model_path)
    keep = {k: prefill(session, [PROMPT, SHORT], num_logits_to_keep=np.array(k, np.int64)) for k in (0, 1, 2)}
    assert keep[0].shape[:2] == (2, len(PROMPT)) and keep[1].shape[:2] == (2, 1) and keep[2].shape[:2] == (2, 2)
    np.testing.assert_array_equal(keep[1], keep[0][:, -1:])
    np.testing.assert_array_equal(keep[2], keep[0][:, -2:])
    for r, prompt in enumerate([PROMPT, SHORT]):
        alone = prefill(session, [prompt], num_logits_to_keep=np.array(0, np.int64))[0]
        np.testing.assert_allclose(keep[0][r, -len(prompt) :], alone, atol=1e-4)


@pytest.mark.parametrize("name", ["qwen3", "qwen3_5-text"])
def test_logits_last_reads_each_left_padded_row_at_its_last_token(built, name):
    """--logits last in a transformers.js folder: the last column, which is every row's last token
    when the batch is padded on the left (genai folders read right-padded rows at their own length)."""
    from builder.verify import onnx_session

    every = onnx_session(built(name, precision="fp32", format="transformers.js").model_path)
    last = onnx_session(built(name, precision="fp32", format="transformers.js", logits="last").model_path)
    expected = prefill(every, [PROMPT, SHORT], num_logits_to_keep=np.array(1, np.int64))
    np.testing.assert_allclose(prefill(last, [PROMPT, SHORT]), expected, atol=1e-5)


def test_a_family_that_skips_the_moves_is_refused(checkpoint, tmp_path):
    """A family of a user's own that runs a hybrid's mixers itself (not self.mix), or makes its own
    embedding Gather, would leave left-padded rows wrong without a word (a Qwen3.5 subclass: 10.4
    logits off): the transformers.js build refuses it; genai builds need no moves."""
    from architectures.base import DecoderBuilder
    from architectures.qwen3_5 import Qwen35Builder
    from builder.kit.checkpoint import Checkpoint
    from builder.pipeline import run

    class OwnLayer(Qwen35Builder):
        def decoder_layer(self, em, i, hidden, residual):
            mixed = self.mixer(em.spec, i)(em, i, hidden)
            weight = em.norm_weight(i, "post_attention_layernorm.weight")
            hidden, residual = em.skip_norm(mixed, residual, weight, f"/model/layers.{i}/post_attention_layernorm")
            return em.skip_norm(self.feed_forward(em.spec, i)(em, i, hidden), residual, *self.next_norm(em, i))

    class OwnEmbedding(DecoderBuilder):
        def embed(self, em, lm_head):
            shape = (em.spec.vocab_size, em.spec.hidden_size)
            table = em.proj.float_initializer("model.embed_tokens.weight", "model.embed_tokens.weight", shape)
            return em.graph.op("Gather", [table, "input_ids"], "/model/embed_tokens/Gather", axis=0)

    def build(family, name, fmt):
        ckpt = Checkpoint(checkpoint(name))
        output = tmp_path / f"{family.__name__}-{fmt}"
        options = BuildOptions(model=str(ckpt.directory), output=str(output), precision="fp32", format=fmt)
        return run(family(ckpt, options), show_progress=False)

    for family, name, words in (
        (OwnLayer, "qwen3_5-text", "ran their mixer without self.mix(em, i, hidden)"),
        (OwnEmbedding, "llama", "does not take the token ids from embedding.embedding()"),
    ):
        with pytest.raises(BuilderError, match=re.escape(words)):
            build(family, name, "transformers.js")
        assert not (tmp_path / f"{family.__name__}-transformers.js").exists()
        assert build(family, name, "genai").model_path.is_file()


def test_genai_folders_keep_right_padding(built):
    """onnxruntime-genai pads on the right, which GroupQueryAttention reads as it is: nothing is moved."""
    for options in (dict(precision="fp32"), dict(precision="int4", ep="webgpu")):
        model = onnx.load(str(built("qwen3_5-text", **options).model_path), load_external_data=False)
        assert not [n.name for n in model.graph.node if "left_padding" in n.name]
    tjs = onnx.load(
        str(built("qwen3", precision="fp32", format="transformers.js").model_path), load_external_data=False
    )
    moved = [n.op_type for n in tjs.graph.node if "left_padding" in n.name]
    # Attention only: the ids once, the last hidden state back once; no node a layer.
    assert moved.count("GatherElements") == 1 and moved.count("GatherND") == 1


@pytest.mark.parametrize("name", ["qwen3", "qwen3_5"])
def test_node_left_padded_batch_equals_transformers(built, checkpoint, name):
    """generate.mjs given two prompts pads them on the left and runs them as one batch in
    transformers.js; each row's greedy tokens equal transformers' for that prompt alone."""
    from builder.verify import dequantized_reference, transformers_greedy

    result = built(name, precision="fp32", format="transformers.js")
    ckpt = checkpoint(name)
    reference = dequantized_reference(ckpt, BuildOptions(model=str(ckpt), precision="fp32"))
    ours = run_node(result.output, "--ids", ",".join(map(str, SHORT)))
    assert [row["prompt_ids"] for row in ours["rows"]] == [PROMPT, SHORT]
    for row, prompt in zip(ours["rows"], [PROMPT, SHORT]):
        assert row["tokens"] == transformers_greedy(reference, prompt, NEW_TOKENS)


def test_node_batch_row_that_ends_first_stops_there(built, tmp_path):
    """transformers.js stops a batch only when every row's last token is an end token, so a row that
    ended first went on; generate.mjs cuts each row after its first end token, as it stops alone."""
    folder = tmp_path / "eos"
    shutil.copytree(built("qwen3", precision="fp32", format="transformers.js").output, folder)

    def node(*ids: list[int]) -> dict:
        args = [a for row in ids for a in ("--ids", ",".join(map(str, row)))]
        out = subprocess.run(
            [node_ready(), str(WEB / "generate.mjs"), str(folder), *args, "--max-new-tokens", "6"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    short, long = node(SHORT)["tokens"], node(PROMPT)["tokens"]
    end = short[len(SHORT) + 2]  # the short row's third new token becomes an end token
    assert end not in long[len(PROMPT) :] and end not in short[len(SHORT) : len(SHORT) + 2]
    generation = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({**generation, "eos_token_id": [end]}))
    rows = node(PROMPT, SHORT)["rows"]
    assert rows[1]["tokens"] == node(SHORT)["tokens"] == short[: len(SHORT) + 3]
    assert rows[0]["tokens"] == long


def test_node_q4_generates(built, tmp_path):
    """The q4 build (int4 weights, fp32 activations) runs in transformers.js and decodes as ONNX Runtime does,
    from a folder whose name is no hub id too (my--model, with a space: transformers.js looked for it
    elsewhere, and generate.mjs blamed a missing file)."""
    result = built("qwen3", precision="int4", io_dtype="fp32", format="transformers.js")
    ours = run_node(result.output)
    assert ours["dtype"] == "q4"
    assert len(ours["tokens"]) == len(PROMPT) + NEW_TOKENS
    assert ours["tokens"] == onnx_greedy(result.model_path, PROMPT, NEW_TOKENS)
    odd = tmp_path / "my--model b"
    shutil.copytree(result.output, odd)
    assert run_node(odd)["tokens"] == ours["tokens"]


def test_a_cuda_build_on_the_cpu_is_sent_to_a_cpu_build(built):
    """Its GroupQueryAttention with q/k norms has no CPU kernel: the message said to rebuild it with
    the same -e cuda, which fails alike."""
    folder = built("qwen3", precision="int4", ep="cuda", format="transformers.js").output
    out = subprocess.run(
        [node_ready(), str(WEB / "generate.mjs"), str(folder), "--max-new-tokens", "2"], capture_output=True, text=True
    )
    assert out.returncode == 2 and out.stderr.startswith("error: "), out.stderr
    assert "it was built for cuda (-e cuda)" in out.stderr and "-e cpu --format transformers.js" in out.stderr


# $CHROMIUM, else the first of Debian's and others' names on PATH, else Debian's path (setup.sh installs it).
CHROMIUM = Path(
    os.environ.get("CHROMIUM")
    or next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), "/usr/bin/chromium")
)
# Headless Chromium with WebGPU on SwiftShader (no GPU here). The background-networking
# flags keep Chromium from dialing out, which this machine's closed network refuses.
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--enable-unsafe-webgpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
BROWSER_TOKENS = 4  # SwiftShader compiles every WebGPU program on first use: that, not decoding, takes the time


def load_serve():
    import importlib.util

    spec = importlib.util.spec_from_file_location("serve", WEB / "serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def chromium(url: str, tmp_path: Path, server):
    """Headless Chromium on `url` for the block; then it and serve.py's `server` stop. Yields
    next_result(results, timeout, failing): the page's next posted result, or the test failed with
    `failing` and Chromium's log, at once where Chromium has exited."""
    import queue
    import tempfile
    import time

    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: run `bash scripts/setup.sh` (apt-get install chromium), or set CHROMIUM")
    # Chromium's singleton socket (TMPDIR/org.chromium.Chromium.*/SingletonSocket) must fit a Unix
    # socket path's 107 bytes, which tmp_path outgrows once pytest's run counter has four digits
    # (/tmp/pytest-of-root/pytest-1490/test_browser_webgpu_tokens_equ0/...: Chromium stopped at once,
    # "Socket path too long", and the test waited out its timeout). A short folder instead, removed
    # with the browser: the socket's folder outlives a terminated browser.
    socket_dir = tempfile.mkdtemp(prefix="chromium-", dir="/tmp" if os.path.isdir("/tmp") else None)
    log = open(tmp_path / "chromium.log", "w")
    browser = subprocess.Popen(
        [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", url],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TMPDIR": socket_dir},
    )

    def next_result(results, timeout: float, failing: str) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return results.get(timeout=0.5)
            except queue.Empty:
                pass
            log_tail = (tmp_path / "chromium.log").read_text()[-3000:]
            if browser.poll() is not None:
                pytest.fail(f"{failing}: Chromium exited ({browser.returncode}); its log: {log_tail}")
            if time.monotonic() > deadline:
                pytest.fail(f"{failing}; Chromium's log: {log_tail}")

    try:
        yield next_result
    finally:
        browser.terminate()
        try:
            browser.wait(15)
        except subprocess.TimeoutExpired:
            browser.kill()
            browser.wait()
        server.shutdown()
        server.server_close()
        log.close()
        shutil.rmtree(socket_dir, ignore_errors=True)


def run_page(folder: Path, tmp_path: Path, **query) -> dict:
    import urllib.parse

    node_ready()
    server, results = load_serve().start([folder])
    url = f"http://127.0.0.1:{server.server_port}/?" + urllib.parse.urlencode({"model": folder.name, **query})
    with chromium(url, tmp_path, server) as next_result:
        # --dump-dom would return before the GPU work is done: the page POSTs its result instead.
        return next_result(results, 180, "the page posted no result")


def test_browser_webgpu_tokens_equal_transformers(built, checkpoint, tmp_path):
    """examples/web in headless Chromium, WebGPU on SwiftShader (no shader-f16): an int4 build with
    fp32 activations generates transformers' greedy tokens, and its model runs on the WebGPU EP."""
    from builder.verify import dequantized_reference, transformers_greedy

    options = dict(precision="int4", ep="webgpu", io_dtype="fp32")
    result = built("qwen3", format="transformers.js", **options)
    folder = tmp_path / "my--model"  # no hub id: the page asked for /my--model/ instead of /models/my--model/
    shutil.copytree(result.output, folder)
    page = run_page(
        folder,
        tmp_path,
        device="webgpu",
        ids=",".join(map(str, PROMPT)),
        max_new_tokens=BROWSER_TOKENS,
        min_new_tokens=BROWSER_TOKENS,
        report=1,
        verbose=1,
    )
    assert "error" not in page, page["error"]
    assert page["adapter"]["architecture"] == "swiftshader" and page["adapter"]["shader_f16"] is False
    assert (page["device"], page["dtype"]) == ("webgpu", "q4")

    ckpt = checkpoint("qwen3")
    reference = dequantized_reference(ckpt, BuildOptions(model=str(ckpt), **options), io_dtype=np.float32)
    assert page["tokens"] == transformers_greedy(reference, PROMPT, BROWSER_TOKENS)
    assert page["text"]  # the TextStreamer wrote the new tokens into the page

    placed = node_placement(page["logs"])
    print("node placement:", {k: sorted(v) for k, v in placed.items()})
    assert {"MatMulNBits", "GroupQueryAttention", "GatherBlockQuantized"} <= {
        op for op, _ in placed["WebGpuExecutionProvider"]
    }
    assert_only_index_arithmetic_on_the_cpu(placed)


def test_browser_refuses_webgpu_for_a_folder_it_computes_wrong(built, checkpoint, tmp_path):
    """A -e cpu folder in blocks of 256 keeps accuracy level 4, whose MatMulNBits onnxruntime-web's WebGPU EP
    computes wrong: the page took WebGPU for it (the browser has it) and generated wrong tokens in silence.
    It now refuses WebGPU for it, naming the rebuild that runs there, and device=wasm, which it names too,
    gives transformers' tokens."""
    from builder.verify import dequantized_reference, transformers_greedy

    options = dict(precision="int8", ep="cpu", block_size=256)  # int8: a float embedding, which wasm runs
    result = built("qwen3", format="transformers.js", **options)
    prompt = [319, 383, 10, 385, 223]  # transformers' greedy steps lead by 0.44 logits or more: past level 4's error
    query = dict(ids=",".join(map(str, prompt)), max_new_tokens=BROWSER_TOKENS, min_new_tokens=BROWSER_TOKENS, report=1)
    for device in ("webgpu", "wasm"):
        (tmp_path / device).mkdir()
    page = run_page(result.output, tmp_path / "webgpu", **query)  # no device: WebGPU, which the browser has
    name = result.output.name
    assert page["error"].startswith(f"{name} computes wrong on WebGPU: it was built -e cpu in blocks of 256")
    assert "pass device=wasm, or rebuild it for WebGPU" in page["error"]
    assert "-p int8 -e webgpu --io-dtype fp32 --format transformers.js" in page["error"]
    page = run_page(result.output, tmp_path / "wasm", device="wasm", **query)
    assert "error" not in page, page["error"]
    ckpt = checkpoint("qwen3")
    reference = dequantized_reference(ckpt, BuildOptions(model=str(ckpt), **options), io_dtype=np.float32)
    assert page["tokens"] == transformers_greedy(reference, prompt, BROWSER_TOKENS)


def node_placement(logs: list[str]) -> dict[str, set[tuple[str, str]]]:
    """EP -> {(op type, node name)} from ONNX Runtime's verbose log ("Node(s) placed on [X]", then
    "  Op (name)" lines)."""
    placed, ep = {}, None
    for line in logs:
        if "Node(s) placed on [" in line:
            ep = line.split("Node(s) placed on [")[1].split("]")[0]
        elif ep and "VerifyEachNodeIsAssignedToAnEp]   " in line:
            op, _, name = line.split("VerifyEachNodeIsAssignedToAnEp]")[1].strip().partition(" ")
            placed.setdefault(ep, set()).add((op, name.strip().strip("()")))
        else:
            ep = None if "VerifyEachNodeIsAssignedToAnEp" not in line else ep
    return placed


def assert_only_index_arithmetic_on_the_cpu(placed: dict) -> None:
    """Only the int64 arithmetic of the attention mask (seqlens_k, total_sequence_length), of the
    left-padding indices and of num_logits_to_keep stays on the CPU; every layer's work runs on the
    WebGPU EP."""
    cpu = placed.get("CPUExecutionProvider", set())
    index_work = ("/model/attn_mask_reformat/", "/model/left_padding/", "/lm_head/num_logits_to_keep/")
    assert {n for _, n in cpu if not n.startswith(index_work)} == set()
    assert {op for op, _ in cpu} <= {"ReduceSum", "Sub", "Cast", "Shape", "Gather"} | {
        "Slice",
        "Neg",
        "ArgMax",
        "Squeeze",
        "Range",
        "Add",
        "Min",
        "Max",
        "GatherElements",
        "Unsqueeze",
    }


def test_browser_webgpu_left_padded_batch_equals_transformers(built, checkpoint, tmp_path):
    """A batch of two prompts (ids=A;B, padded on the left) in headless Chromium on the WebGPU EP:
    a Qwen3.5 build (its attention layers take their input reordered, its Gated DeltaNet layers
    masked) gives each row transformers' greedy tokens for that prompt alone."""
    from builder.verify import dequantized_reference, transformers_greedy

    # Prompts whose greedy steps lead by 0.87 logits or more in transformers: with PROMPT, the tiny
    # Qwen3.5's second step is a 0.02 tie that WebGPU's int4 kernels may break either way, alone too.
    prompts = ([40, 304, 63, 207, 359, 371], [306, 263, 196])
    options = dict(precision="int4", ep="webgpu", io_dtype="fp32")
    result = built("qwen3_5", format="transformers.js", **options)
    page = run_page(
        result.output,
        tmp_path,
        device="webgpu",
        ids=";".join(",".join(map(str, p)) for p in prompts),
        max_new_tokens=BROWSER_TOKENS,
        min_new_tokens=BROWSER_TOKENS,
        report=1,
        verbose=1,
    )
    assert "error" not in page, page["error"]
    assert page["device"] == "webgpu" and [row["prompt_ids"] for row in page["rows"]] == list(prompts)
    ckpt = checkpoint("qwen3_5")
    reference = dequantized_reference(ckpt, BuildOptions(model=str(ckpt), **options), io_dtype=np.float32)
    for row, prompt in zip(page["rows"], prompts):
        assert row["tokens"] == transformers_greedy(reference, prompt, BROWSER_TOKENS)
    placed = node_placement(page["logs"])
    assert {"GroupQueryAttention", "GatherND", "LinearAttention"} <= {op for op, _ in placed["WebGpuExecutionProvider"]}
    assert_only_index_arithmetic_on_the_cpu(placed)


def test_batch_yaml_builds_the_format(tmp_path):
    """The same option in a batch file; a finished transformers.js folder is skipped on the next run."""
    from builder import cli

    tiny = ROOT / "examples" / "tiny-qwen3"
    yaml = tmp_path / "web.yaml"
    yaml.write_text(
        f"output_root: out\njobs:\n  - {{model: {tiny}, precision: int4, ep: webgpu, io-dtype: fp32, "
        "format: transformers.js, output: tiny-web}\n"
    )
    assert cli.main(["batch", str(yaml)]) == 0
    out = tmp_path / "out" / "tiny-web"
    assert (out / "onnx" / "model_q4.onnx").is_file() and (out / "onnx" / "model_q4.onnx_data").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["transformers.js_config"]["dtype"] == "q4"
    built_at = (out / "build_report.json").stat().st_mtime_ns
    assert cli.main(["batch", str(yaml)]) == 0
    summary = json.loads((tmp_path / "out" / "web-summary.json").read_text())
    assert summary["counts"] == {"built": 0, "skipped": 1, "failed": 0, "interrupted": 0}, summary["counts"]
    assert (out / "build_report.json").stat().st_mtime_ns == built_at


def test_conditional_generation_checkpoints_load_as_causal_lm(tmp_path):
    """A text model built from a *ForConditionalGeneration checkpoint (Qwen3.5) is named *ForCausalLM,
    so transformers.js loads it as one decoder session instead of embed_tokens + decoder_model_merged."""
    from types import SimpleNamespace

    config = {
        "architectures": ["Qwen3_5ForConditionalGeneration"],
        "model_type": "qwen3_5",
        "text_config": {"model_type": "qwen3_5_text", "layer_types": ["linear_attention", "full_attention"]},
    }
    arch = SimpleNamespace(
        config=config,
        io_dtype=np.dtype(np.float32),
        spec=SimpleNamespace(layer_types=()),  # as the builder's spec, without a checkpoint
        options=BuildOptions(model="x", precision="int4", format="transformers.js"),
    )
    folder = transformers_js.TransformersJsFolder(arch)
    folder.write_configs(tmp_path, {"eos_token_id": 1})
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["architectures"] == ["Qwen3_5ForCausalLM"]
    assert written["text_config"] == config["text_config"]
    assert written["transformers.js_config"] == {"dtype": "q4", "use_external_data_format": {"model_q4.onnx": 1}}


def test_a_flat_text_config_is_nested_under_the_type_transformers_js_runs(tmp_path):
    """transformers.js 4.3 has no qwen3_5_moe_text: the folder's config.json nests it under qwen3_5_moe
    (no warning about an unknown type), the text config without the outer architectures; a checkpoint
    without generation_config.json gets one with the ids its config.json sets (bos is null here)."""
    from types import SimpleNamespace

    config = {
        "architectures": ["Qwen3_5MoeForCausalLM"],
        "model_type": "qwen3_5_moe_text",
        "bos_token_id": None,
        "eos_token_id": 2,
        "pad_token_id": 0,
    }
    arch = SimpleNamespace(
        config=config,
        io_dtype=np.dtype(np.float32),
        spec=SimpleNamespace(layer_types=()),
        options=BuildOptions(model="x", precision="fp32", format="transformers.js"),
        warnings=[],
    )
    folder = transformers_js.TransformersJsFolder(arch)
    assert arch.warnings == []
    assert folder.write_configs(tmp_path, None) == ["config.json", "generation_config.json"]
    text = {k: v for k, v in config.items() if k != "architectures"}
    assert json.loads((tmp_path / "config.json").read_text()) == {
        "model_type": "qwen3_5_moe",
        "architectures": ["Qwen3_5MoeForCausalLM"],
        "text_config": text,
        "transformers.js_config": {"dtype": "fp32", "use_external_data_format": {"model.onnx": 1}},
    }
    assert json.loads((tmp_path / "generation_config.json").read_text()) == {"eos_token_id": 2, "pad_token_id": 0}


def test_a_plugin_family_with_a_type_transformers_js_lacks_is_told_where_it_names_one(tmp_path):
    """A family of one's own (here a stand-in arch, not from architectures/) may name the type it
    follows in its model_config(): the warning says so; a built-in family has no such hook
    (test_plugin_hooks checks that one's warning)."""
    from types import SimpleNamespace

    arch = SimpleNamespace(
        config={"model_type": "my_llama"},
        io_dtype=np.dtype(np.float32),
        options=BuildOptions(model="x", precision="fp32", format="transformers.js"),
        warnings=[],
    )
    transformers_js.TransformersJsFolder(arch)
    assert len(arch.warnings) == 1
    assert "'my_llama' is none transformers.js 4.3 has a model class for" in arch.warnings[0]
    assert "in its model_config()" in arch.warnings[0]


def test_hybrid_configs_name_their_layer_types(tmp_path):
    """transformers.js finds the conv/recurrent/KV inputs of each layer through config.layer_types."""
    from types import SimpleNamespace

    types_ = ("linear_attention", "full_attention")
    spec = SimpleNamespace(layer_types=types_)
    options = BuildOptions(model="x", precision="fp32", format="transformers.js")
    for config, where in (
        ({"model_type": "qwen3_5_text", "full_attention_interval": 2}, lambda c: c),
        ({"model_type": "qwen3_5", "text_config": {"model_type": "qwen3_5_text"}}, lambda c: c["text_config"]),
    ):
        arch = SimpleNamespace(config=config, io_dtype=np.dtype(np.float32), spec=spec, options=options)
        transformers_js.TransformersJsFolder(arch).write_configs(tmp_path, {})
        assert where(json.loads((tmp_path / "config.json").read_text()))["layer_types"] == list(types_)


def test_config_keeps_the_family_defaults_the_graph_was_built_with(checkpoint, tmp_path):
    """A config.json without num_key_value_heads gets MistralConfig's 8, as transformers loads it:
    the folder's config.json says 8 as well (transformers.js would otherwise read none), and
    transformers.js gives transformers' greedy tokens."""
    from builder.verify import dequantized_reference, transformers_greedy

    ckpt = tmp_path / "mistral-8kv"
    shutil.copytree(checkpoint("mistral", num_attention_heads=8, num_key_value_heads=8, head_dim=16), ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    del config["num_key_value_heads"]
    (ckpt / "config.json").write_text(json.dumps(config))
    result = build_tjs(ckpt, tmp_path / "tjs", precision="fp32")
    assert json.loads((result.output / "config.json").read_text())["num_key_value_heads"] == 8
    theirs = transformers_greedy(
        dequantized_reference(ckpt, BuildOptions(model=str(ckpt), precision="fp32")), PROMPT, NEW_TOKENS
    )
    assert run_node(result.output)["tokens"] == theirs


def test_the_benchmark_says_why_a_folder_did_not_run(built, tmp_path):
    """Each failed run was reported as "did not run (exit 1): Node.js v20..." (the last line
    of an uncaught error is Node's banner); a genai folder failed the same way."""
    node = node_ready()
    script = str(ROOT / "scripts" / "bench_transformers_js.mjs")

    def bench(folder: Path) -> str:
        run = subprocess.run(
            [node, script, f"a={folder}", "--rounds", "1", "--prompt", "4", "--new", "2"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode != 0, run.stdout
        return run.stderr.strip().splitlines()[-1]

    genai = built("qwen3", precision="fp32").output
    assert "is an onnxruntime-genai folder; this benchmark times --format transformers.js" in bench(genai)
    assert f'file was not found locally at "{tmp_path / "nope" / "config.json"}"' in bench(tmp_path / "nope")
