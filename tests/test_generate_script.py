"""scripts/generate.py on the mistakes a user makes: one line naming the input and what to do, exit 2.

The cuda and dml cases rely on the installed onnxruntime-genai lacking CUDA and DirectML:
the CPU wheel that scripts/test.sh installs (they fail, saying so, elsewhere). The webgpu
case is tests/test_webgpu.py::test_generate_without_a_webgpu_runtime_says_what_to_install.
After it, scripts/gpu_busy.py's Ctrl-C on the same folder, then the tests of generate.py on
damaged folders and on a --provider that cannot run a folder, and of the other scripts that
take a built folder (bench_genai.py, profile_genai.py, with_io_types.py, with_session_options.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.hidden_modules import hiding, interrupted_init
from support.no_webgpu import NO_WEBGPU_SITECUSTOMIZE
from support.processes import wait_for_file

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "generate.py"


def generate(folder, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(folder), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )


def assert_refused(child: subprocess.CompletedProcess, *names: str) -> str:
    """Exit 2, no traceback, and a last stderr line that names each of `names`."""
    assert child.returncode == 2, child.stderr
    assert "Traceback" not in child.stderr, child.stderr
    last = child.stderr.strip().splitlines()[-1]
    for name in names:
        assert name in last, child.stderr
    return last


def assert_genai_lacks(pattern: str, runtime: str) -> None:
    """The message under test shows only where genai cannot run the folder's provider."""
    import onnxruntime_genai as og

    found = sorted(p.name for p in Path(og.__file__).parent.glob(pattern))
    assert not found, (
        f"this onnxruntime-genai has {runtime} ({', '.join(found)}), so the missing-runtime message cannot "
        "show: run the suite in the venv scripts/test.sh makes (the CPU wheel)"
    )


@pytest.fixture(scope="module")
def cpu_folder(built):
    return built("qwen3", precision="int4").output


def test_cuda_folder_without_cuda_runtime_says_what_to_install(built):
    assert_genai_lacks("*onnxruntime-genai-cuda*", "its CUDA library")
    folder = built("qwen3", precision="int4", ep="cuda").output
    line = assert_refused(generate(folder), str(folder), "-e cuda", "pip install onnxruntime-genai-cuda", "-e cpu")
    assert line.startswith("error: ") and "GPU" in line


def test_dml_folder_without_directml_runtime_says_what_to_install(built):
    assert_genai_lacks("*DirectML*", "DirectML")
    folder = built("qwen3", precision="int4", ep="dml").output
    line = assert_refused(generate(folder), str(folder), "-e dml", "pip install onnxruntime-genai-directml", "Windows")
    assert "-e cpu" in line


def test_provider_override_without_its_runtime_names_the_option(cpu_folder):
    assert_genai_lacks("*onnxruntime-genai-cuda*", "its CUDA library")
    assert_refused(generate(cpu_folder, "--provider", "cuda"), "--provider cuda", "pip install onnxruntime-genai-cuda")


def test_unknown_provider_lists_the_valid_names(cpu_folder):
    assert_refused(generate(cpu_folder, "--provider", "gpu"), "--provider", "'gpu'", "'cpu'", "'webgpu'")


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_max_new_tokens_must_be_a_positive_number(cpu_folder, value):
    assert_refused(generate(cpu_folder, "--max-new-tokens", value), "--max-new-tokens", value)


def test_max_new_tokens_past_the_context_names_the_limit(cpu_folder):
    context = json.loads((cpu_folder / "genai_config.json").read_text())["model"]["context_length"]
    line = assert_refused(generate(cpu_folder, "--max-new-tokens", "100000"), "--max-new-tokens 100000", str(context))
    assert "context_length" in line and "or less" in line


def test_max_new_tokens_up_to_the_limit_generates(cpu_folder):
    """The limit the refusal names is one that runs: prompt tokens plus new tokens = context_length."""
    context = json.loads((cpu_folder / "genai_config.json").read_text())["model"]["context_length"]
    refusal = generate(cpu_folder, "--max-new-tokens", str(context))
    allowed = int(refusal.stderr.split("pass --max-new-tokens ")[1].split()[0])
    child = generate(cpu_folder, "--max-new-tokens", str(allowed))
    assert child.returncode == 0, child.stderr
    assert "new tokens:" in child.stdout


def test_prompt_longer_than_the_context_says_so(cpu_folder):
    assert_refused(generate(cpu_folder, "--prompt", "a b " * 300), "--prompt", "context_length")


def test_empty_prompt_is_refused(cpu_folder):
    assert_refused(generate(cpu_folder, "--prompt", ""), "--prompt", "empty")


def test_a_prompt_that_is_not_utf8_is_refused(cpu_folder):
    """Bytes the locale could not decode reached the tokenizer as surrogates: a TypeError traceback."""
    child = subprocess.run(
        [sys.executable.encode(), str(SCRIPT).encode(), str(cpu_folder).encode(), b"--prompt", b"caf\xe9"],
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert child.returncode == 2 and b"Traceback" not in child.stderr, child.stderr
    assert b"argument --prompt: is not UTF-8 text (byte 0xe9 at character 3)" in child.stderr, child.stderr


def test_malformed_genai_config_names_the_file(tmp_path):
    (tmp_path / "genai_config.json").write_text('{"model": ')
    line = assert_refused(generate(tmp_path), str(tmp_path / "genai_config.json"), "JSON", "rebuild")
    assert len(line) < 300


def test_transformers_js_folder_points_to_the_node_script(built):
    folder = built("qwen3", precision="int4", io_dtype="fp32", format="transformers.js").output
    assert (REPO / "examples" / "web" / "generate.mjs").is_file()
    assert_refused(generate(folder), str(folder), "--format transformers.js", "examples/web/generate.mjs")


NGRAM_PROMPT = ("--prompt", "a b c a b c a b c a b", "--max-new-tokens", "24")


def test_ngram_generates_the_plain_greedy_tokens_on_an_all_logits_build(built):
    folder = built("qwen3", precision="fp32", logits="all").output
    plain, speculated = generate(folder, *NGRAM_PROMPT), generate(folder, *NGRAM_PROMPT, "--ngram", "3")
    assert plain.returncode == 0 and speculated.returncode == 0, speculated.stderr
    new = [line for line in speculated.stdout.splitlines() if line.startswith("new tokens:")]
    assert new and new == [line for line in plain.stdout.splitlines() if line.startswith("new tokens:")]
    drafts = next(line for line in speculated.stdout.splitlines() if line.startswith("n-gram drafts:"))
    assert not drafts.startswith("n-gram drafts: 0 of"), drafts


@pytest.mark.parametrize("report", [True, False], ids=["report", "no-report"])
def test_ngram_on_a_last_token_build_asks_for_logits_all(cpu_folder, tmp_path, report):
    """Refused from build_report.json before the model loads, or from genai's own refusal without one."""
    folder = _copy(cpu_folder, tmp_path)
    if not report:
        (folder / "build_report.json").unlink()
    assert_refused(generate(folder, *NGRAM_PROMPT, "--ngram", "3"), "--ngram", str(folder), "--logits all")


@pytest.mark.parametrize("report", [True, False], ids=["report", "no-report"])
def test_ngram_on_a_recurrent_model_says_genai_cannot_rewind_it(built, tmp_path, report):
    """Before the last-token refusal genai itself gives first: a rebuild with --logits all would not help."""
    folder = _copy(built("qwen3_5", precision="fp32").output, tmp_path)
    if not report:
        (folder / "build_report.json").unlink()
    line = assert_refused(generate(folder, *NGRAM_PROMPT, "--ngram", "3"), "--ngram", str(folder), "without --ngram")
    assert "recurrent" in line and "--logits all" not in line


def test_speculation_turned_on_in_genai_config_names_that_section(cpu_folder, tmp_path):
    folder = _copy(cpu_folder, tmp_path)
    config = json.loads((folder / "genai_config.json").read_text())
    (folder / "genai_config.json").write_text(json.dumps({**config, "speculative": {"ngram_size": 3}}))
    assert_refused(generate(folder, *NGRAM_PROMPT), "speculative section", "--logits all", "remove that section")


def test_ngram_with_a_genai_before_speculation_asks_for_0_18(cpu_folder):
    """genai before 0.18 has no set_speculative_options: --ngram says which release it needs."""
    import importlib.util
    import types

    spec = importlib.util.spec_from_file_location("generate_script", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    old_genai = types.SimpleNamespace(GeneratorParams=type("GeneratorParams", (), {}))
    config = json.loads((cpu_folder / "genai_config.json").read_text())
    assert script._ngram_refusal(cpu_folder, config, old_genai) == (
        "--ngram needs onnxruntime-genai 0.18 or later: pip install -U onnxruntime-genai"
    )


def test_ngram_size_out_of_genai_range_is_refused(cpu_folder):
    child = generate(cpu_folder, "--ngram", "1")
    assert child.returncode == 2 and "Traceback" not in child.stderr
    assert "--ngram: 1 is out of range; pass 2 to 16 tokens (an n-gram's length)" in child.stderr


def test_missing_folder_and_folder_without_config(tmp_path):
    assert_refused(generate(tmp_path / "nope"), str(tmp_path / "nope"), "not a folder")
    assert_refused(generate(tmp_path), str(tmp_path), "no genai_config.json", "python -m builder")


def test_gpu_busy_stops_its_sampler_on_ctrl_c(cpu_folder, tmp_path):
    """scripts/gpu_busy.py left its NVML sampler thread running after Ctrl-C, and the
    interpreter waited for it at exit. NVML is a stand-in here that marks its first sample."""
    import signal
    import time

    (tmp_path / "pynvml.py").write_text(
        "import os, types\n"
        "def nvmlInit(): pass\n"
        "def nvmlDeviceGetHandleByIndex(i): return None\n"
        "def nvmlDeviceGetUtilizationRates(h):\n"
        "    open(os.environ['SAMPLING_MARK'], 'w').close()\n"
        "    return types.SimpleNamespace(gpu=0)\n"
    )
    mark = tmp_path / "sampling"
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "gpu_busy.py"), f"a={cpu_folder}", "--prompt", "8", "--new", "100000"],
        env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}", "SAMPLING_MARK": str(mark)},
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    wait_for_file(mark, proc, "it never sampled", every=0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("gpu_busy.py still ran 30 s after Ctrl-C")
    err = proc.stderr.read()
    # and it ends on the one line every long-running script ends a Ctrl-C with (scripts/interrupt.py)
    assert proc.returncode == 130 and err.startswith("error: interrupted") and "Traceback" not in err, err


# generate.py on a damaged folder, and on a --provider that cannot run the folder's graph.


def _copy(folder: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(folder, tmp_path / "copy"))


def _cut(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def test_a_model_type_genai_does_not_know_is_told_to_upgrade_genai(cpu_folder, tmp_path):
    """An onnxruntime-genai older than the folder's family (0.8.0 refused qwen3: "Unsupported model_type")
    was told the folder was damaged or built for another onnxruntime, and to rebuild it, which writes the
    same model type. A type genai 0.18 does not know stands in for the older genai here."""
    folder = _copy(cpu_folder, tmp_path)
    config = json.loads((folder / "genai_config.json").read_text())
    config["model"]["type"] = "qwen9"
    (folder / "genai_config.json").write_text(json.dumps(config))
    last = assert_refused(generate(folder, "--max-new-tokens", "2"), str(folder), "Unsupported model_type")
    assert "does not know its model type" in last and "pip install -U onnxruntime-genai" in last
    assert "rebuild" not in last


@pytest.mark.parametrize(
    "damage, names",
    [
        (lambda f: (f / "model.onnx.data").unlink(), ["model.onnx.data", "missing"]),
        (lambda f: _cut(f / "model.onnx.data", 1000), ["model.onnx.data", "truncated"]),
        (lambda f: _cut(f / "model.onnx", 5000), ["model.onnx"]),
        (lambda f: (f / "tokenizer.json").unlink(), ["tokenizer.json", "missing"]),
        (lambda f: (f / "tokenizer_config.json").unlink(), ["tokenizer_config.json", "missing"]),
        (lambda f: (f / "tokenizer.json").write_text("{"), ["tokenizer", "parse error"]),
    ],
    ids=[
        "data-deleted",
        "data-truncated",
        "model-truncated",
        "tokenizer-deleted",
        "tokenizer-config-deleted",
        "tokenizer-corrupt",
    ],
)
def test_damaged_folder_names_the_file_and_the_rebuild(cpu_folder, tmp_path, damage, names):
    folder = _copy(cpu_folder, tmp_path)
    damage(folder)
    line = assert_refused(generate(folder), str(folder), "damaged", *names)
    assert line.startswith("error: ") and "python -m builder -m " in line and f"-o {folder} --overwrite" in line
    checkpoint = json.loads((folder / "build_report.json").read_text())["options"]["model"]
    assert f"-m {checkpoint} -p int4 -e cpu" in line


def test_the_rebuild_keeps_the_family_the_folder_was_built_with(cpu_folder, tmp_path):
    """A folder a family of the user's own built (--family) was sent to a rebuild with the
    registered one, which builds another model or refuses the architecture."""
    folder = _copy(cpu_folder, tmp_path)
    report = json.loads((folder / "build_report.json").read_text())
    report["options"]["family"] = "my_families:Helium"
    (folder / "build_report.json").write_text(json.dumps(report))
    (folder / "model.onnx.data").unlink()
    line = assert_refused(generate(folder), str(folder), "model.onnx.data")
    assert "-p int4 -e cpu --family my_families:Helium -o " in line, line


def test_a_damaged_folder_without_a_report_is_not_sent_to_overwrite(cpu_folder, tmp_path):
    """Without build_report.json the builder refuses --overwrite on a folder ("not made by this
    builder"), so `-o FOLDER --overwrite` was advice that could not be followed."""
    folder = _copy(cpu_folder, tmp_path)
    (folder / "build_report.json").unlink()
    (folder / "tokenizer.json").unlink()
    line = assert_refused(generate(folder), str(folder), "damaged", "tokenizer.json", "build_report.json")
    assert "--overwrite" not in line and "remove it first" in line, line
    refused = build_cli(REPO / "examples" / "tiny-qwen3", folder, "--overwrite")  # what the advice was
    assert refused.returncode == 2 and "not made by this builder" in refused.stderr, refused.stderr


def test_the_rebuild_command_of_a_folder_with_a_space_runs(cpu_folder, tmp_path):
    """The command was pasted unquoted: `-o /x/my model --overwrite` split the folder in two words."""
    import shlex
    import shutil

    folder = Path(shutil.copytree(cpu_folder, tmp_path / "my model"))
    (folder / "tokenizer.json").unlink()
    line = assert_refused(generate(folder), "damaged", "tokenizer.json")
    command = shlex.split(line.split("rebuild it with ", 1)[1].split(" (build_report.json", 1)[0])
    assert command[:3] == ["python", "-m", "builder"] and command[command.index("-o") + 1] == str(folder), line
    rebuilt = subprocess.run(
        [sys.executable, *command[1:], "--quiet"],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # the command names the checkpoint's resolved path, so it runs from anywhere
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert generate(folder, "--max-new-tokens", "2").returncode == 0


def test_the_rebuild_command_of_a_relative_checkpoint_runs_from_anywhere(tmp_path):
    """A build given `-m ./ckpt` had its rebuild command repeat ./ckpt, which names another folder
    (or none) where the command is pasted: it now names the checkpoint's resolved path."""
    import shlex
    import shutil

    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    shutil.copytree(REPO / "examples" / "tiny-qwen3", work / "ckpt")
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    built = subprocess.run(
        [sys.executable, "-m", "builder", "-m", "./ckpt", "-o", "out", "--quiet"],
        capture_output=True, text=True, cwd=work, env=env, timeout=120,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (work / "out" / "tokenizer.json").unlink()
    line = assert_refused(generate(work / "out"), "damaged", "tokenizer.json")
    command = shlex.split(line.split("rebuild it with ", 1)[1].split(" (build_report.json", 1)[0])
    assert command[command.index("-m", 3) + 1] == str(work / "ckpt"), line
    rebuilt = subprocess.run(
        [sys.executable, *command[1:], "--quiet"], capture_output=True, text=True, cwd=elsewhere, env=env, timeout=120
    )
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert generate(work / "out", "--max-new-tokens", "2").returncode == 0


def test_a_folder_whose_path_is_no_utf8_is_refused_in_one_line(cpu_folder, tmp_path):
    """Linux names may hold any bytes, and the builder writes such a folder; genai's og.Config takes
    UTF-8 text only, and refused the path with a TypeError traceback."""
    import shutil

    folder = Path(shutil.copytree(cpu_folder, os.fsdecode(bytes(tmp_path) + b"/copy\xff")))
    assert_refused(generate(folder), "no UTF-8", "symbolic link")
    (tmp_path / "link").symlink_to(folder)  # the way out the message names
    child = generate(tmp_path / "link", "--max-new-tokens", "2")
    assert child.returncode == 0, child.stderr


def build_cli(checkpoint: Path, folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "builder", "-m", str(checkpoint), "-o", str(folder), "--quiet", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )


def test_a_checkpoint_without_a_tokenizer_asks_for_its_files_not_a_rebuild(tmp_path):
    """The build warned that the checkpoint had no tokenizer files; generate.py then called the
    folder damaged and asked for the same rebuild, which copied nothing again."""
    from support.synthetic import TINY_CONFIGS, make_checkpoint

    checkpoint = make_checkpoint(tmp_path / "ckpt", TINY_CONFIGS["qwen3"])
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (checkpoint / name).unlink()
    folder = tmp_path / "out"
    build = build_cli(checkpoint, folder)
    assert build.returncode == 0 and "tokenizer file(s) tokenizer.json, tokenizer_config.json" in build.stderr
    line = assert_refused(generate(folder), str(folder), "no tokenizer.json", "its checkpoint had none to copy")
    assert "rebuild" not in line and f"into {folder}" in line


def test_a_checkpoint_tokenizer_genai_cannot_load_is_named_not_the_folder(tmp_path):
    """A tokenizer.json that parses and has its model, but that genai's tokenizer refuses, was
    copied as it was; generate.py then called the folder damaged and asked for a rebuild, which
    copied the same file again."""
    from support.synthetic import TINY_CONFIGS, make_checkpoint

    checkpoint = make_checkpoint(tmp_path / "ckpt", TINY_CONFIGS["qwen3"])
    tokenizer = json.loads((checkpoint / "tokenizer.json").read_text())
    tokenizer["added_tokens"] = 7
    (checkpoint / "tokenizer.json").write_text(json.dumps(tokenizer))
    folder = tmp_path / "out"
    build = build_cli(checkpoint, folder)
    assert build.returncode == 0, build.stderr
    line = assert_refused(generate(folder), str(folder), "its tokenizer does not load", f"the checkpoint {checkpoint}")
    assert "fix or re-download them there, then rebuild it with" in line and "damaged" not in line
    (folder / "tokenizer.json").write_text("{")  # the folder's own copy damaged: a rebuild mends it
    assert_refused(generate(folder), f"{folder} is damaged", "rebuild it with")


def test_graph_genai_cannot_load_keeps_its_message(cpu_folder, tmp_path):
    """A model.onnx that parses but does not load: onnxruntime-genai's RuntimeError, in one line."""
    import onnx

    folder = _copy(cpu_folder, tmp_path)
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    model.graph.node[0].op_type = "NoSuchOp"
    onnx.save(model, str(folder / "model.onnx"))
    assert_refused(generate(folder), str(folder), "does not load on cpu", "NoSuchOp", "python -m builder")


def test_provider_cpu_on_a_fused_norm_webgpu_folder_says_it_was_built_for_webgpu(built):
    """GroupQueryAttention's CPU kernel takes no q_norm_weight: the folder is for another provider."""
    folder = built("qwen3", precision="int4", ep="webgpu", qkv_packing="fused-norm").output
    child = generate(folder, "--provider", "cpu", "--max-new-tokens", "2")
    assert child.returncode != 0, (
        "this onnxruntime's CPU GroupQueryAttention now runs the Q/K norm: fused-norm folders are no "
        "longer webgpu-only, so generate.py's message and the target table (kit/targets.py) need updating"
    )
    line = assert_refused(child, str(folder), "built for webgpu", "--provider cpu", "without --provider")
    assert "GroupQueryAttention" in line


def test_provider_webgpu_without_a_runtime_names_the_option(cpu_folder, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(NO_WEBGPU_SITECUSTOMIZE)
    child = subprocess.run(
        [sys.executable, str(SCRIPT), str(cpu_folder), "--provider", "webgpu"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])},
        timeout=120,
    )
    line = assert_refused(child, "--provider webgpu", "pip install onnxruntime-genai onnxruntime-ep-webgpu")
    assert "this folder runs on WebGPU" not in line and "another --provider" in line


@pytest.mark.parametrize("content", ["null", "[1, 2]", "5"])
def test_genai_config_that_is_not_an_object_names_the_file(cpu_folder, tmp_path, content):
    """Valid JSON of another kind was an AttributeError traceback."""
    folder = _copy(cpu_folder, tmp_path)
    (folder / "genai_config.json").write_text(content)
    line = assert_refused(generate(folder), str(folder), "damaged", "genai_config.json", content, "not a JSON object")
    assert f"-o {folder} --overwrite" in line


@pytest.fixture(scope="module")
def fp32_folder(built):
    return built("qwen3", precision="fp32").output


@pytest.mark.parametrize(
    "into, source, name",
    [("fp32", "int4", "model.onnx"), ("int4", "fp32", "model.onnx"), ("fp32", "int4", "model.onnx.data")],
    ids=["int4-graph-in-fp32", "fp32-graph-in-int4", "int4-data-in-fp32"],
)
def test_file_from_another_build_names_it(cpu_folder, fp32_folder, tmp_path, into, source, name):
    """A graph and weights of two builds ran with exit 0 on the wrong weights (or blamed the data)."""
    import shutil

    folders = {"int4": cpu_folder, "fp32": fp32_folder}
    folder = _copy(folders[into], tmp_path)
    shutil.copyfile(folders[source] / name, folder / name)
    line = assert_refused(generate(folder, "--max-new-tokens", "2"), str(folder), "damaged", name, "build_report.json")
    assert "another build" in line and f"-p {into} -e cpu -o {folder} --overwrite" in line


def test_mixed_files_without_a_report_still_run(cpu_folder, fp32_folder, tmp_path):
    """A folder another tool made has no build_report.json to check against: it runs as before."""
    import shutil

    folder = _copy(fp32_folder, tmp_path)
    shutil.copyfile(cpu_folder / "model.onnx", folder / "model.onnx")
    (folder / "build_report.json").unlink()
    child = generate(folder, "--max-new-tokens", "2")
    assert child.returncode == 0, child.stderr


def test_graph_rewritten_in_place_still_runs(built, tmp_path):
    """with_io_types.py rewrites model.onnx and keeps build_report.json: its size differs from the
    report's, and it still reads its own weights."""
    fp16 = built("qwen3", precision="fp16").output  # fp16 logits, which the variant casts to fp32
    variant = tmp_path / "variant"
    assert script("with_io_types.py", fp16, variant, "logits=fp32").returncode == 0
    assert (variant / "model.onnx").stat().st_size != (fp16 / "model.onnx").stat().st_size
    child = generate(variant, "--max-new-tokens", "2")
    assert child.returncode == 0, child.stderr
    assert script("with_io_types.py", fp16, variant, "logits=fp32").returncode == 0  # its own copy: replaced


def test_variant_scripts_leave_folders_they_did_not_make(cpu_folder, tmp_path):
    """with_io_types.py removed whatever DST named first: given the source twice it left only its
    model.onnx; with_session_options.py edited the source's genai_config.json in place."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    changes = {"with_io_types.py": "input_ids=int32", "with_session_options.py": "intra_op_num_threads=1"}
    for name, change in changes.items():
        for dst in (cpu_folder, mine):
            child = script(name, cpu_folder, dst, change)
            assert child.returncode == 2 and child.stderr.startswith("error: "), child.stderr
    assert (mine / "notes.txt").read_text() == "mine" and len(list(mine.iterdir())) == 1
    assert (cpu_folder / "model.onnx.data").is_file()
    child = script("with_io_types.py", cpu_folder, tmp_path / "v", "logits=fp32")  # a cpu build's are fp32
    assert child.returncode == 2 and "logits are fp32 already" in child.stderr


def test_run_failure_prints_only_the_error_line(built):
    """onnxruntime logged the failing node in red before the script's own line said the same."""
    folder = built("qwen3", precision="int4", ep="webgpu", qkv_packing="fused-norm").output
    child = generate(folder, "--provider", "cpu", "--max-new-tokens", "2")
    assert child.returncode != 0, (
        "this onnxruntime's CPU GroupQueryAttention now runs the Q/K norm: fused-norm folders are no "
        "longer webgpu-only, so generate.py's message and the target table (kit/targets.py) need updating"
    )
    assert_refused(child, str(folder), "GroupQueryAttention")
    assert len(child.stderr.strip().splitlines()) == 1 and "\x1b[" not in child.stderr, child.stderr


def test_edited_vocab_size_is_blamed_on_the_edit(cpu_folder, tmp_path):
    """A number changed in genai_config.json was blamed on the graph needing another onnxruntime."""
    folder = _copy(cpu_folder, tmp_path)
    config = json.loads((folder / "genai_config.json").read_text())
    built_vocab = config["model"]["vocab_size"]
    config["model"]["vocab_size"] = 10
    (folder / "genai_config.json").write_text(json.dumps(config))
    line = assert_refused(generate(folder, "--max-new-tokens", "2"), str(folder), "genai_config.json")
    assert f"model.vocab_size is 10, and build_report.json records {built_vocab}" in line
    assert "another onnxruntime" not in line and f"-o {folder} --overwrite" in line


# bench_genai.py: a model that fails is a row of the table and exit 1.


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_genai.py"), *args, "--provider", "cpu", "--rounds", "1"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=300,
    )


def _assert_failed(child: subprocess.CompletedProcess, *names: str) -> None:
    assert child.returncode == 1, (child.stdout, child.stderr)
    assert "Traceback" not in child.stderr, child.stderr
    assert child.stderr.strip().splitlines()[-1].startswith("error: "), child.stderr
    for name in names:
        assert f"| {name} | failed to load or run: " in child.stdout, child.stdout


def test_bench_exits_1_when_a_model_fails_and_keeps_the_table(cpu_folder, tmp_path):
    damaged = _copy(cpu_folder, tmp_path)
    (damaged / "model.onnx.data").unlink()
    child = bench(
        f"good={cpu_folder}", f"damaged={damaged}", f"gone={tmp_path / 'nonexist'}", "--prompt", "8", "--new", "4"
    )
    _assert_failed(child, "damaged", "gone")
    assert "| good | " in child.stdout and "| good | failed" not in child.stdout


def test_bench_exits_1_when_the_prompt_passes_the_context(cpu_folder):
    context = json.loads((cpu_folder / "genai_config.json").read_text())["model"]["context_length"]
    _assert_failed(bench(f"a={cpu_folder}", "--prompt", str(context + 144), "--new", "4"), "a")


def test_bench_exits_0_when_every_model_runs(cpu_folder):
    child = bench(f"a={cpu_folder}", "--prompt", "8", "--new", "4")
    assert child.returncode == 0, child.stderr
    assert "| a | " in child.stdout and "failed" not in child.stdout


def test_bench_refuses_a_name_given_twice(cpu_folder):
    # The second a=... replaced the first without a word: one model timed, one row.
    child = bench(f"a={cpu_folder}", f"a={cpu_folder}", "--prompt", "8", "--new", "4")
    assert child.returncode == 2 and "Traceback" not in child.stderr, child.stderr
    assert "'a' names two models" in child.stderr.strip().splitlines()[-1], child.stderr


@pytest.mark.parametrize("per_process", [[], ["--process-per-run"]])
def test_bench_says_as_each_round_ends(cpu_folder, per_process):
    # A real-size model takes minutes a round, and nothing was printed before the table.
    child = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_genai.py"), f"a={cpu_folder}", *per_process]
        + ["--provider", "cpu", "--rounds", "2", "--prompt", "8", "--new", "4"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=300,
    )
    assert child.returncode == 0, child.stderr
    lines = child.stderr.splitlines()
    assert "[bench] round 1 of 2 done: 1 model(s) ran" in lines and "[bench] round 2 of 2 done: 1 model(s) ran" in lines
    assert "| a | " in child.stdout and "[bench]" not in child.stdout


def test_bench_stopped_by_ctrl_c_says_so_in_one_line(cpu_folder, tmp_path):
    # A KeyboardInterrupt traceback from wherever the run was.
    import signal

    proc = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "bench_genai.py"), f"a={cpu_folder}", "--rounds", "100000"]
        + ["--prompt", "8", "--new", "4", "--json", str(tmp_path / "r.json")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as a terminal's Ctrl-C finds it
    )
    try:
        assert proc.stderr.readline().startswith("[bench] warm-up round done"), proc.stderr.read()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == (
        f"error: interrupted before the last round, so there is no table; nothing was written to {tmp_path / 'r.json'}"
    )
    assert not out and not (tmp_path / "r.json").exists()


def test_bench_refuses_a_model_without_a_name():
    child = bench("out/tiny")
    assert child.returncode == 2 and "'out/tiny' is not NAME=DIR" in child.stderr.strip().splitlines()[-1]


def _bench_without_provider(tmp_path, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "sitecustomize.py").write_text(NO_WEBGPU_SITECUSTOMIZE)  # the same result on every machine
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_genai.py"), *args, "--rounds", "1", "--prompt", "8"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])},
        timeout=300,
    )


def test_bench_times_a_folder_on_the_provider_it_was_built_for(built, tmp_path):
    # --provider defaulted to cpu: a webgpu folder was timed on the CPU, exit 0, as if on WebGPU.
    webgpu = built("qwen3", ep="webgpu").output
    child = _bench_without_provider(tmp_path, f"w={webgpu}", "--new", "4")
    assert child.stdout.startswith("provider webgpu,"), child.stdout
    _assert_failed(child, "w")
    assert "no WebGPU runtime is installed" in child.stdout


def test_bench_asks_for_a_provider_where_the_folders_differ(built, cpu_folder, tmp_path):
    webgpu = built("qwen3", ep="webgpu").output
    child = _bench_without_provider(tmp_path, f"c={cpu_folder}", f"w={webgpu}", "--new", "4")
    assert_refused(child, "built for different providers", "c=cpu, w=webgpu", "--provider")
    assert not child.stdout


def test_bench_refuses_a_max_length_below_the_run(cpu_folder):
    # It ran with prompt + new in its place, and the results file recorded the one given.
    child = bench(f"a={cpu_folder}", "--prompt", "8", "--new", "4", "--max-length", "10")
    assert_refused(child, "--max-length 10", "--prompt plus --new (12)", "pass 12 or more")
    assert not child.stdout


def test_bench_refuses_what_would_fail_after_the_run(cpu_folder, tmp_path):
    """--new 0 failed each model with genai's max_length message, a --json in a missing folder
    lost the table to a traceback, and a transformers.js folder was "Error opening ...genai_config.json"."""
    (tmp_path / "tjs").mkdir()
    (tmp_path / "tjs" / "config.json").write_text("{}")
    for models, args, words in [
        ((), ("--new", "0"), "--new must be at least 2 tokens"),
        ((), ("--json", str(tmp_path / "no" / "x.json")), "--json"),
        ((f"t={tmp_path / 'tjs'}",), (), "has no genai_config.json (a transformers.js folder or a checkpoint?)"),
    ]:
        child = bench(f"a={cpu_folder}", *models, "--prompt", "8", *args)
        assert child.returncode == 2 and words in child.stderr.strip().splitlines()[-1], child.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        # a traceback once the run was done
        (["--json", "no/x.json"], "--json no/x.json: not a file this run can write"),
        # no profile left to read: max() of an empty sequence
        (["--session-option", "enable_profiling=-"], "--session-option enable_profiling is this script's own"),
    ],
)
def test_profile_refuses_what_would_fail_after_the_run(cpu_folder, tmp_path, args, words):
    child = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "profile_genai.py"), str(cpu_folder), "--prompt", "4", "--new", "4"]
        + args,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=300,
    )
    assert child.returncode == 2 and "Traceback" not in child.stderr, child.stderr
    assert words in child.stderr.strip().splitlines()[-1], child.stderr
    assert not child.stdout


@pytest.mark.parametrize(
    "name, args",
    [("profile_genai.py", []), ("with_io_types.py", ["v", "logits=fp32"]), ("with_session_options.py", ["v", "a=1"])],
)
def test_folder_scripts_refuse_a_transformers_js_folder_as_it_is(tmp_path, name, args):
    # "this script rewrites genai folders; pass a built model folder": profile_genai.py rewrites
    # nothing, and the folder was a built one.
    (tmp_path / "tjs" / "onnx").mkdir(parents=True)
    (tmp_path / "tjs" / "config.json").write_text("{}")
    child = subprocess.run(
        [sys.executable, str(REPO / "scripts" / name), str(tmp_path / "tjs"), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert_refused(child, "transformers.js folder, which onnxruntime-genai does not load", "without --format")
    assert not (tmp_path / "v").exists()


@pytest.mark.parametrize(
    "script_name, args, words",
    [
        # after every layout was built: a ValueError, a StatisticsError
        ("bench_layouts.py", ["--checkpoint", "x", "--extra", "noequals"], "--extra 'noequals' is not NAME=DIR"),
        ("bench_layouts.py", ["--checkpoint", "x", "--rounds", "0"], "--rounds and --prompt must be at least 1"),
        # the builder's BuilderError, as a traceback
        ("bench_layouts.py", ["--checkpoint", "nonexistent"], "error: model folder 'nonexistent' does not exist"),
        # after GBs of checkpoints were written
        ("bench_builders.py", ["--prompts", "a,b"], "--prompts 'a,b': give token counts such as 128,512"),
        ("bench_builders.py", ["--sizes", "99b"], "--sizes: no checkpoint qwen3-99b; choose from"),
        ("bench_builders.py", ["--render", "nope.json"], "--render nope.json: not a results file of this script"),
    ],
)
def test_bench_scripts_refuse_bad_arguments_first(tmp_path, script_name, args, words):
    child = subprocess.run(
        [sys.executable, str(REPO / "scripts" / script_name), *args, "--work", str(tmp_path / "work")]
        + (["--checkpoints", str(tmp_path / "ck")] if script_name == "bench_builders.py" else []),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert child.returncode == 2 and "Traceback" not in child.stderr, child.stderr
    assert words in child.stderr.strip().splitlines()[-1], child.stderr
    assert not (tmp_path / "ck").exists() and not (tmp_path / "work").exists()


def test_bench_builders_render_into_a_closed_pipe_blames_no_file():
    """docs/benchmarks.md's `bench_builders.py --render docs/results/builders.json` piped to a reader
    that stopped (`| head`): the failed write was reported as 'not a results file of this script'."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        child = subprocess.run(
            [sys.executable, str(REPO / "scripts" / "bench_builders.py"), "--render", "docs/results/builders.json"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert child.returncode == 141, child.stderr
    assert child.stderr == "", child.stderr


# with_io_types.py and with_session_options.py


def script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / name), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("name", ["with_io_types.py", "with_session_options.py"])
def test_folder_scripts_help_exits_0(name):
    child = script(name, "--help")
    assert child.returncode == 0, child.stderr
    assert child.stdout.startswith("Make a copy of a built model folder") and "python scripts/" + name in child.stdout


@pytest.mark.parametrize(
    ("name", "change"), [("with_io_types.py", "logits=fp32"), ("with_session_options.py", "intra_op_num_threads=1")]
)
def test_folder_scripts_refuse_a_dst_that_cannot_be_made(cpu_folder, tmp_path, name, change):
    # Its mkdir was a NotADirectoryError traceback.
    (tmp_path / "afile").write_text("")
    child = script(name, cpu_folder, tmp_path / "afile" / "v", change)
    assert_refused(child, f"{tmp_path / 'afile' / 'v'} cannot be made: {tmp_path / 'afile'} is a file")


def _folder_script(name: str):
    import importlib

    sys.path.insert(0, str(REPO / "scripts"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "scripts"))


def test_with_io_types_leaves_no_partial_copy(built, tmp_path, monkeypatch, capsys):
    # A full disk as it wrote (the weights are copied across filesystems) left the mark and the
    # other files without model.onnx, and a traceback.
    import onnx

    fp16 = built("qwen3", precision="fp16").output

    def cut_short(model, path, *args, **kwargs):
        Path(path).write_bytes(b"\0" * 10)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx, "save", cut_short)
    dst = tmp_path / "v"
    assert _folder_script("with_io_types").main([str(fp16), str(dst), "logits=fp32"]) == 1
    assert not dst.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: cannot write {dst} (No space left on device); nothing is left there: pass a DST in a "
        "place you can write, with room for the copy"
    ]


def test_with_session_options_leaves_no_partial_copy(cpu_folder, tmp_path, monkeypatch, capsys):
    # Links made and genai_config.json not: a folder genai could not open, left behind by a traceback.
    write_text = Path.write_text

    def full_disk(self, *args, **kwargs):
        if self.name == "genai_config.json":
            raise OSError(28, "No space left on device")
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk)
    dst = tmp_path / "v"
    assert _folder_script("with_session_options").main([str(cpu_folder), str(dst), "intra_op_num_threads=1"]) == 1
    assert not dst.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: cannot write {dst} (No space left on device)"), err


@pytest.mark.parametrize(
    ("name", "change", "last_file"),
    [
        ("with_io_types.py", "input_ids=int32", "model.onnx"),
        ("with_session_options.py", "log_id=-", "genai_config.json"),
    ],
)
def test_folder_scripts_stopped_by_ctrl_c_leave_nothing_and_no_traceback(
    cpu_folder, tmp_path, monkeypatch, capsys, name, change, last_file
):
    # Ctrl-C as the last file was written (the weights copy before it takes a while at real size):
    # the copy went, then a KeyboardInterrupt traceback.
    write_bytes = Path.write_bytes

    def ctrl_c(self, *args, **kwargs):
        if self.name == last_file:
            write_bytes(self, b"\0" * 10)
            raise KeyboardInterrupt
        return write_bytes(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_bytes", ctrl_c)
    monkeypatch.setattr(Path, "write_text", lambda self, text, *a, **k: ctrl_c(self, text.encode()))
    import onnx

    monkeypatch.setattr(onnx, "save", lambda model, path, *a, **k: ctrl_c(Path(path), model.SerializeToString()))
    dst = tmp_path / "v"
    assert _folder_script(name.removesuffix(".py")).main([str(cpu_folder), str(dst), change]) == 130
    assert not dst.exists()
    assert capsys.readouterr().err.strip().splitlines() == [f"error: interrupted; nothing is left at {dst}"]


def test_with_session_options_refuses_an_entry_without_a_value(cpu_folder, tmp_path):
    dst = tmp_path / "variant"
    assert_refused(
        script("with_session_options.py", cpu_folder, dst, "intra_op_num_threads=1", "bogus"), "'bogus'", "KEY=VALUE"
    )
    assert not dst.exists()


def test_with_session_options_refuses_provider_options_on_a_cpu_folder(cpu_folder, tmp_path):
    child = script("with_session_options.py", cpu_folder, tmp_path / "v", "provider.enableGraphCapture=0")
    assert_refused(child, str(cpu_folder), "CPU provider", "provider.KEY=VALUE")


def test_with_session_options_writes_what_it_is_given(cpu_folder, tmp_path):
    dst = tmp_path / "variant"
    child = script(
        "with_session_options.py",
        cpu_folder,
        dst,
        "intra_op_num_threads=1",
        "log_id=-",
        "search.max_length=64",
        "search.temperature=0.5",
    )
    assert child.returncode == 0, child.stderr
    config = json.loads((dst / "genai_config.json").read_text())
    options = config["model"]["decoder"]["session_options"]
    assert options["intra_op_num_threads"] == 1 and "log_id" not in options
    assert config["search"]["max_length"] == 64 and config["search"]["temperature"] == 0.5
    assert_refused(script("with_session_options.py", cpu_folder, dst, "search.max_length=big"), "search.max_length")


def test_with_session_options_writes_what_genai_reads(cpu_folder, tmp_path):
    """genai refuses a file with "false" as text for its boolean options ("Expected a bool but saw a
    string") and an integer graph_optimization_level (it reads ORT_ENABLE_BASIC and the like): the
    variant loads and generates."""
    dst = tmp_path / "variant"
    child = script(
        "with_session_options.py",
        cpu_folder,
        dst,
        "enable_cpu_mem_arena=false",
        "enable_mem_pattern=true",
        "graph_optimization_level=ORT_ENABLE_BASIC",
    )
    assert child.returncode == 0, child.stderr
    options = json.loads((dst / "genai_config.json").read_text())["model"]["decoder"]["session_options"]
    assert options["enable_cpu_mem_arena"] is False and options["enable_mem_pattern"] is True
    assert options["graph_optimization_level"] == "ORT_ENABLE_BASIC"
    ran = generate(dst, "--max-new-tokens", "4")
    assert ran.returncode == 0, ran.stderr
    for change, words in [
        ("graph_optimization_level=1", "ORT_DISABLE_ALL, ORT_ENABLE_BASIC, ORT_ENABLE_EXTENDED, ORT_ENABLE_ALL"),
        ("enable_cpu_mem_arena=0", "enable_cpu_mem_arena takes true or false"),
    ]:
        assert_refused(script("with_session_options.py", cpu_folder, tmp_path / "v2", change), words)


def test_with_io_types_names_an_unknown_change(cpu_folder, tmp_path):
    assert_refused(
        script("with_io_types.py", cpu_folder, tmp_path / "v", "ids=int32"), "'ids=int32'", "input_ids=int32"
    )


def test_no_shader_f16_without_a_build_report_still_says_what_to_change(tmp_path):
    """The shader-f16 message for a folder with no build_report.json (nothing to repeat) names fp32
    activations and the command shape, once."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "generate", Path(__file__).resolve().parents[1] / "scripts/generate.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    error = RuntimeError("Program Gather requires f16 but the device does not support it.")
    message = str(module._cannot_run(tmp_path, {}, "webgpu", "webgpu", False, "run", error))
    assert "this machine's WebGPU adapter has no shader-f16" in message
    assert (
        "rebuild it with fp32 activations (-p int4 --io-dtype fp32, or -p fp32): python -m builder -m CHECKPOINT"
        in message
    )
    assert message.count("rebuild it with") == 1


def test_a_variant_copy_that_fails_asks_to_rebuild_its_source(tmp_path):
    """The builder refuses to write over a with_session_options.py copy, so `-o VARIANT --overwrite`
    was advice that could not be followed: rebuild the source, then make the copy again."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("generate", REPO / "scripts/generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    source, variant = tmp_path / "src", tmp_path / "variant"
    source.mkdir()
    variant.mkdir()
    report = {"options": {"model": "/ck/qwen3", "precision": "int4", "ep": "cpu"}}
    (source / "build_report.json").write_text(json.dumps(report))
    (variant / "build_report.json").symlink_to(source / "build_report.json")
    (variant / ".with_session_options").write_text(f"{source}\n")
    message = module._rebuild(variant)
    assert f"-o {source} --overwrite" in message and f"-o {variant}" not in message
    assert f"python scripts/with_session_options.py {source} {variant}" in message


def test_variant_scripts_refuse_what_would_damage_a_folder(built, cpu_folder, tmp_path):
    """with_io_types.py given its own copy twice removed it all but model.onnx (exit 0), and made
    a folder inside its source; with_session_options.py mixed two builds in one folder and wrote
    values genai refuses; both hard-linked or symlinked genai_config.json, so an edit of the copy
    changed the source."""
    i64 = built("qwen3", precision="int4", ep="webgpu", int32_inputs="off").output
    copy = tmp_path / "copy"
    assert script("with_io_types.py", i64, copy, "input_ids=int32").returncode == 0
    assert (copy / "genai_config.json").stat().st_nlink == 1 and (copy / "model.onnx.data").stat().st_nlink > 1
    assert_refused(script("with_io_types.py", copy, copy, "logits=fp32"), "or inside it or around it")
    assert (copy / "genai_config.json").is_file() and (copy / "model.onnx.data").is_file()
    assert_refused(script("with_io_types.py", i64, i64 / "sub", "input_ids=int32"), "or inside it or around it")
    assert not (i64 / "sub").exists()

    variant = tmp_path / "variant"
    for change, words in [
        ("intra_op_num_threads=abc", "intra_op_num_threads takes an integer"),
        ("search.max_length=true", "search.max_length takes an integer"),
    ]:
        assert_refused(script("with_session_options.py", cpu_folder, variant, change), words)
    assert script("with_session_options.py", cpu_folder, variant, "search.max_length=64").returncode == 0
    other = built("qwen3", precision="fp32").output
    assert_refused(script("with_session_options.py", other, variant, "intra_op_num_threads=1"), "was made from")
    assert script("with_session_options.py", cpu_folder, variant, "search.max_length=-").returncode == 0
    assert "max_length" not in json.loads((variant / "genai_config.json").read_text()).get("search", {})


def test_text_after_bytes_that_are_no_utf8_is_printed(cpu_folder, monkeypatch):
    """genai 0.18's decode ends the text at the first byte that is no UTF-8 (a random model's byte
    tokens; a character cut by --max-new-tokens): 'text:' lost the rest of the tokens in silence.
    Checked against transformers' decode, runs of U+FFFD counted as one (transformers gives one per
    invalid sequence, genai one per byte)."""
    import random
    import re

    import onnxruntime_genai as og
    from transformers import AutoTokenizer

    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    from generate import decode_all

    ours, theirs = og.Tokenizer(og.Model(str(cpu_folder))), AutoTokenizer.from_pretrained(str(cpu_folder))
    cut = [443, 83, 83, 83, 67, 67, 331, 331, 331, 331, 135, 135, 183, 183, 368, 183]  # tiny-qwen3's greedy tokens
    assert ours.decode(cut) == " whotttddveryveryveryvery\ufffd"  # genai's own: 'nt' and after gone
    squeeze = lambda text: re.sub("\ufffd+", "\ufffd", text)  # noqa: E731
    assert decode_all(ours, cut) == theirs.decode(cut) == " whotttddveryveryveryvery" + "\ufffd" * 4 + "nt\ufffd"
    rng = random.Random(0)
    for _ in range(200):
        tokens = [rng.choice([t for t in range(477) if t != 188]) for _ in range(rng.randrange(1, 25))]  # 188: NUL
        assert squeeze(decode_all(ours, tokens)) == squeeze(theirs.decode(tokens, skip_special_tokens=True)), tokens


def _byte_symbols() -> dict[int, str]:
    """The characters byte-level BPE vocabularies write each byte as (GPT-2's bytes_to_unicode)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    moved = [b for b in range(256) if b not in kept]
    return {**{b: chr(b) for b in kept}, **{b: chr(256 + n) for n, b in enumerate(moved)}}


def test_a_token_that_ends_one_character_and_begins_the_next_streams_its_text(fp32_folder, tmp_path, monkeypatch):
    """Byte-level BPE can merge across characters, into tokens that end one character and begin the next: a
    valid text can need more than 4 tokens to end on a whole character. The stream gave up after 4
    and wrote each held token as U+FFFD: '😀中', as the bytes F0 9F 98 | 80 E4 | B8 AD, came out as
    six U+FFFD, on the terminal and in the text: line, where genai's own decode gives '😀中'."""
    import onnxruntime_genai as og

    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    from generate import decode_all

    folder = _copy(fp32_folder, tmp_path)
    symbol = _byte_symbols()
    spec = json.loads((folder / "tokenizer.json").read_text())
    spec["model"]["vocab"] = {**{symbol[b]: b for b in range(256)}, symbol[0x80] + symbol[0xE4]: 256}
    spec["model"]["merges"] = [[symbol[0x80], symbol[0xE4]]]
    spec["added_tokens"] = []
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("added_tokens_decoder")
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = og.Tokenizer(og.Model(str(folder)))
    tokens = [0xF0, 0x9F, 0x98, 256, 0xB8, 0xAD]
    assert tokenizer.decode(tokens) == "😀中"
    assert decode_all(tokenizer, tokens) == "😀中"
    assert decode_all(tokenizer, tokens[:4]) == "😀\ufffd"  # cut there by --max-new-tokens
    assert decode_all(tokenizer, [0xF0, *tokens[:4], 0x41]) == "\ufffd😀\ufffdA"  # bytes that are no UTF-8


# generate.py as a practitioner runs it: the text as it comes, sampling with the folder's options, chat.


def _script_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("generate_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tokens(child: subprocess.CompletedProcess, label: str) -> list[int]:
    """The ids generate.py printed on its `label` line ("prompt tokens", "new tokens")."""
    assert child.returncode == 0, child.stderr
    line = next(line for line in child.stdout.splitlines() if line.startswith(f"{label}:"))
    return json.loads(line.split(":", 1)[1])


def test_the_text_is_written_as_the_tokens_come(fp32_folder, monkeypatch):
    """generate.py printed the text once the last token was generated: a long answer showed nothing
    until its end. Each write to stdout is recorded here with the number of tokens generated by then;
    the streamed text is the one the `text:` line quotes, and the lines after it stay as they were."""
    import ast
    import io

    import onnxruntime_genai as og

    script, generated, writes = _script_module(), [0], []
    real = og.Generator

    class Counted:
        def __init__(self, *args):
            self._generator = real(*args)

        def __getattr__(self, name):
            return getattr(self._generator, name)

        def generate_next_token(self):
            self._generator.generate_next_token()
            generated[0] += 1

    class Recorded(io.StringIO):
        def write(self, text):
            writes.append((generated[0], text))
            return super().write(text)

    out = Recorded()
    monkeypatch.setattr(og, "Generator", Counted)
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(
        sys, "argv", ["generate.py", str(fp32_folder), "--prompt", "The river", "--max-new-tokens", "12"]
    )
    assert script.main() == 0
    assert generated[0] == 12
    during = sorted({count for count, text in writes if text and count < 12})
    assert len(during) >= 6 and during[0] == 0, writes  # the prompt first, then most tokens' text as it came
    streamed, rest = out.getvalue().split("\n", 1)
    lines = rest.splitlines()
    assert [line.split(":")[0] for line in lines[:3]] == ["prompt tokens", "new tokens", "text"], lines
    assert lines[3].startswith("prompt of 2 tokens in ") and "12 new tokens in " in lines[3], lines
    text = ast.literal_eval(lines[2].removeprefix("text: "))  # the repr generate.py printed
    assert text.startswith("The river") and streamed == script._terminal_text(text)


# A sitecustomize.py that slows each genai step down, so that the reader below has closed the pipe
# long before the last token's text is written.
SLOW_STEPS_SITECUSTOMIZE = """
import time
import onnxruntime_genai as og

_Generator = og.Generator

class _Slow:
    def __init__(self, *args):
        self._generator = _Generator(*args)

    def __getattr__(self, name):
        return getattr(self._generator, name)

    def generate_next_token(self):
        time.sleep(0.02)
        self._generator.generate_next_token()

og.Generator = _Slow
"""


def slow_generation(folder, tmp_path, **popen) -> subprocess.Popen:
    """generate.py on `folder` for 200 tokens, each step slowed (SLOW_STEPS_SITECUSTOMIZE), its output piped."""
    (tmp_path / "sitecustomize.py").write_text(SLOW_STEPS_SITECUSTOMIZE)
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), str(folder), "--prompt", "The river", "--max-new-tokens", "200"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])},
        **popen,
    )


def test_a_reader_that_stops_early_ends_it_quietly(fp32_folder, tmp_path):
    """`generate.py ... | head -c 20`: the text written token by token met the closed pipe while it
    generated; it stops there as a Unix tool does (exit 141), without a traceback."""
    proc = slow_generation(fp32_folder, tmp_path)
    proc.stdout.read(5)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "Exception ignored" not in err, err


def test_a_full_disk_under_stdout_is_one_error_line(cpu_folder):
    """`generate.py ... > log` on a full disk ended in an OSError traceback."""
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [sys.executable, str(SCRIPT), str(cpu_folder), "--max-new-tokens", "4"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            timeout=120,
        )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == (
        "error: could not write to stdout (No space left on device); free space on the disk it goes to\n"
    ), proc.stderr


def test_ctrl_c_while_the_text_streams_stops_without_a_traceback(fp32_folder, tmp_path):
    """Ctrl-C is how one stops a reply that runs on: it ended generate.py with a KeyboardInterrupt
    traceback. It stops as the builder does: the streamed line ended, one error line, exit 130."""
    import signal

    # a shell's background job ignores SIGINT; a terminal's foreground one does not
    proc = slow_generation(fp32_folder, tmp_path, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    streamed = proc.stdout.read(len("The river") + 1)  # the prompt and a new token's first byte: it streams
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    err = err.decode()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "error: interrupted", err
    assert streamed.startswith(b"The river") and out.endswith(b"\n") and b"new tokens:" not in out, out


@pytest.mark.parametrize("encoding", ["cp1252", "ascii"])
def test_text_the_output_encoding_lacks_is_written_escaped(fp32_folder, encoding):
    """stdout in an encoding without U+FFFD or CJK (a redirected stdout on Windows is cp1252): the
    streamed text ended the run with a UnicodeEncodeError traceback. Such characters are escaped."""
    child = subprocess.run(
        [sys.executable, str(SCRIPT), str(fp32_folder), "--prompt", "The river 河", "--max-new-tokens", "16"],
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONIOENCODING": encoding},
        timeout=120,
    )
    out = child.stdout.decode(encoding)
    assert child.returncode == 0 and "Traceback" not in child.stderr.decode(errors="replace"), child.stderr
    assert out.startswith("The river \\u6cb3") and "new tokens:" in out, out


SAMPLE_PROMPT = ("--prompt", "The river", "--max-new-tokens", "16")


def test_sample_with_a_seed_gives_the_same_tokens_again(fp32_folder):
    """--sample draws with the folder's own temperature, top_k and top_p (tiny-qwen3's are Qwen3's:
    0.6, 20, 0.95), and --seed is genai's random_seed: one seed repeats, another draws otherwise."""
    search = json.loads((fp32_folder / "genai_config.json").read_text())["search"]
    first, again, other = (generate(fp32_folder, *SAMPLE_PROMPT, "--sample", "--seed", s) for s in ("7", "7", "8"))
    greedy = _tokens(generate(fp32_folder, *SAMPLE_PROMPT), "new tokens")
    assert _tokens(first, "new tokens") == _tokens(again, "new tokens")
    assert _tokens(first, "new tokens") != _tokens(other, "new tokens")
    assert _tokens(first, "new tokens") != greedy  # it samples, where the folder's do_sample was left to greedy
    (said,) = [line for line in first.stdout.splitlines() if line.startswith("sampled: ")]
    expected = f"temperature {search['temperature']}, top_k {search['top_k']}, top_p {search['top_p']}"
    assert said == f"sampled: {expected} (genai_config.json), random_seed 7", said


def test_sample_with_the_folder_top_k_1_is_greedy(fp32_folder, tmp_path):
    """The folder's search options are the ones --sample draws with: top_k 1 leaves one token to draw."""
    folder = _copy(fp32_folder, tmp_path)
    config = json.loads((folder / "genai_config.json").read_text())
    config["search"]["top_k"] = 1
    (folder / "genai_config.json").write_text(json.dumps(config))
    sampled = generate(folder, *SAMPLE_PROMPT, "--sample", "--seed", "7")
    assert _tokens(sampled, "new tokens") == _tokens(generate(folder, *SAMPLE_PROMPT), "new tokens")
    assert "top_k 1," in sampled.stdout


@pytest.mark.parametrize(
    "args, words",
    [
        (("--seed", "3"), ["--seed", "pass --sample too"]),
        (("--sample", "--seed", "2147483648"), ["--seed", "0 to 2147483647"]),
        (("--sample", "--seed", "x"), ["--seed", "'x' is not a whole number"]),
    ],
    ids=["without-sample", "past-int32", "not-a-number"],
)
def test_seed_is_refused_where_genai_would_not_use_it(fp32_folder, args, words):
    assert_refused(generate(fp32_folder, *args), *words)


# A template in the style of Llama 3's: a default system message, the given one trimmed; stored as
# chat_template.jinja, where newer checkpoints keep it (tokenizer_config.json then has none).
JINJA_TEMPLATE = (
    "{%- set ns = namespace(system='You are a tiny model.') %}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set ns.system = messages[0]['content'] | trim %}{%- set messages = messages[1:] %}"
    "{%- endif %}"
    "{{- '<|im_start|>system\\n' + ns.system + '<|im_end|>\\n' }}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] | trim + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def _template_only_in_jinja(folder: Path, template: str) -> Path:
    """`folder` (a checkpoint or a built folder) with `template` as chat_template.jinja and no
    chat_template in tokenizer_config.json."""
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "chat_template.jinja").write_text(template)
    return folder


def _transformers_chat_ids(folder: Path, messages: list[dict]) -> list[int]:
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(str(folder)).apply_chat_template(messages, add_generation_prompt=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


@pytest.fixture(scope="module")
def jinja_folder(tmp_path_factory):
    """A build of a checkpoint whose chat template is in chat_template.jinja alone."""
    from support.synthetic import TINY_CONFIGS, make_checkpoint

    root = tmp_path_factory.mktemp("jinja")
    checkpoint = _template_only_in_jinja(make_checkpoint(root / "ckpt", TINY_CONFIGS["qwen3"]), JINJA_TEMPLATE)
    build = build_cli(checkpoint, root / "out")
    assert build.returncode == 0, build.stderr
    assert (root / "out" / "chat_template.jinja").read_text() == JINJA_TEMPLATE
    return root / "out"


@pytest.mark.parametrize("system", [None, "  Be brief, très brief.  "], ids=["user", "system"])
@pytest.mark.parametrize("where", ["tokenizer_config", "chat_template.jinja"])
def test_chat_prompt_is_the_ids_of_transformers_chat_template(fp32_folder, jinja_folder, where, system):
    """--chat formats --prompt (and --system) with the folder's template through onnxruntime-genai:
    the prompt's ids are those of transformers' apply_chat_template(..., add_generation_prompt=True)."""
    folder = fp32_folder if where == "tokenizer_config" else jinja_folder
    prompt = "Where does the river go? Über die Brücke ✓"
    child = generate(
        folder, "--chat", "--prompt", prompt, "--max-new-tokens", "4", *(("--system", system) * bool(system))
    )
    messages = [{"role": "system", "content": system}] * bool(system) + [{"role": "user", "content": prompt}]
    expected = _transformers_chat_ids(folder, messages)
    assert _tokens(child, "prompt tokens") == expected
    assert "note:" not in child.stderr, child.stderr  # genai applied it, not the transformers fallback
    text = next(line for line in child.stdout.splitlines() if line.startswith("text: "))
    assert text.startswith("text: '<|im_start|>") and "<|im_start|>assistant\\n" in text  # the formatted conversation


def test_chat_greedy_tokens_are_transformers_greedy_tokens(fp32_folder, checkpoint):
    """The tokens --chat generates on an fp32 build are transformers' greedy ones on the same chat ids."""
    import torch
    from transformers import AutoModelForCausalLM

    child = generate(fp32_folder, "--chat", "--prompt", "Tell me about the river.", "--max-new-tokens", "12")
    prompt = _transformers_chat_ids(fp32_folder, [{"role": "user", "content": "Tell me about the river."}])
    assert _tokens(child, "prompt tokens") == prompt
    reference = AutoModelForCausalLM.from_pretrained(checkpoint("qwen3"), dtype=torch.float32)
    with torch.no_grad():
        theirs = reference.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)[0].tolist()
    assert _tokens(child, "new tokens") == theirs[len(prompt) :]


def test_chat_on_a_folder_without_a_template_says_what_to_do(fp32_folder, tmp_path):
    folder = _copy(fp32_folder, tmp_path)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    child = generate(folder, "--chat", "--prompt", "Hi")
    line = assert_refused(child, str(folder), "has no chat template", "without --chat", "chat_template.jinja")
    assert len(child.stderr.strip().splitlines()) == 1 and line.startswith("error: --chat: "), child.stderr


def test_chat_template_json_alone_is_a_chat_template(fp32_folder, tmp_path):
    """onnxruntime-genai reads chat_template.json too (a processor's file, which some checkpoints hold
    instead): --chat formats the prompt with it as with chat_template.jinja, not 'no chat template'."""
    folder = _template_only_in_jinja(_copy(fp32_folder, tmp_path), JINJA_TEMPLATE)
    chat = ("--chat", "--prompt", "Hi there", "--max-new-tokens", "2")
    expected = _tokens(generate(folder, *chat), "prompt tokens")
    (folder / "chat_template.jinja").unlink()
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": JINJA_TEMPLATE}))
    child = generate(folder, *chat)
    assert _tokens(child, "prompt tokens") == expected
    assert "note:" not in child.stderr, child.stderr  # genai applied it, not the transformers fallback


def test_chat_template_genai_cannot_apply_is_applied_by_transformers(fp32_folder, tmp_path):
    """genai's Jinja engine has no capitalize filter (Jinja2 has): transformers formats the prompt then."""
    template = JINJA_TEMPLATE.replace("message['role'] + '\\n'", "message['role'] | capitalize + '\\n'")
    folder = _template_only_in_jinja(_copy(fp32_folder, tmp_path), template)
    child = generate(folder, "--chat", "--prompt", "Hi there", "--max-new-tokens", "4")
    assert "note: onnxruntime-genai cannot apply" in child.stderr, (
        "this onnxruntime-genai applies the capitalize filter: pick a filter it lacks for this test"
    )
    assert _tokens(child, "prompt tokens") == _transformers_chat_ids(folder, [{"role": "user", "content": "Hi there"}])
    assert "<|im_start|>User\\n" in child.stdout


NO_TRANSFORMERS_SITECUSTOMIZE = hiding("transformers")


def test_chat_template_genai_cannot_apply_without_transformers_says_what_to_install(fp32_folder, tmp_path):
    """A plain install (scripts/quickstart.sh's venv) has no transformers to fall back on: one line."""
    template = JINJA_TEMPLATE.replace("message['role'] + '\\n'", "message['role'] | capitalize + '\\n'")
    folder = _template_only_in_jinja(_copy(fp32_folder, tmp_path), template)
    (tmp_path / "sitecustomize.py").write_text(NO_TRANSFORMERS_SITECUSTOMIZE)
    child = subprocess.run(
        [sys.executable, str(SCRIPT), str(folder), "--chat", "--prompt", "Hi"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])},
        timeout=120,
    )
    assert_refused(child, str(folder), "cannot apply", "pip install transformers", "without --chat")
    assert len(child.stderr.strip().splitlines()) == 1, child.stderr


def test_system_message_a_template_refuses_is_named(fp32_folder, tmp_path):
    """A template that takes no system message (Gemma 2's raise_exception): one line naming --system."""
    refusing = "{%- if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    folder = _template_only_in_jinja(_copy(fp32_folder, tmp_path), refusing + JINJA_TEMPLATE)
    assert generate(folder, "--chat", "--prompt", "Hi", "--max-new-tokens", "2").returncode == 0
    line = assert_refused(generate(folder, "--chat", "--system", "Be brief.", "--prompt", "Hi"), str(folder))
    assert "System role not supported" in line and "--system" in line, line


def test_system_without_chat_is_refused(fp32_folder):
    assert_refused(generate(fp32_folder, "--system", "Be brief."), "--system", "pass --chat too")


# Qwen3's switch, as its template has it: an empty thinking block opens the reply when it is false.
THINKING_TEMPLATE = JINJA_TEMPLATE.replace(
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}",
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}",
)


def test_template_var_is_passed_to_the_chat_template(fp32_folder, tmp_path):
    """Qwen3's enable_thinking=false could not be set: genai 0.18's apply_chat_template takes no variables."""
    assert THINKING_TEMPLATE != JINJA_TEMPLATE
    folder = _template_only_in_jinja(_copy(fp32_folder, tmp_path), THINKING_TEMPLATE)
    messages = [{"role": "user", "content": "Hi"}]
    off = generate(
        folder, "--chat", "--prompt", "Hi", "--template-var", "enable_thinking=false", "--max-new-tokens", "2"
    )
    on = generate(folder, "--chat", "--prompt", "Hi", "--max-new-tokens", "2")
    from transformers import AutoTokenizer

    expected = AutoTokenizer.from_pretrained(str(folder)).apply_chat_template(
        messages, add_generation_prompt=True, enable_thinking=False
    )
    expected = list(expected["input_ids"] if hasattr(expected, "keys") else expected)
    assert _tokens(off, "prompt tokens") == expected
    assert _tokens(on, "prompt tokens") == _transformers_chat_ids(folder, messages) != expected
    assert "</think>" in off.stdout and "</think>" not in on.stdout


def test_template_var_takes_pythons_false_and_names_a_variable_the_template_never_reads(fp32_folder, tmp_path):
    """enable_thinking=False (Python's, and Jinja's, spelling) was the text "False", true in the
    template's test, so the thinking stayed on without a word; so it did for a misspelt name."""
    folder = _template_only_in_jinja(_copy(fp32_folder, tmp_path), THINKING_TEMPLATE)
    chat = (folder, "--chat", "--prompt", "Hi", "--max-new-tokens", "2")
    off = generate(*chat, "--template-var", "enable_thinking=false")
    python_off = generate(*chat, "--template-var", "enable_thinking=False")
    assert python_off.returncode == 0, python_off.stderr
    assert _tokens(python_off, "prompt tokens") == _tokens(off, "prompt tokens")
    assert "warning" not in off.stderr + python_off.stderr
    misspelt = generate(*chat, "--template-var", "enable_thinkng=false")
    assert misspelt.returncode == 0, misspelt.stderr
    assert "</think>" not in misspelt.stdout
    assert (
        f"warning: --template-var enable_thinkng: {folder}'s chat template never reads enable_thinkng, "
        "so it changes nothing"
    ) in misspelt.stderr


@pytest.mark.parametrize(
    "args, words",
    [
        (("--template-var", "enable_thinking=false"), ("--template-var", "pass --chat too")),
        (("--chat", "--template-var", "enable_thinking"), ("--template-var", "NAME=VALUE")),
    ],
)
def test_template_var_is_refused_where_it_cannot_work(fp32_folder, args, words):
    assert_refused(generate(fp32_folder, *args), *words)


def test_template_var_without_transformers_says_what_to_install(fp32_folder, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(NO_TRANSFORMERS_SITECUSTOMIZE)
    child = subprocess.run(
        [sys.executable, str(SCRIPT), str(fp32_folder), "--chat", "--prompt", "Hi", "--template-var", "x=1"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])},
        timeout=120,
    )
    assert_refused(child, "takes no template variables", "pip install transformers", "without --template-var")
    assert len(child.stderr.strip().splitlines()) == 1, child.stderr


def interrupted_at(args: list[str], site: Path, marker: str) -> tuple[int, str, str]:
    """generate.py ARGS run as from a terminal (Ctrl-C at its default), with `site` on PYTHONPATH for a
    sitecustomize.py; a Ctrl-C once its stderr's first line is `marker`. (exit status, stdout, the
    stderr after the marker)."""
    import signal

    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(site)},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert proc.stderr.readline() == marker, proc.communicate(timeout=60)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=90)
    finally:
        proc.kill()
    return proc.returncode, out, err


# The builder's import, held until a signal: where a Ctrl-C lands in the imports' few tenths of a second.
SLOW_BUILDER_IMPORT_SITECUSTOMIZE = """
import sys
import time

class _SlowBuilderImport:
    def find_spec(self, name, path=None, target=None):
        if name == "builder":
            print("importing builder", file=sys.stderr, flush=True)
            time.sleep(60)
        return None

sys.meta_path.insert(0, _SlowBuilderImport())
"""


def test_ctrl_c_while_it_imports_stops_without_a_traceback(tmp_path):
    """A Ctrl-C in the first few tenths of a second, as generate.py imported numpy and the builder's
    helpers, was a KeyboardInterrupt traceback (and a death by SIGINT): main() catches it only later."""
    (tmp_path / "sitecustomize.py").write_text(SLOW_BUILDER_IMPORT_SITECUSTOMIZE)
    # The checkout comes from the script's own sys.path.
    code, out, err = interrupted_at([str(tmp_path / "folder")], tmp_path, "importing builder\n")
    assert code == 130 and err == "error: interrupted\n" and not out, err


# Python's shutdown, held until a signal: where a Ctrl-C lands as the run ends.
SLOW_SHUTDOWN_SITECUSTOMIZE = """
import atexit
import sys
import time

def _slow_shutdown():
    print("shutting down", file=sys.stderr, flush=True)
    time.sleep(3)  # the signal comes at once; ignored, the shutdown goes on

atexit.register(_slow_shutdown)
"""


def test_ctrl_c_as_it_ends_keeps_the_finished_run(cpu_folder, tmp_path):
    """The text and timings were written, and a Ctrl-C in Python's shutdown added an "Exception
    ignored" KeyboardInterrupt traceback (or, once Python had put SIG_DFL back, killed the finished
    run). As the builder does after a build, a finished run ignores it: exit 0, nothing on stderr."""
    (tmp_path / "sitecustomize.py").write_text(SLOW_SHUTDOWN_SITECUSTOMIZE)
    code, out, err = interrupted_at([str(cpu_folder), "--max-new-tokens", "4"], tmp_path, "shutting down\n")
    assert code == 0 and not err, err
    assert "new tokens:" in out, out


def test_ctrl_c_right_after_the_last_line_is_no_traceback(cpu_folder):
    """A Ctrl-C as the timings line came out landed mostly as genai's objects were freed and main()
    returned: a KeyboardInterrupt traceback (exit -2), or one in Python's shutdown. It ends the run
    there (error: interrupted, 130) or, once main() has returned, is ignored (0). Timing-bound: 7 or
    8 of 10 runs showed it, so 3 runs all but always do."""
    import signal

    for _ in range(3):
        proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), str(cpu_folder), "--max-new-tokens", "4"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as a terminal's Ctrl-C finds it
        )
        try:
            for line in proc.stdout:
                if line.startswith("prompt of "):  # the timings, its last line
                    proc.send_signal(signal.SIGINT)
                    break
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        assert (proc.returncode, err) in ((0, ""), (130, "error: interrupted\n")), (proc.returncode, err)


# A Ctrl-C as onnx's import begins; at exit, whether the import ran to its end.
CTRL_C_AS_ONNX_IMPORTS_SITECUSTOMIZE = """
import atexit
import signal
import sys

class _CtrlCAsOnnxImports:
    def find_spec(self, name, path=None, target=None):
        if name == "onnx":
            sys.meta_path.remove(self)
            signal.raise_signal(signal.SIGINT)
        return None

sys.meta_path.insert(0, _CtrlCAsOnnxImports())
atexit.register(lambda: print(f"onnx imported: {'onnx' in sys.modules}", file=sys.stderr))
"""


def test_ctrl_c_while_onnx_initialises_waits_for_its_import(cpu_folder, tmp_path):
    """A Ctrl-C that landed in onnx's C extension initialisation (the folder's graph is read with onnx
    before genai loads it) aborted the process: "terminate called after throwing an instance of
    'nanobind::python_error'" and SIGABRT. As the builder's imports of C extensions do, the import
    runs to its end and the Ctrl-C acts after it; here it comes as the import begins."""
    (tmp_path / "sitecustomize.py").write_text(CTRL_C_AS_ONNX_IMPORTS_SITECUSTOMIZE)
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(cpu_folder), "--max-new-tokens", "4"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        timeout=120,
    )
    assert done.returncode == 130 and done.stderr == "error: interrupted\nonnx imported: True\n", done.stderr
    assert not done.stdout


GENAI_INIT_INTERRUPTED_SITECUSTOMIZE = interrupted_init("onnxruntime_genai.onnxruntime_genai")


def test_ctrl_c_while_genai_initialises_is_no_missing_install(cpu_folder, tmp_path):
    """A Ctrl-C that lands while onnxruntime-genai's C extension initialises comes out of the import as
    ImportError('initialization failed') caused by the KeyboardInterrupt (as onnxruntime's does,
    tests/test_hardening.py), which generate.py answered with 'onnxruntime-genai is not installed'."""
    (tmp_path / "sitecustomize.py").write_text(GENAI_INIT_INTERRUPTED_SITECUSTOMIZE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "generate.py"), str(cpu_folder)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 130 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "error: interrupted", done.stderr
