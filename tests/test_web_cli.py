"""examples/web/generate.mjs on the mistakes a user makes: usage for --help (exit 0) and for
no argument (exit 2); otherwise one `error: ` line naming the folder and what it needs, exit 2.

Node runs the script as in tests/test_transformers_js.py; the refusals before the model
loads need no npm packages, the damaged-folder case needs @huggingface/transformers in
examples/web/node_modules (scripts/setup.sh installs it).
"""

from __future__ import annotations

import shutil
import subprocess
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
    ],
)
def test_bad_options_are_named(tmp_path, args, names):
    assert_refused(node(tmp_path, *args), *names)


def test_damaged_transformers_js_folder_names_the_file_and_the_rebuild(built, tmp_path):
    if not (WEB / "node_modules" / "@huggingface" / "transformers" / "package.json").is_file():
        pytest.fail(f"{WEB}/node_modules lacks @huggingface/transformers: run `bash scripts/setup.sh`")
    source = built("qwen3", precision="int4", io_dtype="fp32", format="transformers.js").output
    folder = Path(shutil.copytree(source, tmp_path / "tjs"))
    for data in (folder / "onnx").glob("*.onnx_data*"):
        data.unlink()
    line = assert_refused(node(folder, "--max-new-tokens", "2"), str(folder), "onnx_data", "python -m builder -m ")
    assert f"{BUILD} -o {folder} --overwrite" in line


def test_a_dtype_the_folder_lacks_says_what_it_holds(built):
    """--dtype q4f16 on a q4 folder suggested the rebuild that made the q4 folder."""
    if not (WEB / "node_modules" / "@huggingface" / "transformers" / "package.json").is_file():
        pytest.fail(f"{WEB}/node_modules lacks @huggingface/transformers: run `bash scripts/setup.sh`")
    folder = built("qwen3", precision="int4", io_dtype="fp32", format="transformers.js").output
    line = assert_refused(node(folder, "--dtype", "q4f16", "--max-new-tokens", "2"), str(folder), "it holds q4 weights")
    assert "--overwrite" not in line
