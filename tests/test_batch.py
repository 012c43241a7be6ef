"""`python -m builder batch`: YAML checks, resume, failure isolation, summaries.

Every build here is of the shipped tiny checkpoint (examples/tiny-qwen3), each in
its own spawned process as the batch runs them, so a test costs ~1-4 s per built job.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from builder import cli
from builder.batch_schema import load_batch
from builder.kit.errors import BuilderError

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples" / "tiny-qwen3"
CONFIGS = ROOT / "configs"


def batch(*args) -> int:
    return cli.main(["batch", *map(str, args)])


def summary(folder: Path, stem: str) -> dict:
    data = json.loads((folder / f"{stem}-summary.json").read_text())
    data["by_name"] = {job["name"]: job for job in data["jobs"]}
    return data


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def report_times(root: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in root.glob("*/build_report.json")}


def leftovers(root: Path) -> list[str]:
    return [p.name for p in root.iterdir() if p.name.startswith(".builder-staging")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """configs/tiny.yaml built once into a temporary output root."""
    root = tmp_path_factory.mktemp("tiny-batch")
    code = batch(CONFIGS / "tiny.yaml", "--output-root", root)
    return root, code


TINY_JOBS = {"tiny-qwen3-fp32-cpu", "tiny-qwen3-int4-cpu", "tiny-qwen3-int4-webgpu"}


def test_tiny_yaml_builds_every_job(tiny):
    root, code = tiny
    assert code == 0
    s = summary(root, "tiny")
    assert set(s["by_name"]) == TINY_JOBS
    assert s["counts"] == {"built": 3, "skipped": 0, "failed": 0}
    for name, job in s["by_name"].items():
        out = root / name
        assert job["status"] == "built" and job["output"] == str(out)
        for f in ("model.onnx", "model.onnx.data", "genai_config.json", "build_report.json"):
            assert (out / f).is_file(), f"{name}/{f}"
        report = json.loads((out / "build_report.json").read_text())
        assert report["checkpoint"]["path"] == str(TINY)
        assert job["nodes"] == report["nodes"]["total"] > 0
        assert job["size_bytes"] == report["sizes"]["total_bytes"]
        assert job["seconds"] > 0 and job["peak_rss_bytes"] > 50e6
    assert s["by_name"]["tiny-qwen3-int4-cpu"]["options"]["block_size"] == 32
    assert leftovers(root) == []
    md = (root / "tiny-summary.md").read_text()
    assert all(f"| {name} | built |" in md for name in TINY_JOBS)


def test_verify_records_parity_for_cpu_and_not_run_elsewhere(tiny):
    s = summary(tiny[0], "tiny")["by_name"]
    parity = s["tiny-qwen3-fp32-cpu"]["verify"]
    assert parity["status"] == "passed" and parity["max_abs"] < 1e-4 and parity["nmse"] < 1e-8
    assert s["tiny-qwen3-int4-webgpu"]["verify"]["status"] == "not run"
    assert "targets webgpu" in s["tiny-qwen3-int4-webgpu"]["verify"]["reason"]
    assert "verify" not in s["tiny-qwen3-int4-cpu"]


def test_second_run_skips_everything(tiny, capsys):
    root, _ = tiny
    before = report_times(root)
    assert batch(CONFIGS / "tiny.yaml", "--output-root", root) == 0
    s = summary(root, "tiny")
    assert s["counts"] == {"built": 0, "skipped": 3, "failed": 0}
    assert {j["reason"] for j in s["jobs"]} == {"up to date"}
    assert report_times(root) == before
    assert capsys.readouterr().out.count("skipped tiny-qwen3-") == 3


def test_force_rebuilds(tiny):
    root, _ = tiny
    before = report_times(root)
    assert batch(CONFIGS / "tiny.yaml", "--output-root", root, "--force") == 0
    s = summary(root, "tiny")
    assert s["counts"]["built"] == 3
    after = report_times(root)
    assert all(after[name] > before[name] for name in TINY_JOBS)
    assert s["by_name"]["tiny-qwen3-fp32-cpu"]["verify"]["max_abs"] < 1e-4


TWO_JOBS = """
    output_root: out
    defaults:
      model: {model}
      precision: int4
    jobs:
      - output: a
      - output: b
        block-size: {block}
"""


def test_changed_option_rebuilds_that_job_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the model path is relative to the YAML's folder, not the cwd
    model = os.path.relpath(TINY, tmp_path / "cfg")
    path = write(tmp_path / "cfg" / "two.yaml", TWO_JOBS.format(model=model, block=32))
    assert batch(path) == 0
    out = tmp_path / "cfg" / "out"
    assert summary(out, "two")["counts"]["built"] == 2
    before = report_times(out)

    write(path, TWO_JOBS.format(model=model, block=64))
    assert batch(path) == 0
    s = summary(out, "two")["by_name"]
    assert s["a"]["status"] == "skipped"
    assert s["b"]["status"] == "built" and s["b"]["reason"] == "options changed: block-size"
    assert json.loads((out / "b" / "build_report.json").read_text())["options"]["block_size"] == 64
    after = report_times(out)
    assert after["a"] == before["a"] and after["b"] > before["b"]


BAD = {
    "unknown key": ("jobs:\n  - model: {m}\n    precison: int4\n", 3, "jobs[0].precison: unknown option"),
    "int3": ("defaults:\n  model: {m}\njobs:\n  - ep: cpu\n    precision: int3\n", 5,
             "jobs[0].precision: 'int3' is not valid"),
    "block size 48": ("defaults:\n  model: {m}\n  block-size: 48\njobs:\n  - ep: cpu\n", 3,
                      "defaults.block-size: 48 is not valid"),
    "ep tpu": ("matrix:\n  model: [{m}]\n  ep:\n    - cpu\n    - tpu\n", 5, "matrix.ep: 'tpu' is not valid"),
    "duplicate output": ("defaults:\n  model: {m}\njobs:\n  - output: x\n  - ep: webgpu\n    output: x\n", 6,
                         "jobs[1].output: "),
    "cuda fp32": ("jobs:\n  - model: {m}\n    ep: cuda\n    precision: fp32\n", 2,
                  "jobs[0]: -p fp32 -e cuda cannot work"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_invalid_file_fails_before_building(case, tmp_path, capsys):
    text, line, message = BAD[case]
    path = tmp_path / "bad.yaml"
    path.write_text("output_root: out\n" + text.format(m=TINY))
    assert batch(path) == 2
    err = capsys.readouterr().err
    assert f"{path}:{line + 1}: {message}" in err, err
    assert "nothing was built" in err
    assert not (tmp_path / "out").exists()


def test_every_problem_is_reported_at_once(tmp_path, capsys):
    path = write(tmp_path / "bad.yaml", f"""
        outptu_root: out
        jobs:
          - model: {TINY}
            precision: int3
          - model: {TINY}
            ep: tpu
    """)
    assert batch(path) == 2
    err = capsys.readouterr().err
    assert "3 problems" in err
    assert all(f"{path}:{n}:" in err for n in (1, 4, 6)), err
    assert list(tmp_path.iterdir()) == [path]


def test_failing_job_does_not_stop_the_others(tmp_path, capsys):
    foreign = tmp_path / "out" / "foreign"  # an existing folder the builder did not make
    write(foreign / "notes.txt", "mine")
    path = write(tmp_path / "mixed.yaml", f"""
        output_root: out
        jobs:
          - model: no-such-checkpoint
          - model: {TINY}
            output: good
          - model: {TINY}
            output: foreign
    """)
    assert batch(path) == 1
    s = summary(tmp_path / "out", "mixed")
    assert s["counts"] == {"built": 1, "skipped": 0, "failed": 2}
    missing = s["by_name"]["no-such-checkpoint-int4-cpu"]
    assert missing["status"] == "failed" and "does not exist" in missing["error"]
    assert "was not made by this builder" in s["by_name"]["foreign"]["error"]
    assert (foreign / "notes.txt").read_text() == "mine"
    assert (tmp_path / "out" / "good" / "build_report.json").is_file()
    assert not (tmp_path / "out" / "no-such-checkpoint-int4-cpu").exists()
    assert leftovers(tmp_path / "out") == []
    out = capsys.readouterr().out
    assert "failed  no-such-checkpoint-int4-cpu" in out and "1 built, 0 skipped, 2 failed" in out
    assert "| failed |" in (tmp_path / "out" / "mixed-summary.md").read_text()


def test_matrix_expands_to_jobs(tmp_path):
    other = tmp_path / "ckpt"
    other.mkdir()
    path = write(tmp_path / "m.yaml", """
        output_root: /somewhere
        defaults:
          block-size: 64
        matrix:
          model: [ckpt, Qwen/Qwen3-4B]
          precision: [int4, fp16]
          ep: [cpu, webgpu]
          output: "{model_name}/{precision}-{ep}-b{block_size}"
        jobs:
          - model: ckpt
            precision: int8
    """)
    jobs = load_batch(path).jobs
    assert [j.name for j in jobs] == [
        f"{m}/{p}-{e}-b64" for m in ("ckpt", "Qwen3-4B") for p in ("int4", "fp16") for e in ("cpu", "webgpu")
    ] + ["ckpt-int8-cpu"]
    assert [j.label for j in jobs] == [f"matrix[{i}]" for i in range(8)] + ["jobs[0]"]
    assert jobs[0].options.model == str(other)  # relative to the YAML file
    assert jobs[4].options.model == "Qwen/Qwen3-4B"  # a hub id stays one
    assert jobs[7].options.output == "/somewhere/Qwen3-4B/fp16-webgpu-b64"
    assert all(j.options.block_size == 64 and j.options.overwrite for j in jobs)
    path.write_text(path.read_text().replace("{block_size}", "{blocksize}"))
    with pytest.raises(BuilderError, match=r"m\.yaml:8: matrix\.output: template .* bad field \('blocksize'\)"):
        load_batch(path)


def test_family_config_expands_to_eighteen_jobs(tmp_path, capsys):
    assert batch(CONFIGS / "qwen3-family-int4.yaml", "--dry-run", "--output-root", tmp_path) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 18 and all(" build " in line for line in lines)
    for size in ("0.6B", "1.7B", "4B", "8B", "14B", "32B"):
        for ep in ("webgpu", "cpu", "cuda"):
            assert any(f"Qwen3-{size}-int4-{ep}  (Qwen/Qwen3-{size}, int4, {ep}; new)" in x for x in lines)
    assert list(tmp_path.iterdir()) == []


def test_two_jobs_run_in_parallel(tmp_path, capsys):
    path = write(tmp_path / "par.yaml", f"""
        output_root: out
        matrix:
          model: [{TINY}]
          ep: [cpu, webgpu]
    """)
    assert batch(path, "--jobs", "2") == 0
    lines = capsys.readouterr().out.splitlines()
    events = [line.split()[1] for line in lines if line.startswith("[")]
    assert events[:2] == ["start", "start"] and events[2:4] == ["built", "built"]
    s = summary(tmp_path / "out", "par")
    assert s["counts"]["built"] == 2
    assert all((tmp_path / "out" / j["name"] / "model.onnx").is_file() for j in s["jobs"])
