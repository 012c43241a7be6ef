"""The core builds without torch or transformers (they are only in the verify/test extras).

The build runs in a subprocess where importing torch, transformers or tokenizers
raises ImportError (a sitecustomize on PYTHONPATH installs a blocking import hook),
so any import of them on the build path, however deep, fails the build. The tiny
checkpoint is made here in the parent: support.synthetic uses torch.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from support.hidden_modules import hiding

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ("torch", "transformers", "tokenizers")

SITECUSTOMIZE = hiding(*BLOCKED, why="blocked: the core must build without it")


@pytest.fixture(scope="module")
def no_torch_env(tmp_path_factory):
    blocker = tmp_path_factory.mktemp("no-torch")
    (blocker / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join([str(blocker), str(REPO)])
    return env


def test_the_blocker_blocks(no_torch_env):
    for module in BLOCKED:
        r = subprocess.run([sys.executable, "-c", f"import {module}"], env=no_torch_env, capture_output=True, text=True)
        assert r.returncode != 0 and "is blocked" in r.stderr, (module, r.stderr)


@pytest.mark.parametrize("ep", ["cpu", "webgpu"])
def test_int4_builds_without_torch_or_transformers(checkpoint, tmp_path, no_torch_env, ep):
    ckpt = checkpoint("qwen3")
    out = tmp_path / f"int4-{ep}"
    r = subprocess.run(
        [sys.executable, "-m", "builder", "-m", str(ckpt), "-p", "int4", "-e", ep, "-o", str(out)],
        env=no_torch_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    names = {p.name for p in out.iterdir()}
    assert {
        "model.onnx",
        "model.onnx.data",
        "genai_config.json",
        "build_report.json",
        "tokenizer.json",
        "tokenizer_config.json",
    } <= names, names
    report = json.loads((out / "build_report.json").read_text())
    assert report["nodes"]["by_op_type"]["MatMulNBits"] > 0
    genai = json.loads((out / "genai_config.json").read_text())
    assert genai["model"]["decoder"]["filename"] == "model.onnx"
    # The graph is complete: onnxruntime loads it and runs a prefill.
    import numpy as np

    from builder.verify import onnx_logits, onnx_session

    if ep == "cpu":
        logits = onnx_logits(onnx_session(out), np.array([[1, 2, 3]]), [4])
        assert all(np.isfinite(x).all() for x in logits)


def test_verify_without_torch_is_one_line(checkpoint, tmp_path, no_torch_env):
    out = tmp_path / "verify"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "builder",
            "-m",
            str(checkpoint("qwen3")),
            "-p",
            "int4",
            "-e",
            "cpu",
            "-o",
            str(out),
            "--verify",
        ],
        env=no_torch_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert "--verify needs torch and transformers" in r.stderr and "Traceback" not in r.stderr, r.stderr
    # The verify extra spelled out ('builder[verify]' names an unrelated package on PyPI).
    assert (
        "which a plain install leaves out: pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
        " && pip install 'transformers<6,>=5.24'" in r.stderr
    )
    assert "builder[verify]" not in r.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    "script, args, needs",
    [
        ("make_checkpoint.py", ["tiny-qwen3", "{tmp}/ckpt"], "torch and tokenizers"),
        ("check_webgpu.py", ["--swiftshader", "--only", "qwen3"], "torch, transformers, tokenizers"),
        ("fuzz_inputs.py", ["--cases", "1"], "torch, tokenizers"),
    ],
)
def test_scripts_without_torch_say_what_to_install(tmp_path, no_torch_env, script, args, needs):
    """The scripts the README and the builder's warnings point a user to (make_checkpoint.py for
    benchmark checkpoints, check_webgpu.py from --verify on webgpu, fuzz_inputs.py) ended in a
    ModuleNotFoundError traceback in a plain install's venv (scripts/quickstart.sh's)."""
    r = subprocess.run(
        [sys.executable, str(REPO / "scripts" / script), *(a.format(tmp=tmp_path) for a in args)],
        env=no_torch_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"{script}: error: it needs {needs}"), r.stderr
    assert f"bash scripts/setup.sh and then .venv/bin/python scripts/{script}" in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


DOCS = ["README.md", "docs/architecture.md", "docs/benchmarks.md", "docs/cluster.md", "docs/packing.md"]


def _flags(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text))


def test_the_docs_name_only_options_the_commands_take_and_the_readme_table_their_defaults():
    """Every flag the README and docs/ give `python -m builder`, `batch` or `inspect` is one that
    command takes, and the README's table of options names existing flags with the defaults
    options.py gives them (a target-dependent default, None in BuildOptions, is the help's word)."""
    import dataclasses

    from builder import batch, cli
    from builder.kit.options import BuildOptions

    build_parser = cli.build_parser()
    taken = {
        "build": set(build_parser._option_string_actions),
        "batch": set(batch.build_parser()._option_string_actions),
        "inspect": _flags(
            subprocess.run(
                [sys.executable, "-m", "builder", "inspect", "--help"], capture_output=True, text=True, cwd=REPO
            ).stdout
        ),
    }
    wrong = []
    for doc in DOCS:
        for line in (REPO / doc).read_text().replace("\\\n", " ").splitlines():
            for m in re.finditer(r"python3? -m builder( batch| inspect)?([^`#;|)]*)", line):
                command = (m.group(1) or " build").strip()
                wrong += [f"{doc}: {command} {flag}" for flag in sorted(_flags(m.group(2)) - taken[command])]
    assert not wrong, wrong

    defaults = {f.name: getattr(BuildOptions(), f.name) for f in dataclasses.fields(BuildOptions)}
    table = (REPO / "README.md").read_text().split("Options that matter most", 1)[1].split("\n\n", 2)[1]
    rows = [row.split("|")[1:3] for row in table.splitlines()[2:]]
    assert len(rows) >= 19, table
    for flags, default in rows:
        named = re.findall(r"--[a-z][a-z0-9-]*", flags)
        assert named and set(named) <= taken["build"], flags
        value, default = defaults[build_parser._option_string_actions[named[0]].dest], default.strip()
        if value == "auto":
            assert default.startswith("auto"), (flags, default)
        elif isinstance(value, bool):
            assert (default == "off") is (not value), (flags, default)
        elif isinstance(value, list):
            assert default == "none", (flags, default)
        elif value is not None:
            assert default == str(value), (flags, default)


def _readme_python_blocks(section: str) -> list[str]:
    """The ```python blocks of one README section (from its heading to the next of its level)."""
    text = (REPO / "README.md").read_text()
    body = text.split(f"\n{section}\n", 1)[1]
    body = re.split(r"\n#{1,3} ", body, maxsplit=1)[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


def test_the_readme_python_examples_run_as_written(tmp_path, no_torch_env):
    """The README's section Python is what users copy: its blocks, run as one script from a folder
    holding examples/tiny-qwen3 (the paths it names), in a plain install's venv (no torch), build the
    folders they name, and the plan it shows is the one the last build writes."""
    blocks = _readme_python_blocks("### Python")
    assert len(blocks) == 2 and all("examples/tiny-qwen3" in b for b in blocks), blocks
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "tiny-qwen3").symlink_to(REPO / "examples" / "tiny-qwen3")
    shown = "print(repr((arch.plan.layout.describe(), arch.spec.num_layers, arch.context_length)))"
    script = tmp_path / "readme_python.py"
    script.write_text("\n".join(blocks) + f"\n{shown}\nprint(repr(str(result.output)))\n")
    r = subprocess.run(
        [sys.executable, str(script)], env=no_torch_env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("t", "t32", "t4"):
        assert (tmp_path / "out" / name / "build_report.json").is_file(), name
    *_, plan_line, output_line = r.stdout.strip().splitlines()
    layout, num_layers, context_length = ast.literal_eval(plan_line)
    assert ast.literal_eval(output_line) == "out/t4"
    report = json.loads((tmp_path / "out" / "t4" / "build_report.json").read_text())
    assert report["layout"] == layout and (num_layers, context_length) == (2, 256)
