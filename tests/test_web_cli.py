"""examples/web/generate.mjs on the mistakes a user makes: usage for --help (exit 0) and for
no argument (exit 2); otherwise one `error: ` line naming the folder and what it needs, exit 2.

Node runs the script as in tests/test_transformers_js.py; the refusals of options and folders
need no npm packages, the tests on a built folder (fixtures q4 and short) need
@huggingface/transformers in examples/web/node_modules (scripts/setup.sh installs it). Those
check that stderr is the `error: ` line alone: no tensors that transformers.js logs before it
rethrows, no ONNX Runtime log, no advice to rebuild a folder that a rebuild would not change.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "examples" / "web"
BUILD = "--format transformers.js"


def node(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("node")
    if exe is None:
        pytest.fail("node is not installed: run `bash scripts/setup.sh` (it installs nodejs), or install Node.js 18+")
    return subprocess.run(
        [exe, str(WEB / "generate.mjs"), *map(str, args)], capture_output=True, text=True, timeout=120
    )


def assert_refused(child: subprocess.CompletedProcess, *names: str) -> str:
    """Exit 2, no Node stack trace, and a last stderr line `error: ...` that names each of `names`."""
    assert child.returncode == 2, child.stderr
    assert "    at " not in child.stderr and "Node.js v" not in child.stderr, child.stderr
    last = child.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), child.stderr
    for name in names:
        assert name in last, child.stderr
    return last


def assert_one_line(child: subprocess.CompletedProcess, *names: str) -> str:
    """assert_refused, and stderr is that one line: no tensor dump, no ONNX Runtime log, no stdout."""
    line = assert_refused(child, *names)
    assert child.stderr == line + "\n", child.stderr
    assert child.stdout == "", child.stdout
    return line


def needs_transformers_js() -> None:
    if not (WEB / "node_modules" / "@huggingface" / "transformers" / "package.json").is_file():
        pytest.fail(f"{WEB}/node_modules lacks @huggingface/transformers: run `bash scripts/setup.sh`")


@pytest.fixture(scope="module")
def q4(built) -> Path:
    """The q4 folder (-p int4 --io-dtype fp32) that tests/test_transformers_js.py also builds."""
    needs_transformers_js()
    return built("qwen3", precision="int4", io_dtype="fp32", format="transformers.js").output


@pytest.fixture(scope="module")
def short(built) -> Path:
    """A q4 folder built with --context-length 16."""
    needs_transformers_js()
    return built("qwen3", precision="int4", io_dtype="fp32", format="transformers.js", context_length=16).output


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_usage_and_exits_0(flag):
    child = node(flag)
    assert child.returncode == 0, child.stderr
    assert child.stdout.startswith("usage: node examples/web/generate.mjs OUT_DIR") and BUILD in child.stdout
    assert child.stderr == ""


def test_no_argument_prints_usage_and_exits_2():
    child = node()
    assert_refused(child, "OUT_DIR", BUILD)
    assert child.stderr.startswith("usage: ")


def test_missing_folder_is_named(tmp_path):
    assert_refused(node(tmp_path / "nope"), str(tmp_path / "nope"), "does not exist", BUILD)


def test_genai_folder_points_to_generate_py(built):
    folder = built("qwen3", precision="int4").output
    line = assert_refused(node(folder), str(folder), "onnxruntime-genai folder", "scripts/generate.py", BUILD)
    assert "tokenizer_class" not in line


def test_folder_of_something_else_says_what_it_needs(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "qwen3"}')
    assert_refused(node(tmp_path), str(tmp_path), "transformers.js_config", BUILD)


@pytest.mark.parametrize(
    "args, names",
    [
        (["--max-new-tokens", "0"], ["--max-new-tokens 0"]),
        (["--ids", "1,x"], ["--ids 1,x"]),
        (["--prompt"], ["--prompt needs a value"]),
        (["--bogus"], ["--bogus"]),
        (["--min-new-tokens", "20", "--max-new-tokens", "4"], ["--min-new-tokens 20 is more than --max-new-tokens 4"]),
        (["--prompt", ""], ["--prompt '' is empty", "--ids 1,2,3"]),
        (["--prompt", "Hi", "--ids", "1,2"], ["--prompt TEXT or as --ids 1,2,3, not both"]),
    ],
)
def test_bad_options_are_named(tmp_path, args, names):
    assert_refused(node(tmp_path, *args), *names)


def test_damaged_transformers_js_folder_names_the_file_and_the_rebuild(q4, tmp_path):
    folder = Path(shutil.copytree(q4, tmp_path / "tjs"))
    for data in (folder / "onnx").glob("*.onnx_data*"):
        data.unlink()
    line = assert_one_line(node(folder, "--max-new-tokens", "2"), str(folder), "onnx_data", "python -m builder -m ")
    assert f"{BUILD} -o {folder} --overwrite" in line


def test_a_model_type_transformers_js_lacks_is_not_sent_to_a_rebuild(q4, tmp_path):
    """A plugin family's own model_type (config.json copied from the checkpoint) was reported as a
    missing or damaged file, with a rebuild that writes the same config.json."""
    folder = Path(shutil.copytree(q4, tmp_path / "tjs"))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "my_llama"}))
    line = assert_one_line(node(folder, "--max-new-tokens", "2"), str(folder), "model_type my_llama", "model_config()")
    assert "rebuild" not in line


def test_the_rebuild_keeps_the_family_the_folder_was_built_with(q4, tmp_path):
    folder = Path(shutil.copytree(q4, tmp_path / "tjs"))
    report = json.loads((folder / "build_report.json").read_text())
    report["options"]["family"] = "my_families:Helium"
    (folder / "build_report.json").write_text(json.dumps(report))
    for data in (folder / "onnx").glob("*.onnx_data*"):
        data.unlink()
    line = assert_one_line(node(folder, "--max-new-tokens", "2"), str(folder), "onnx_data")
    assert "-e cpu --family my_families:Helium --io-dtype fp32 --format transformers.js" in line, line


def test_the_rebuild_keeps_the_options_that_choose_the_weights(tmp_path):
    """An int4 webgpu folder built with --io-dtype fp32 holds q4; the rebuild dropped it, and wrote q4f16."""
    options = {"model": "ck", "precision": "int4", "ep": "webgpu", "io_dtype": "fp32", "int8_layers": ["lm_head"]}
    options["float_layers"] = ["model.embed_tokens", "model.norm"]
    (tmp_path / "build_report.json").write_text(json.dumps({"options": options, "checkpoint": {"path": "/data/ck"}}))
    (tmp_path / "config.json").write_text("{not json")
    line = assert_one_line(node(tmp_path), "config.json is not valid JSON")
    assert (
        "-m /data/ck -p int4 -e webgpu --io-dtype fp32 --int8-layers lm_head "
        f"--float-layers model.embed_tokens,model.norm {BUILD} -o {tmp_path} --overwrite"
    ) in line, line


def test_a_dtype_the_folder_lacks_says_what_it_holds_and_how_to_build_it(q4):
    """--dtype q4f16 on a q4 folder suggested the rebuild that made the q4 folder, then 'build the q4f16
    weights into another folder' without saying how."""
    line = assert_one_line(node(q4, "--dtype", "q4f16"), str(q4), "--dtype q4f16", "it holds q4 weights")
    assert "onnx/model_q4f16.onnx" in line
    # one command that can be pasted, from the checkpoint's resolved path (the report's options.model
    # is relative to where the build ran)
    checkpoint = json.loads((q4 / "build_report.json").read_text())["checkpoint"]["path"]
    assert f"python -m builder -m {checkpoint} -p int4 -e webgpu {BUILD} -o OTHER_DIR" in line
    assert "--overwrite" not in line and "(or" not in line


@pytest.mark.parametrize(
    "options, dtype", [({"ep": "webgpu"}, "q4f16"), ({"io_dtype": "fp16"}, "q4f16"), ({"io_dtype": "fp32"}, "q4")]
)
def test_the_build_options_named_for_a_dtype_make_it(built, options, dtype):
    """What the refusal above tells to build gives the dtype it names (-p int4 for both)."""
    folder = built("qwen3", precision="int4", format="transformers.js", **options).output
    assert (folder / "onnx" / f"model_{dtype}.onnx").is_file()
    assert json.loads((folder / "config.json").read_text())["transformers.js_config"]["dtype"] == dtype


def test_a_dtype_transformers_js_files_never_have_is_listed(q4):
    """--dtype bogus answered 'build the bogus weights into another folder'."""
    line = assert_one_line(
        node(q4, "--dtype", "bogus"), "--dtype bogus", "fp32, fp16, q4, q4f16 or int8", f"{q4} holds q4 weights"
    )
    assert "build the bogus" not in line and "rebuild" not in line


def test_wasm_is_a_browser_device(q4):
    """--device wasm said a file of the folder is missing or damaged and advised a rebuild."""
    line = assert_one_line(
        node(q4, "--device", "wasm"), "--device wasm", "browser device", f"python examples/web/serve.py {q4}"
    )
    assert "--device cpu or webgpu" in line and "rebuild" not in line and "damaged" not in line


def test_an_unknown_device_lists_the_node_ones(q4):
    line = assert_one_line(node(q4, "--device", "tpu"), "--device tpu", "transformers.js in Node")
    assert line.endswith(" or cpu") and "webgpu" in line and "rebuild" not in line


@pytest.mark.parametrize("device", ["cuda", "auto", "gpu"])
def test_cuda_without_its_libraries_says_how_to_install_them(q4, device):
    """npm install --ignore-scripts (scripts/setup.sh) leaves out onnxruntime-node's CUDA EP; auto
    and gpu, which try cuda first, ended in 'could not load its execution provider'."""
    libs = WEB / "node_modules" / "onnxruntime-node" / "bin" / "napi-v6" / "linux" / "x64"
    assert sys.platform == "linux" and platform.machine() == "x86_64", (
        "onnxruntime-node has a CUDA EP on linux x64 only"
    )
    assert not (libs / "libonnxruntime_providers_cuda.so").exists(), (
        "onnxruntime-node has its CUDA libraries here: run the suite after scripts/setup.sh (npm --ignore-scripts)"
    )
    line = assert_one_line(node(q4, "--device", device), f"--device {device}", "CUDA libraries", "--ignore-scripts")
    assert "--device cpu or webgpu" in line and "rebuild" not in line


def test_webgpu_without_an_adapter_blames_the_machine_not_the_folder(q4):
    """Without a WebGPU adapter (no GPU, no Vulkan loader) the error said a file of the folder was
    missing or damaged and asked for a rebuild."""
    child = node(q4, "--device", "webgpu", "--max-new-tokens", "2")
    if child.returncode == 0:  # a machine with an adapter: it simply runs
        return
    line = assert_one_line(child, "--device webgpu", "--device cpu")
    assert "Vulkan loader (libvulkan.so.1)" in line or "no WebGPU adapter on this machine" in line
    assert "rebuild" not in line and "damaged" not in line and ".cc:" not in line


def test_an_id_past_the_vocabulary_is_refused_up_front(q4):
    """--ids 99999 failed in GatherBlockQuantized with ~40 lines of tensors and a rebuild advice."""
    vocab = json.loads((q4 / "config.json").read_text())["vocab_size"]
    line = assert_one_line(
        node(q4, "--ids", f"1,{vocab}"), f"--ids has token id {vocab}", f"vocab_size {vocab} in config.json"
    )
    assert f"pass ids from 0 to {vocab - 1}" in line and "rebuild" not in line
    assert_one_line(node(q4, "--ids", "99999"), "token id 99999")


def test_max_new_tokens_past_the_context_is_refused_up_front(short):
    """--max-new-tokens past max_position_embeddings ran until GroupQueryAttention failed on its cos_cache,
    after ~300 lines of tensors, then advised a rebuild."""
    assert json.loads((short / "config.json").read_text())["max_position_embeddings"] == 16
    line = assert_one_line(
        node(short, "--ids", "1,2,3", "--max-new-tokens", "15"),
        "--max-new-tokens 15 does not fit",
        str(short),
        "16",
        "--ids takes 3 tokens",
        "pass --max-new-tokens 14 or less",
    )
    assert "rebuild" not in line
    assert_one_line(node(short, "--prompt", "Hello", "--max-new-tokens", "100"), "--prompt takes ", "or less")
    assert_one_line(node(short, "--ids", ",".join(["1"] * 17)), "--ids takes 17 tokens", "no room", "shorter --ids")
    # A batch is as long as its longest prompt.
    assert_one_line(
        node(short, "--ids", "1,2", "--ids", ",".join(["1"] * 17)), "the longest --ids takes 17 tokens", "no room"
    )
    # The most that fits: the last new token is never fed back, so 3 + 14 - 1 = 16 positions.
    child = node(short, "--ids", "1,2,3", "--max-new-tokens", "14", "--min-new-tokens", "14")
    assert child.returncode == 0, child.stderr
    assert len(json.loads(child.stdout)["tokens"]) == 17


def test_a_failure_while_generating_is_one_line(short, tmp_path):
    """transformers.js logs every input tensor (console.error) and ONNX Runtime its own error line before
    the exception: both stay off stderr, which is the one `error:` line."""
    folder = Path(shutil.copytree(short, tmp_path / "claims-more"))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 4096}))
    (folder / "build_report.json").unlink()  # its context_length (16) would refuse up front
    child = node(folder, "--ids", "1,2,3", "--max-new-tokens", "20", "--min-new-tokens", "20")
    assert_one_line(child, str(folder), "does not run in transformers.js", "cos_cache", "--max-new-tokens")
    assert "Inputs given to model" not in child.stderr and "[E:onnxruntime" not in child.stderr


def test_a_folder_built_for_a_newer_runtime_says_so_not_that_it_is_damaged(built):
    """Following the builder's own advice (--target-ort 1.31 for a MoE model), the folder's QMoE
    failed in transformers.js 4.3's onnxruntime-node 1.30 and the script called the folder missing
    a file or damaged, with a rebuild that would write the same files."""
    needs_transformers_js()
    folder = built("qwen3-next", precision="int4", format="transformers.js", target_ort="1.31").output
    line = assert_one_line(node(folder, "--prompt", "Hello"), str(folder), "Unrecognized attribute: accuracy_level")
    assert "built for ONNX Runtime 1.31" in line and "damaged" not in line, line
    # Without --target-ort the builder refuses a MoE model for transformers.js: not that advice, but genai.
    assert "--format genai" in line and "without --target-ort" not in line, line


def test_a_damaged_webgpu_folder_is_called_damaged_not_a_graph_the_cpu_cannot_run(built, tmp_path):
    """Any load failure of a -e webgpu folder on --device cpu was blamed on the EP ("whose graph the
    CPU need not run ... rebuild it with -e cpu"), a missing tokenizer.json included; webgpu builds
    run on the CPU, and the fault was the file."""
    needs_transformers_js()
    source = built("qwen3", precision="int4", ep="webgpu", io_dtype="fp32", format="transformers.js").output
    folder = tmp_path / "web"
    shutil.copytree(source, folder)
    (folder / "tokenizer.json").unlink()
    line = assert_one_line(node(folder, "--prompt", "Hello"), str(folder), "tokenizer.json", "missing or damaged")
    assert "need not run" not in line and "-e webgpu" in line, line  # the rebuild keeps its EP
    # A kernel the CPU lacks is still the EP's: the fused-norm graph's GQA q/k norms run on GPUs only.
    fused = built("qwen3", precision="int4", ep="webgpu", qkv_packing="fused-norm", format="transformers.js").output
    line = assert_one_line(node(fused, "--prompt", "Hello"), str(fused), "q_norm_weight", "need not run", "-e cpu")
