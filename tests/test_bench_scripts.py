"""Cheap checks of the benchmark scripts under scripts/: argument validation and the pure functions
that compute their figures (no timings, no builds)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"


def script(name: str):
    sys.path.insert(0, str(SCRIPTS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(SCRIPTS))


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPTS / name), *args], capture_output=True, text=True, cwd=REPO, timeout=120
    )


def refused_in(folder: Path, name: str, args: list[str], says: str, timeout: int = 300) -> None:
    """The script, run in `folder`, stops with one usage line holding `says` (exit 2, no traceback)."""
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / name), *args], capture_output=True, text=True, cwd=folder, timeout=timeout
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert says in done.stderr.strip().splitlines()[-1], done.stderr


def test_bench_builders_compares_last_token_logits_at_the_last_position_only():
    # A last-token-logits model gives 1 row; broadcasting it against every reference row made the
    # all-position figures compare our last row with each position.
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((8, 50)).astype(np.float32)
    m = script("bench_builders").error_metrics(ref, ref[-1:].copy())
    assert m["positions"] == "last"
    assert m["nmse_last"] == 0 and m["argmax_agree_last"]
    assert m["nmse_all"] is None and m["max_abs_all"] is None and m["argmax_agree_all"] is None


def test_bench_builders_compares_every_position_when_both_have_them():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((8, 50)).astype(np.float32)
    m = script("bench_builders").error_metrics(ref, ref.copy())
    assert m["positions"] == "all" and m["nmse_all"] == 0 and m["argmax_agree_all"] == 1.0


def test_bench_builders_table_says_na_for_last_only():
    bb = script("bench_builders")
    ref = np.eye(4, dtype=np.float32)
    acc = {"size": "s", "prompt_tokens": 4, "builders": {"ours": bb.error_metrics(ref, ref[-1:])}}
    assert "n/a (last only)" in bb.markdown({"builds": [], "runs": [], "accuracy": [acc]})


@pytest.mark.parametrize(
    ("args", "says"),
    [
        # left out without a word: the run timed or compared nothing
        (["--sizes", "0.6b", "--run-sizes", "1.7b"], "--run-sizes: qwen3-1.7b is not in --sizes (0.6b)"),
        (["--accuracy-sizes", "0.6"], "--accuracy-sizes: no checkpoint qwen3-0.6; choose from"),
        (["--sizes", "4b", "--webgpu-sizes", "0.6b"], "--webgpu-sizes: qwen3-0.6b is not in --sizes (4b)"),
        # --sizes' error offered gemma3-1b and then refused it as qwen3-gemma3-1b
        (["--sizes", "gemma3-1b", "--prompts", "x"], "--prompts 'x'"),
        # the defaults still apply only where --sizes has them
        (["--sizes", "1.7b", "--prompts", "x"], "--prompts 'x'"),
        # every build killed at once; tracebacks after the first build or the whole run
        (["--build-timeout", "0"], "--build-timeout must be at least 1 second"),
        # checkpoints made (GBs), nothing measured, exit 0
        (["--sizes", ","], "--sizes ',' names no checkpoint; pass some of gemma3-1b"),
        (["--skip-build", "--skip-run", "--skip-accuracy"], "leave nothing to do; --render JSON prints saved results"),
        (["--json", "afile/r.json"], "--json afile/r.json: not a place this run can write"),
        (["--markdown", "gone/t.md"], "--markdown gone/t.md: not a place this run can write"),
        (["--work", "afile"], "--work afile: not a place this run can write"),
    ],
)
def test_bench_builders_refuses_bad_arguments_before_any_checkpoint(tmp_path, args, says):
    from support import synthetic

    (tmp_path / "afile").write_text("")
    # Should an argument get through, the run stops here, at a folder of the user's, before GBs are written.
    for name in [*synthetic.REAL_CONFIGS, *synthetic.REAL_SHAPE_CONFIGS]:
        (tmp_path / "ck" / name).mkdir(parents=True)
        (tmp_path / "ck" / name / "NOTES.md").write_text("mine")
    refused_in(tmp_path, "bench_builders.py", ["--checkpoints", "ck", "--work", "work", *args], says, timeout=120)
    assert not (tmp_path / "work").exists()


def test_bench_builders_says_what_the_reference_builder_needs_before_any_checkpoint(tmp_path):
    """Without onnx_ir (the test venv has none) every reference build failed, after GBs of checkpoints
    and our builds, and the run exited 0 with nothing to compare."""
    from support.hidden_modules import hiding

    (tmp_path / "sitecustomize.py").write_text(hiding("onnx_ir"))
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "bench_builders.py"), "--sizes", "0.6b", "--checkpoints", "ck"]
        + ["--work", "work", "--quiet-wait", "0"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        timeout=120,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "bench_builders.py: error: it needs onnx_ir (the reference builder), which the bench extra brings: "
        "pip install -e '.[bench]' in the builder's checkout"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sitecustomize.py"]  # no checkpoint, no work folder


def test_bench_builders_remakes_a_checkpoint_it_cut_short(tmp_path):
    # A make_checkpoint.py killed as it opened the weights leaves an empty model.safetensors: the
    # check of the folder was a JSONDecodeError traceback, not a reason to make it again.
    import json

    from support import synthetic

    folder = tmp_path / "qwen3-0.6b"
    folder.mkdir()
    (folder / synthetic.MADE_MARK).write_text("")
    (folder / "config.json").write_text(json.dumps(synthetic.REAL_CONFIGS["qwen3-0.6b"]))
    (folder / "model.safetensors").write_bytes(b"")
    assert script("bench_builders").checkpoint_problem("qwen3-0.6b", folder).startswith("unreadable")


def bench_builders_with_failing_builds(folder: Path, *args: str, skip_run: bool = True) -> subprocess.CompletedProcess:
    """bench_builders.py run in `folder` on a qwen3-0.6b checkpoint of the right config and no tensors
    (which our builder refuses, in a second), with an onnx_ir that fails to import (the reference
    builder's first import): both builds fail, cheaply."""
    from support import synthetic

    checkpoint = folder / "ck" / "qwen3-0.6b"
    checkpoint.mkdir(parents=True)
    (checkpoint / "config.json").write_text(json.dumps(synthetic.REAL_CONFIGS["qwen3-0.6b"]))
    header = json.dumps({"__metadata__": {"format": "pt"}}).encode()
    (checkpoint / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    (folder / "stand_ins").mkdir()
    (folder / "stand_ins" / "onnx_ir.py").write_text('raise ImportError("onnx_ir is a stand-in of the test")\n')
    return subprocess.run(
        [sys.executable, str(SCRIPTS / "bench_builders.py"), "--sizes", "0.6b", "--checkpoints", "ck"]
        + ["--work", "work", "--quiet-wait", "0", "--skip-accuracy", *(["--skip-run"] if skip_run else []), *args],
        capture_output=True,
        text=True,
        cwd=folder,
        env={**os.environ, "PYTHONPATH": str(folder / "stand_ins")},
        timeout=300,
    )


def test_bench_builders_builds_the_checkpoints_it_was_given_relative_to_where_it_runs(tmp_path):
    """The builds run in the checkout: a relative --checkpoints named a folder there, and every build
    failed with "not a local folder" (a relative --work: built where the script did not look)."""
    bench_builders_with_failing_builds(tmp_path)
    ours = json.loads((tmp_path / "work" / "results.json").read_text())["builds"][0]["ours"]
    assert any("has no tensors model.layers.0.*" in line for line in ours["log_tail"]), ours["log_tail"]
    assert str(tmp_path / "ck" / "qwen3-0.6b") in ours["command"], ours["command"]


def test_bench_builders_exits_1_when_a_build_fails(tmp_path):
    """Every build could fail and it exited 0 below the table, as if both builders had been measured."""
    done = bench_builders_with_failing_builds(tmp_path, "--markdown", "t.md")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ours build of qwen3-0.6b int4 cpu: failed (exit 2): "), last
    assert "has no tensors model.layers.0.*" in last, last  # the builder's own reason, from its log
    assert "reference build of qwen3-0.6b int4 cpu: failed (exit 1): ImportError: onnx_ir is a stand-in" in last
    assert last.endswith("; all results, these included, are in work/results.json"), last
    # what it could write is written, the failures in it
    job = json.loads((tmp_path / "work" / "results.json").read_text())["builds"][0]
    assert job["ours"]["status"] == "failed (exit 2)" and job["reference"]["status"] == "failed (exit 1)"
    assert "failed (exit 2) / failed (exit 1)" in (tmp_path / "t.md").read_text()


def test_bench_builders_exits_1_when_a_reused_build_is_missing_or_does_not_run(tmp_path, built):
    """--skip-build with a folder that is not there timed only the other, and one that does not load
    was a row of the table: exit 0 both."""
    import shutil

    ours = tmp_path / "work" / "qwen3-0.6b-int4-cpu" / "ours"
    shutil.copytree(built("qwen3").output, ours)
    (ours / "model.onnx.data").unlink()
    done = bench_builders_with_failing_builds(
        tmp_path, "--skip-build", "--rounds", "1", "--prompts", "4", "--new-tokens", "2", skip_run=False
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    failed = done.stderr.strip().splitlines()[-1].removeprefix("error: ").split("; ")
    assert (
        failed[0]
        == "reference build of qwen3-0.6b int4 cpu: missing (--skip-build found no model.onnx to reuse under --work)"
    )
    assert failed[1].startswith("ours qwen3-0.6b did not load or run in the timing: "), failed
    assert "| qwen3-0.6b | 4 | | | ours does not load: " in done.stdout, done.stdout


def test_bench_builders_counts_a_model_the_accuracy_stage_could_not_run_as_failed():
    # The accuracy stage needs the fp32 model (GBs at 0.6b), so its result is given here.
    bb = script("bench_builders")
    accuracy = {"size": "qwen3-0.6b", "builders": {"ours": {"nmse_last": 0.0}, "reference": {"error": "no logits"}}}
    report = {"builds": [], "runs": [], "accuracy": [accuracy]}
    assert bb.failed_work(report) == ["reference qwen3-0.6b did not run in the accuracy stage: no logits"]


def test_bench_linear_attention_check_fails_a_form_past_its_tolerance():
    """`check` printed each form's difference from transformers and exited 0 whatever it was. Every
    form differs by about 1e-6 (float32): within the default tolerance, past 1e-9."""
    assert run_script("bench_linear_attention.py", "check").returncode == 0
    done = run_script("bench_linear_attention.py", "check", "--tolerance", "1e-9")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ours (max abs difference ") and ", ref (max abs difference " in last, last
    assert last.endswith("differ from transformers by more than --tolerance 1e-09"), last


def test_host_profile_counts_only_the_timed_loop():
    # classify keeps stacks with a decode_loop frame; the warm-up (graph capture, shader compiles)
    # must run under another function or its samples get scaled into the timed run's phases.
    import ast

    tree = ast.parse((SCRIPTS / "host_profile.py").read_text())
    child = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "child")
    calls = [n for n in ast.walk(child) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "decode_loop"]
    assert len(calls) == 1, "decode_loop runs more than the timed loop"
    hp = script("host_profile")
    raw = "main;warm_up (host_profile.py:80);Run (libonnxruntime.so) 5\nmain;decode_loop (x.py:1);foo (libc.so) 3\n"
    phases, _ = hp.classify(raw)
    assert sum(phases.values()) == 3


def test_bench_layouts_keeps_layouts_that_differ_only_in_target_ort_apart():
    bl = script("bench_layouts")
    resolved = "packed-split/separate/sigmoid-mul/rmsnorm"
    names = {
        bl.model_name(t, resolved)
        for t in ("packed-split/separate/sigmoid-mul/1.30", "packed-split/separate/sigmoid-mul")
    }
    assert len(names) == 2 and all(n.endswith(resolved) for n in names)


def test_bench_layouts_refuses_a_layout_given_twice():
    done = run_script(
        "bench_layouts.py", "--checkpoint", "x", "--layout", "separate/separate", "--layout", "separate/separate"
    )
    assert done.returncode == 2 and "given twice" in done.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        # read only once every layout was built and timed
        (["--extra", "r=gone"], "--extra r=gone: gone is not a built genai folder"),
        (["--json", "afile/r.json"], "--json afile/r.json: not a file this run can write"),
        (["--markdown", "afile"], "--markdown afile: not a file this run can write"),
        # its sixth part was dropped without a word
        (["--layout", "separate/separate/sigmoid-mul/auto/reshape-sln/x"], "more than the 5 parts"),
    ],
)
def test_bench_layouts_refuses_what_it_would_fail_on_after_the_builds(tmp_path, args, says):
    (tmp_path / "afile").mkdir()
    (tmp_path / "afile" / "r.json").mkdir()
    checkpoint = str(REPO / "examples" / "tiny-qwen3")
    common = ["--layout", "auto", "--work", "w", "--rounds", "1", "--prompt", "4", "--new", "4"]
    refused_in(tmp_path, "bench_layouts.py", ["--checkpoint", checkpoint, *common, *args], says)
    assert not (tmp_path / "w").exists()


def test_bench_layouts_says_which_layout_it_builds(tmp_path):
    # The builds run without their progress here, a minute each at real size, in silence.
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "bench_layouts.py"), "--checkpoint", str(REPO / "examples" / "tiny-qwen3")]
        + ["--layout", "auto", "--layout", "separate/separate", "--work", "w", "--rounds", "1"]
        + ["--prompt", "4", "--new", "4"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert "[build] 1 of 2: auto -> w/cpu-int4-auto" in lines, lines
    assert "[build] 2 of 2: separate/separate -> w/cpu-int4-separate-separate" in lines, lines


def test_bench_layouts_exits_1_when_a_model_fails_to_run(tmp_path):
    """Every model could fail (a webgpu --ep on a machine without WebGPU) and it exited 0 below the
    table: bench_genai.py, whose timing it runs, exits 1 for the same table."""
    built = subprocess.run(
        [sys.executable, "-m", "builder", "-m", str(REPO / "examples" / "tiny-qwen3"), "-p", "int4", "-e", "cpu"]
        + ["-o", str(tmp_path / "damaged")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (tmp_path / "damaged" / "model.onnx.data").unlink()
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "bench_layouts.py"), "--checkpoint", str(REPO / "examples" / "tiny-qwen3")]
        + ["--layout", "auto", "--extra", f"d={tmp_path / 'damaged'}", "--work", "w", "--rounds", "1"]
        + ["--prompt", "4", "--new", "4", "--json", "r.json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "| d | failed to load or run: " in done.stdout, done.stdout
    assert done.stderr.strip().splitlines()[-1].startswith("error: 1 of 2 models failed to load or run (d)")
    assert (tmp_path / "r.json").is_file()  # the results, failure included, as bench_genai.py writes them


@pytest.mark.parametrize("after", ["[build] 1 of 5", "[bench] warm-up round done"])
def test_bench_layouts_stopped_with_ctrl_c_ends_on_one_error_line(tmp_path, after):
    """Ctrl-C while it timed the builds was a KeyboardInterrupt traceback, and while it built one,
    the builder's line with exit 2 (a bad input's code), not 130."""
    import signal

    proc = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "bench_layouts.py"), "--checkpoint", str(REPO / "examples" / "tiny-qwen3")]
        + ["--work", "w", "--rounds", "100000", "--prompt", "4", "--new", "4", "--json", "r.json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as a terminal's Ctrl-C finds it
    )
    try:
        seen = []
        while not (seen and seen[-1].startswith(after)):
            seen.append(proc.stderr.readline())
            assert seen[-1], "".join(seen) + proc.communicate(timeout=60)[1]
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "interrupted" in last, err
    assert not out and not (tmp_path / "r.json").exists()


@pytest.mark.parametrize(
    ("name", "args", "says"),
    [
        ("bench_genai.py", ["a=/nonexistent", "--new", "1"], "--new must be at least 2"),
        ("bench_genai.py", ["a=/nonexistent", "--max-length", "0"], "--max-length 0: pass a length of 1 or more"),
        ("bench_layouts.py", ["--checkpoint", "x", "--new", "1"], "--new must be at least 2"),
        ("bench_builders.py", ["--sizes", "0.6b", "--new-tokens", "1"], "--new-tokens must be at least 2"),
        ("bench_build.py", ["--rounds", "0", "--checkpoint", "/nonexistent/ck"], "--rounds must be at least 1"),
        ("bench_linear_attention.py", ["time", "--decode-steps", "0"], "--decode-steps must be at least 1"),
        # tracebacks from torch (a negative dimension) or onnxruntime (q_num_heads, GatedDeltaNet's heads)
        ("bench_linear_attention.py", ["time", "--hidden", "-1"], "--hidden, --key-heads and --value-heads must be"),
        ("bench_linear_attention.py", ["time", "--key-heads", "0"], "--hidden, --key-heads and --value-heads must be"),
        (
            "bench_linear_attention.py",
            ["time", "--key-heads", "2", "--value-heads", "5"],
            "--value-heads 5 must be a multiple of --key-heads 2",
        ),
        ("bench_quant.py", ["--repeat", "0"], "--repeat must be at least 1"),
        # QuantScheme's ValueError, as a traceback
        ("bench_quant.py", ["--bits", "3"], "--bits 3 is not supported; allowed: (4, 8)"),
        ("bench_quant.py", ["--block-size", "7"], "--block-size 7 is not supported; allowed: (16, 32"),
        ("profile_genai.py", ["/nonexistent", "--new", "1"], "--new at least 2"),
    ],
)
def test_benchmarks_refuse_arguments_that_leave_nothing_to_measure(name, args, says):
    # Each used to crash (IndexError, ZeroDivisionError), print inf or nan, or blame genai, after the work.
    done = run_script(name, *args)
    assert done.returncode == 2, done.stderr[-500:]
    assert says in done.stderr


def test_bench_build_takes_paths_relative_to_where_it_runs(tmp_path):
    # The builds run in the checkout: a relative --checkpoint named a folder there, and every
    # build failed ("model folder 'ck' does not exist").
    import shutil

    shutil.copytree(REPO / "examples" / "tiny-qwen3", tmp_path / "ck")
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "bench_build.py"), "--checkpoint", "ck", "--work", "w", "--no-off"]
        + ["--json", "r.json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-1000:] + done.stderr[-1000:]
    assert (tmp_path / "w" / "out-after" / "model.onnx").is_file() and (tmp_path / "r.json").is_file()


def test_bench_build_says_why_a_build_failed(tmp_path):
    # It ended on "after build failed (exit 2); see LOG", a log whose last lines are /usr/bin/time's.
    import shutil

    shutil.copytree(REPO / "examples" / "tiny-qwen3", tmp_path / "ck")
    (tmp_path / "ck" / "config.json").write_text('{"model_type": "no-such-model"}')
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "bench_build.py"), "--checkpoint", "ck", "--work", "w", "--no-off"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert last.startswith("error: after build failed (exit 2): ") and "has no 'architectures' entry" in last, last
    assert last.endswith(f"; see {tmp_path / 'w' / 'after-cold.log'}"), last


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--before", "no-such-ref"], "--before no-such-ref: no such commit"),  # a CalledProcessError
        (["--json", "gone/r.json"], "--json gone/r.json: not a file this run can write"),  # after every round
        (["--work", "afile"], "--work"),  # a FileExistsError
    ],
)
def test_bench_build_refuses_bad_arguments_before_making_the_checkpoint(tmp_path, args, says):
    (tmp_path / "afile").write_text("")
    refused_in(tmp_path, "bench_build.py", ["--checkpoint", "ck", "--size", "tiny-qwen3", "--work", "w", *args], says)
    assert not (tmp_path / "ck").exists() and not (tmp_path / "w").exists()


def test_check_webgpu_fails_when_one_case_parts_from_transformers(tmp_path, monkeypatch, capsys):
    # It failed only when every row errored: one case whose genai tokens differed exited 0.
    import argparse
    import json
    import types

    cw = script("check_webgpu")
    rows = iter([{"config": "qwen3", "genai_tokens_equal": True}, {"config": "llama", "genai_tokens_equal": False}])
    commands = []

    def child(command, **_):
        commands.append(command)
        return types.SimpleNamespace(stdout=json.dumps(next(rows)), returncode=0)

    monkeypatch.setattr(cw.subprocess, "run", child)
    out = tmp_path / "rows.json"
    args = argparse.Namespace(
        only=None,
        target_ort=None,
        prompt_tokens=12,
        max_positions=8192,
        new_tokens=4000,
        swiftshader=False,
        json=str(out),
        as_built="on",
    )
    cases = [(0, "qwen3", "int4", {}), (1, "llama", "fp16", {"logits": "all"})]
    assert cw.run_cases(args, cases, tmp_path, None) == 1
    err = capsys.readouterr().err
    assert "FAILED llama-fp16-logits=all" in err and "qwen3" not in err
    assert len(json.loads(out.read_text())) == 2
    # each case's process checks what the run was asked (its default-level half takes the same argv)
    for command in commands:
        flags = dict(zip(command[2::2], command[3::2]))
        assert flags["--new-tokens"] == "4000" and flags["--max-positions"] == "8192", command


def test_check_webgpu_holds_the_default_accuracy_level_to_the_cpu_ep():
    """A case as a user builds it (level 4, int8 activations) fails where its NMSE, plain or through
    genai, is over 10x the CPU EP's on the same folder and inputs, or over ACTIVATION_QUANTIZED_NMSE
    where the CPU EP cannot run it (fused-norm); the level-0 row alone never showed the WebGPU EP's
    wrong level-4 kernel in blocks of 256 (docs/packing.md)."""
    cw = script("check_webgpu")
    level_4 = {"as_built_accuracy_level": 4, "as_built_cpu_nmse": 5e-4, "as_built_cpu_genai_nmse": 4e-4}
    assert cw.row_failures({**level_4, "as_built_nmse": 4.9e-3, "as_built_genai_nmse": 3.9e-3}) == []
    # the blocks-of-256 kernel's logits (NMSE 1.84 on SwiftShader, 1.5-1.9 on an H100)
    why = cw.row_failures({**level_4, "as_built_nmse": 1.84, "as_built_genai_nmse": 1.99})
    assert len(why) == 2 and why[0].startswith("as_built_nmse 1.84 at accuracy level 4 is over 0.005 "), why
    assert "(10x the CPU EP's 0.0005 on the same folder and inputs, at most 0.1)" in why[0], why
    assert why[1].startswith("as_built_genai_nmse 1.99 at accuracy level 4 is over 0.004 (10x the CPU EP's 0.0004"), why
    # each against its own yardstick: genai's tokens are other inputs than the plain session's
    assert len(cw.row_failures({**level_4, "as_built_nmse": 1e-3, "as_built_genai_nmse": 4.5e-3})) == 1
    assert cw.row_failures({**level_4, "as_built_nmse": float("nan"), "as_built_genai_nmse": 1e-4}) != []
    no_cpu = {"as_built_accuracy_level": 4, "as_built_cpu_error": "GroupQueryAttention (CPU): q_norm_weight ..."}
    assert cw.row_failures({**no_cpu, "as_built_nmse": 0.05, "as_built_genai_nmse": 0.05}) == []
    why = cw.row_failures({**no_cpu, "as_built_nmse": 0.5, "as_built_genai_nmse": 0.05})
    assert why == ["as_built_nmse 0.5 at accuracy level 4 is over 0.1 (the CPU EP cannot run the folder)"], why
    why = cw.row_failures({"as_built_error": "exit 1: no WebGPU adapter"})
    assert why == ["as built (default accuracy level): exit 1: no WebGPU adapter"], why


def test_check_webgpu_runs_a_batch_row_that_parted_from_transformers_again_alone(monkeypatch):
    """On an H100 a padded Qwen3.5 row left transformers at a 0.18-logit near-tie (session 46), and
    nothing told a flipped near-tie from pads in the state: the row is run alone on the same EP."""
    import types

    cw = script("check_webgpu")
    batch = [[1, 2, 3, 4], [1, 2]]
    expected = {4: [7, 8, 9], 2: [5, 6, 7]}
    alone_runs = []

    def alone(folder, prompt, new_tokens, provider):
        alone_runs.append((prompt, new_tokens, provider))
        return prompt + [5, 6, 0], None

    monkeypatch.setattr(cw, "genai_batch_greedy", lambda *a, **k: (None, [[7, 8, 9], [5, 6, 0]]))
    monkeypatch.setattr(cw, "transformers_greedy", lambda ref, p, n: p + expected[len(p)])
    monkeypatch.setattr(cw, "divergence", lambda *a: (None, None))
    monkeypatch.setattr(cw, "genai_greedy_logits", alone)
    result = types.SimpleNamespace(output="folder", report={"target": {"logits": "last"}})
    row = cw.batch_checks(result, None, batch, 4)
    assert row["genai_batch_tokens_equal"] is False and cw.row_failures(row)
    assert row["genai_batch_rows_equal_alone"] == [None, True] and alone_runs == [([1, 2], 3, "webgpu")]
    monkeypatch.setattr(cw, "genai_greedy_logits", lambda f, p, n, provider: (p + [5, 9, 9], None))
    assert cw.batch_checks(result, None, batch, 4)["genai_batch_rows_equal_alone"] == [None, False]
    # rows that equal transformers' are not run again
    monkeypatch.setattr(cw, "genai_batch_greedy", lambda *a, **k: (None, [[7, 8, 9], [5, 6, 7]]))
    assert "genai_batch_rows_equal_alone" not in cw.batch_checks(result, None, batch, 4)


def test_check_webgpu_names_a_default_level_half_that_died_or_hung(monkeypatch):
    """The default-level half runs in a child of the case's process: one that exits without its row,
    or outlives its limit (600 s at 16 new tokens), is an as_built_error of the case (so the case
    fails), not a lost row."""
    import subprocess
    import types

    cw = script("check_webgpu")
    died = types.SimpleNamespace(returncode=-6, stdout="", stderr="Traceback ...\nRuntimeError: device lost\n\n")
    monkeypatch.setattr(cw.subprocess, "run", lambda *a, **k: died)
    assert cw.as_built_in_child(["--case", "0"]) == {"as_built_error": "exit -6: RuntimeError: device lost"}

    def hangs(*a, **k):
        raise subprocess.TimeoutExpired(a[0], k["timeout"])

    monkeypatch.setattr(cw.subprocess, "run", hangs)
    row = cw.as_built_in_child(["--case", "0"])
    assert row == {"as_built_error": "no row after 600 s"} and cw.row_failures(row), row
    # a long generation (--new-tokens) gets a second more for each token past the default 16
    assert cw.as_built_in_child(["--case", "0"], 2016) == {"as_built_error": "no row after 2600 s"}


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--target-ort", "abc"], "error: --target-ort: 'abc' is not a version like 1.27 or 1.27.0"),
        (["--target-ort", "1.10"], "error: --target-ort 1.10: -e webgpu builds need ONNX Runtime >= 1.20"),
        (["--prompt-tokens", "0"], "error: --prompt-tokens must be at least 1"),
        (["--max-positions", "0"], "error: --max-positions must be at least 1"),
        (["--new-tokens", "0"], "error: --new-tokens must be at least 1"),
        # Each case failed in genai after its build and plain-session check: the prompt had no room.
        (
            ["--prompt-tokens", "241"],
            "error: --prompt-tokens 241 and genai's 16 new tokens do not fit the builds' max_length of 256 "
            "(llama's 256 positions); pass --max-positions to make the checkpoints with more",
        ),
        (
            ["--max-positions", "8192", "--prompt-tokens", "4081"],
            "error: --prompt-tokens 4081 and genai's 16 new tokens do not fit the builds' max_length of 4096 "
            "(--max-positions 8192)",
        ),
        (
            ["--max-positions", "8192", "--new-tokens", "4085"],
            "error: --prompt-tokens 12 and genai's 4085 new tokens do not fit the builds' max_length of 4096 "
            "(--max-positions 8192)",
        ),
    ],
)
def test_check_webgpu_refuses_bad_arguments_before_any_case(tmp_path, args, says):
    # Each was every case's error, after a build each, and the run blamed WebGPU (exit 1).
    done = run_script("check_webgpu.py", "--only", "llama", "--json", str(tmp_path / "rows.json"), *args)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(says), done.stderr
    assert not (tmp_path / "rows.json").exists() and not done.stdout


def test_bad_arguments_are_refused_before_torch_is_imported(tmp_path):
    """The scripts read tests/support/synthetic.py's configs to check --sizes and --prompt-tokens; that
    module imported torch at its top, so each refusal came after 2-3 s of torch's import. A torch that
    cannot be imported now changes nothing in the refusals, which shows they come before it."""
    poisoned = tmp_path / "site" / "torch"
    poisoned.mkdir(parents=True)
    (poisoned / "__init__.py").write_text("raise ImportError('torch was imported')\n")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(poisoned.parent), os.environ.get("PYTHONPATH")])),
    }
    for name, args, says in [
        ("check_webgpu.py", ["--only", "llama", "--prompt-tokens", "241"], "error: --prompt-tokens 241 and genai's"),
        ("bench_builders.py", ["--accuracy-sizes", "0.6"], "--accuracy-sizes: no checkpoint qwen3-0.6; choose from"),
    ]:
        done = subprocess.run(
            [sys.executable, str(SCRIPTS / name), *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=120
        )
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert says in done.stderr.strip().splitlines()[-1], done.stderr
    # and the poisoned torch is the one the scripts would import: make_checkpoint.py, which draws weights, meets it
    made = subprocess.run(
        [sys.executable, str(SCRIPTS / "make_checkpoint.py"), "tiny-qwen3", str(tmp_path / "ck")],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )
    assert made.returncode != 0 and "torch was imported" in made.stderr + made.stdout, made.stderr


def test_check_webgpu_makes_its_checkpoints_with_the_positions_asked(tmp_path):
    """--max-positions reaches the checkpoint's config.json (a ConditionalGeneration one's text_config),
    and a run's longest prompt is the builds' max_length less genai's new tokens (16, or --new-tokens)."""
    import json

    cw = script("check_webgpu")
    options = cw.case_options(tmp_path, "qwen3_5", "int4", {}, None, max_positions=8192)
    written = json.loads((Path(options.model) / "config.json").read_text())
    assert written["text_config"]["max_position_embeddings"] == 8192, written
    assert cw.TINY_CONFIGS["qwen3_5"]["text_config"]["max_position_embeddings"] == 256  # the suite's own
    assert cw.with_positions(cw.TINY_CONFIGS["qwen3"], 1024)["max_position_embeddings"] == 1024
    assert cw.positions_needed(240, None, {"qwen3"}) is None and cw.positions_needed(241, None, {"qwen3"})
    assert "qwen3-yarn's 128 positions" in cw.positions_needed(200, None, {"qwen3", "qwen3-yarn"})
    assert cw.positions_needed(4080, 8192, {"qwen3-yarn"}) is None and cw.positions_needed(985, 1000, {"qwen3"})
    assert cw.positions_needed(12, 8192, {"qwen3"}, new_tokens=4084) is None
    assert "genai's 4085 new tokens" in cw.positions_needed(12, 8192, {"qwen3"}, new_tokens=4085)


def device_run_parts() -> tuple[list[str], set[str], set[str]]:
    """scripts/webgpu_device_run.sh's PARTS list, the parts its branches run and those its header shows."""
    import re

    text = (SCRIPTS / "webgpu_device_run.sh").read_text()
    listed = re.search(r'^PARTS="([^"]*)"', text, re.M).group(1).split()
    branches = set(re.findall(r'"\$PART" = ([\w.-]+)', text))
    header = set(re.findall(r"^#\s+bash scripts/webgpu_device_run\.sh ([\w.-]+)", text, re.M))
    return listed, branches, header


@pytest.fixture
def capture_folder(built):
    folder = built("qwen3", ep="webgpu").output
    options = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]["session_options"]
    assert options["provider_options"][0]["webgpu"]["enableGraphCapture"] == "1"
    return folder


def without_webgpu(tmp_path, script: str, args: list[str]) -> subprocess.CompletedProcess:
    """script run where no WebGPU runtime is (the same on every machine, a GPU's included)."""
    from support.no_webgpu import NO_WEBGPU_SITECUSTOMIZE

    (tmp_path / "sitecustomize.py").write_text(NO_WEBGPU_SITECUSTOMIZE)
    return subprocess.run(
        [sys.executable, str(SCRIPTS / script), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        timeout=300,
    )


def test_replay_loop_without_webgpu_ends_on_one_error_line(capture_folder, tmp_path):
    """A machine without a WebGPU runtime (or adapter) got the BuilderError that says so inside a
    multiprocessing traceback."""
    done = without_webgpu(tmp_path, "replay_loop.py", [str(capture_folder), "--past", "8", "--steps", "2"])
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("error: no WebGPU runtime is installed: pip install") and done.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "says"),
    [
        # a ZeroDivisionError, and a mask of no tokens, after the WebGPU sessions
        (["--steps", "0"], "--steps must be at least 1 and --past at least 0"),
        (["--past", "-1"], "--steps must be at least 1 and --past at least 0"),
        # written once every loop had run: a traceback
        (["--json", "gone/r.json"], "--json gone/r.json: not a file this run can write"),
    ],
)
def test_replay_loop_refuses_what_it_would_fail_on_after_the_sessions(capture_folder, tmp_path, args, says):
    refused_in(tmp_path, "replay_loop.py", [str(capture_folder), "--past", "8", *args], says)


def test_webgpu_prefill_attention_without_webgpu_says_so_in_one_line(tmp_path):
    # The line was the child's traceback's last, "builder.kit.errors.BuilderError: ..."
    done = without_webgpu(tmp_path, "webgpu_prefill_attention.py", [])
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: no WebGPU runtime is installed: pip install"), done.stderr


def test_webgpu_prefill_attention_refuses_an_unwritable_json_first(tmp_path):
    # written once every length was measured: a traceback then
    refused_in(tmp_path, "webgpu_prefill_attention.py", ["--json", "gone/r.json"], "--json gone/r.json: not a file")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        # a ZeroDivisionError once the decode loop had run (no step after the first token)
        (["--new", "1"], "--prompt must be at least 1 token and --new at least 2"),
        (["--prompt", "0"], "--prompt must be at least 1 token and --new at least 2"),
        # written once every folder was measured: a traceback
        (["--json", "gone/r.json"], "--json gone/r.json: not a file this run can write"),
    ],
)
def test_gpu_busy_refuses_what_it_would_fail_on_after_the_run(capture_folder, tmp_path, args, says):
    refused_in(tmp_path, "gpu_busy.py", [f"a={capture_folder}", *args], says)


def test_gpu_busy_without_webgpu_ends_on_one_error_line(capture_folder, tmp_path):
    """A webgpu folder where no WebGPU runtime is: the BuilderError that says so, in a traceback.
    pynvml is a stand-in here (no NVIDIA GPU needed): the folder fails to load before it is read."""
    (tmp_path / "pynvml.py").write_text("def nvmlInit():\n    pass\n\n\ndef nvmlDeviceGetHandleByIndex(i):\n    pass\n")
    done = without_webgpu(tmp_path, "gpu_busy.py", [f"w={capture_folder}", "--prompt", "4", "--new", "4"])
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: w: this folder runs on WebGPU, and no WebGPU runtime is"), done.stderr


def test_device_run_lists_the_parts_it_has():
    listed, branches, header = device_run_parts()
    assert len(listed) == len(set(listed))
    assert set(listed) == branches == header


def test_device_run_refuses_an_unknown_part_before_it_installs_anything(tmp_path):
    # It fell through every branch, installed the carried wheels and exited 0 having measured nothing.
    out = tmp_path / "out"
    env = {"PATH": os.environ["PATH"], "OUT": str(out), "W": str(tmp_path / "w")}  # no GL, no WHEELS: not needed
    run = subprocess.run(
        ["bash", str(SCRIPTS / "webgpu_device_run.sh"), "gaol"], capture_output=True, text=True, env=env, timeout=60
    )
    listed, _, _ = device_run_parts()
    assert run.returncode == 2, run.stderr
    assert (
        run.stderr
        == f"error: no part 'gaol'; choose one of: {' '.join(listed)} (this script's header says what each measures)\n"
    )
    assert not out.exists() and not (tmp_path / "w").exists()


def test_a_benchmark_stopped_with_ctrl_c_ends_on_one_error_line():
    """bench_quant, bench_builders, profile_genai and fuzz_inputs ended a Ctrl-C in a KeyboardInterrupt
    traceback; they end through scripts/interrupt.py now. bench_quant, stopped mid-run, for them all."""
    import signal

    proc = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "bench_quant.py"), "--repeat", "50"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a background job's ignored SIGINT
    )
    try:
        header = proc.stdout.readline() + proc.stdout.readline()  # its scheme, then the table's header
        assert "params" in header, proc.communicate(timeout=60)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == "error: interrupted; the weights timed before are those printed above"


def test_each_long_running_script_ends_a_ctrl_c_through_interrupt_py():
    names = ("bench_quant", "bench_builders", "profile_genai", "fuzz_inputs", "bench_layouts", "bench_build")
    for name in (*names, "bench_linear_attention", "replay_loop", "gpu_busy"):
        tail = (SCRIPTS / f"{name}.py").read_text().rsplit('if __name__ == "__main__":', 1)[1]
        assert "from interrupt import run_main" in tail and "run_main(main, " in tail, name


def test_bench_build_stopped_with_ctrl_c_ends_on_one_error_line(tmp_path):
    """A KeyboardInterrupt traceback from whichever build or read it was waiting on."""
    import shutil
    import signal

    shutil.copytree(REPO / "examples" / "tiny-qwen3", tmp_path / "ck")
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "bench_build.py"), "--checkpoint", "ck", "--work", "w", "--no-off"]
        + ["--rounds", "100000", "--json", "r.json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as a terminal's Ctrl-C finds it
    )
    try:
        line = ""
        while not line.startswith("round 2:"):  # mid-run, one round done
            line = proc.stdout.readline()
            assert line, proc.communicate(timeout=60)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == (
        "error: interrupted; the rounds finished before are those printed above; --json was not written"
    )
    assert not (tmp_path / "r.json").exists()


def test_ctrl_c_stops_the_fuzzer_mid_build(tmp_path):
    """A build catches Ctrl-C and raises BuildInterrupted, a BuilderError, which the fuzzer counted as
    one more refused input: scripts/fuzz_inputs.py ran on through every SIGINT. The signal is sent
    while a build's staging folder exists (the generated cases build under TMPDIR)."""
    import signal
    import time

    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "fuzz_inputs.py"), "--only", "config", "--cases", "100000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a background job's ignored SIGINT
    )

    def building() -> bool:
        try:
            return any(tmp_path.glob("*/.builder-staging-*"))
        except OSError:  # a case's folder went as it was read
            return False

    try:
        deadline = time.monotonic() + 120
        while not building():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate(timeout=60)
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1] == "error: interrupted; the targets finished before are those printed above"
