"""`python -m builder batch`: YAML checks, resume, failure isolation, summaries.

Every build here is of the shipped tiny checkpoint (examples/tiny-qwen3), each in
its own spawned process as the batch runs them, so a test costs ~1-4 s per built job.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import textwrap
from pathlib import Path

import pytest

from builder import cli
from builder.batch_schema import load_batch
from builder.kit.errors import BuilderError
from support.fake_terminal import FakeTerminal
from support.processes import wait_for_file

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
    assert s["counts"] == {"built": 3, "skipped": 0, "failed": 0, "interrupted": 0}
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
    # A separator row of fewer cells than the header's is no Markdown table: it showed as text.
    lines = md.splitlines()
    header = lines.index("| job | status | time | peak RSS | size | nodes | verify | note |")
    assert lines[header + 1] == "|---|---|---|---|---|---|---|---|"


def test_help_quotes_the_tiny_jobs_measured_memory(tiny):
    """batch --help's 'tiny-qwen3 N GB' is what such a job peaks at: it said 0.06 GB after the load
    check's onnxruntime import had brought the job to 0.08 GB."""
    from builder.batch import MEMORY_NOTE

    quoted_gb = float(re.search(r"tiny-qwen3 ([0-9.]+) GB", MEMORY_NOTE).group(1))
    measured_gb = summary(tiny[0], "tiny")["by_name"]["tiny-qwen3-int4-cpu"]["peak_rss_bytes"] / 1e9
    assert 0.75 < measured_gb / quoted_gb < 1.33, (measured_gb, quoted_gb)


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
    assert s["counts"] == {"built": 0, "skipped": 3, "failed": 0, "interrupted": 0}
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
    "int3": (
        "defaults:\n  model: {m}\njobs:\n  - ep: cpu\n    precision: int3\n",
        5,
        "jobs[0].precision: 'int3' is not valid",
    ),
    "block size 48": (
        "defaults:\n  model: {m}\n  block-size: 48\njobs:\n  - ep: cpu\n",
        3,
        "defaults.block-size: 48 is not valid",
    ),
    "ep tpu": ("matrix:\n  model: [{m}]\n  ep:\n    - cpu\n    - tpu\n", 5, "matrix.ep: 'tpu' is not valid"),
    "duplicate output": (
        "defaults:\n  model: {m}\njobs:\n  - output: x\n  - ep: webgpu\n    output: x\n",
        6,
        "jobs[1].output: ",
    ),
    "executor": (
        "executor: slurm\njobs:\n  - model: {m}\n",
        1,
        "executor: 'slurm' is not valid; choose one of local, ray",
    ),
    # an empty value replaced defaults: with the builder's default, in silence
    "empty precision": (
        "defaults:\n  precision: fp16\njobs:\n  - model: {m}\n    precision:\n",
        5,
        "jobs[0].precision: has no value; give one, or leave the key out",
    ),
    "cuda fp32": (
        "jobs:\n  - model: {m}\n    ep: cuda\n    precision: fp32\n",
        2,
        "jobs[0]: -p fp32 -e cuda cannot work",
    ),
    # values of the wrong type were built as their Python spelling: a folder "['a', 'b']"
    "model 5": ("jobs:\n  - model: 5\n", 2, "jobs[0].model: must be text, got 5; quote it"),
    "model list": (
        "jobs:\n  - model: [a, b]\n",
        2,
        "jobs[0].model: must be one value, got ['a', 'b']; to build each value, make it a matrix: axis",
    ),
    "int8-layers 5": (
        "jobs:\n  - model: {m}\n    int8-layers: 5\n",
        3,
        "jobs[0].int8-layers: must be a pattern or a list of patterns, got 5",
    ),
    "float-layers item": (
        "defaults:\n  model: {m}\n  float-layers: [lm_head, 7]\njobs:\n  - ep: cpu\n",
        3,
        "defaults.float-layers: must be a pattern or a list of patterns, got ['lm_head', 7]",
    ),
    "int8-layers float": (  # a YAML float is kept as written, still not a pattern
        "jobs:\n  - model: {m}\n    int8-layers: 0.5\n",
        3,
        "jobs[0].int8-layers: must be a pattern or a list of patterns, got 0.5",
    ),
    # YAML's true would be 1 and its text a True, where the flag takes neither
    "verify text": ("jobs:\n  - model: {m}\n    verify: 'no'\n", 3, "jobs[0].verify: must be true or false, got 'no'"),
    "context-length true": (
        "jobs:\n  - model: {m}\n    context-length: true\n",
        3,
        "jobs[0].context-length: must be an integer, got True",
    ),
    "context-length text": (
        "jobs:\n  - model: {m}\n    context-length: many\n",
        3,
        "jobs[0].context-length: must be an integer, got 'many'",
    ),
    # YAML 1.1 reads a bare yes/no/on/off as true/false: the message showed a True the file never said
    "a bare off for a choice": (
        "jobs:\n  - model: {m}\n    qkv-packing: off\n",
        3,
        "jobs[0].qkv-packing: 'False' is not valid; choose one of auto, packed-split, separate, fused-norm "
        "(YAML reads a bare off as false)\n",
    ),
    "a bare yes for a name": (
        "matrix:\n  model: [{m}]\n  output: [Yes]\n",
        3,
        "matrix.output: must be text, got True; quote it if that is the name you mean (YAML reads a bare Yes as true)",
    ),
    "output float": ("jobs:\n  - model: {m}\n    output: 2024.5\n", 3, "jobs[0].output: must be text, got 2024.5"),
    "output mapping": ("jobs:\n  - model: {m}\n    output: {{a: 1}}\n", 3, "jobs[0].output: must be one value"),
    "target-ort list": ("matrix:\n  model: [{m}]\n  target-ort: [[1.30]]\n", 3, "matrix.target-ort: must be one value"),
    # batch replaces its own outputs: an overwrite: key did nothing
    "overwrite": (
        "defaults:\n  model: {m}\n  overwrite: false\njobs:\n  - ep: cpu\n",
        3,
        "defaults.overwrite: batch always replaces the outputs it built and skips those up to date; "
        "drop overwrite: (--force rebuilds every job)",
    ),
    # defaults.verify silently won over the top-level shorthand
    "verify twice": (
        "verify: true\ndefaults:\n  model: {m}\n  verify: false\njobs:\n  - ep: cpu\n",
        1,
        "verify: given at the top level and as defaults.verify (line 5); keep one",
    ),
    # the top-level shorthand is named as written, not as "top level.verify"
    "verify maybe": ("verify: maybe\njobs:\n  - model: {m}\n", 1, "verify: must be true or false, got 'maybe'"),
    # block-size and block_size are one option: the last one won in silence
    "a key twice in two spellings": (
        "jobs:\n  - model: {m}\n    block-size: 32\n    block_size: 64\n",
        4,
        "jobs[0].block_size: given twice (also on line 4)",
    ),
    # one job written as a mapping was passed over, and the file refused for having no jobs
    "jobs as a mapping": ("jobs:\n  model: {m}\n", 1, "jobs: must be a list of jobs (- model: ...)"),
    # product() over an empty axis made no jobs, and the file was refused for its exclude: or built nothing
    "empty axis": ("matrix:\n  model: [{m}]\n  ep: []\n", 3, "matrix.ep: empty list, so the matrix has no jobs"),
    "exclude not a list": (
        "matrix:\n  model: [{m}]\n  ep: [cpu, webgpu]\n  exclude: {{ep: cpu}}\n",
        4,
        "matrix.exclude: must be a list of combinations to leave out (- ep: cuda)",
    ),
    # a list rendered as its repr: folders named l-['lm_head']
    "list in a template": (
        "matrix:\n  model: [{m}]\n  int8-layers: [[lm_head], ['*.v_proj']]\n  output: 'l-{{int8_layers}}'\n",
        4,
        "matrix.output: template 'l-{int8_layers}' uses {int8_layers}, a list of patterns, which makes no folder name",
    ),
    # an unmatched brace raised out of string.Formatter().parse, a traceback
    "unmatched brace in a job": (
        "jobs:\n  - {{model: {m}, output: '{{model_name'}}\n",
        2,
        "jobs[0].output: template '{model_name' has an unmatched brace (expected '}' before end of string)",
    ),
    "unmatched brace in a matrix": (
        "matrix:\n  model: [{m}]\n  precision: [int4, fp32]\n  output: '{{model_name}}-{{precision'\n",
        4,
        "matrix.output: template '{model_name}-{precision' has an unmatched brace",
    ),
    "single closing brace in defaults": (
        "defaults:\n  output: 'x}}'\njobs:\n  - model: {m}\n",
        2,
        "defaults.output: template 'x}' has an unmatched brace (Single '}' encountered in format string)",
    ),
    "doubled closing brace": (
        "jobs:\n  - {{model: {m}, output: '{{model_name}}}}'}}\n",
        2,
        "jobs[0].output: template '{model_name}}' has an unmatched brace",
    ),
    # {model_name.upper} named the folder after a bound method's address, new every run
    "attribute in a template": (
        "jobs:\n  - {{model: {m}, output: '{{model_name.upper}}'}}\n",
        2,
        "jobs[0].output: template '{model_name.upper}' reads into a field with {model_name.upper}; "
        "use the field alone, as {model_name}; fields: model_name, family, precision",
    ),
    "dunder in a template": (
        "jobs:\n  - {{model: {m}, output: '{{model_name.__class__}}'}}\n",
        2,
        "jobs[0].output: template '{model_name.__class__}' reads into a field",
    ),
    "index in a template": (
        "jobs:\n  - {{model: {m}, output: '{{precision[0]}}'}}\n",
        2,
        "jobs[0].output: template '{precision[0]}' reads into a field with {precision[0]}",
    ),
    # quotes or padding spaces in a folder name
    "conversion in a template": (
        "jobs:\n  - {{model: {m}, output: '{{precision!r}}'}}\n",
        2,
        "jobs[0].output: template '{precision!r}' formats a field with {precision!r}; write it plain, as {precision}",
    ),
    "format spec in a template": (
        "jobs:\n  - {{model: {m}, output: '{{precision:>10}}'}}\n",
        2,
        "jobs[0].output: template '{precision:>10}' formats a field with {precision:>10}; write it plain",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_invalid_file_fails_before_building(case, tmp_path, capsys):
    text, line, message = BAD[case]
    path = tmp_path / "bad.yaml"
    path.write_text("output_root: out\n" + text.format(m=TINY))
    assert batch(path) == 2
    err = capsys.readouterr().err
    assert f"{path}:{line + 1}: {message}" in err, err
    assert "nothing was built" in err and "problems, nothing was built" not in err, err  # that one problem alone
    assert not (tmp_path / "out").exists()


def test_a_job_that_is_no_mapping_is_refused_and_makes_no_job(tmp_path):
    """A `-` whose options were all commented out built the defaults in silence, and an item that
    is no mapping became a job of the defaults too, so `- int4` also read as taking another job's
    output."""
    path = write(
        tmp_path / "j.yaml",
        f"defaults: {{model: {TINY}, ep: cpu}}\njobs:\n  - # precision: fp16\n    # ep: webgpu\n"
        "  - {precision: int8}\n",
    )
    with pytest.raises(BuilderError) as refused:
        load_batch(path)
    assert str(refused.value) == (
        f"{path}:3: jobs[0]: an empty job (a - with nothing after it); give it its options, or remove the - "
        "(a job of the defaults alone is - {})\nnothing was built"
    )
    write(path, f"defaults: {{model: {TINY}}}\njobs:\n  - int4\n  - fp16\n")
    with pytest.raises(BuilderError) as refused:
        load_batch(path)
    assert str(refused.value) == (
        f"{path}: 2 problems, nothing was built:\n  {path}:3: jobs[0]: must be a mapping of key: value\n"
        f"  {path}:4: jobs[1]: must be a mapping of key: value"
    )
    write(path, f"defaults: {{model: {TINY}}}\njobs:\n  - {{}}\n")  # the defaults alone, written as such
    assert [job.options.precision for job in load_batch(path).jobs] == ["int4"]


def test_a_file_that_is_a_list_of_jobs_is_told_to_put_it_under_jobs(tmp_path):
    """It read 'top level: must be a mapping of key: value', which did not say what to write."""
    path = write(tmp_path / "l.yaml", f"- model: {TINY}\n  precision: int4\n")
    with pytest.raises(BuilderError) as refused:
        load_batch(path)
    assert str(refused.value) == (
        f"{path}:1: the file is a list; a batch file is a mapping of defaults:, matrix: and jobs: "
        "(configs/tiny.yaml is an example): to list jobs, put the list under jobs:\nnothing was built"
    )


def test_yaml_values_mean_what_the_flags_mean(tmp_path):
    """YAML 1.1 reads a bare on/off as true/false, where the choice was meant; a pattern list may be
    one text separated by commas, as --int8-layers takes it, and an empty item is no pattern."""
    job = f"  - model: {TINY}\n    graph-capture: off\n    int32-inputs: on\n    int8-layers: 'lm_head, *.v_proj,'\n"
    path = write(tmp_path / "y.yaml", "jobs:\n" + job)
    (job,) = load_batch(path).jobs
    assert (job.options.graph_capture, job.options.int32_inputs) == ("off", "on")
    assert job.options.int8_layers == ["lm_head", "*.v_proj"]


def test_matrix_jobs_sharing_an_output_are_told_what_to_name(tmp_path, capsys):
    """'give each job its own output' cannot be done for matrix jobs, which share a template."""
    path = write(
        tmp_path / "m.yaml", f"defaults:\n  model: {TINY}\nmatrix:\n  accuracy-level: 4\n  block-size: [32, 64]\n"
    )
    assert batch(path, "--dry-run") == 2
    hint = 'give the matrix an output: template that names what differs, such as output: "'
    template = "{model_name}-{precision}-{ep}-{block_size}"  # not the accuracy level all the jobs share
    err = capsys.readouterr().err
    assert hint + template + '"' in err
    # Each job is named with its combination, as the file's other errors name it: matrix[1] alone left
    # the user to count through the product.
    assert "matrix[1].output (block-size 64): " in err and "output of matrix[0] (block-size 32; line 3); " in err
    write(path, path.read_text() + f'  output: "{template}"\n')
    assert [job.name for job in load_batch(path).jobs] == ["tiny-qwen3-int4-cpu-32", "tiny-qwen3-int4-cpu-64"]
    # Models of other names were sent out of the matrix, and two axes got a hint a pair, each
    # naming one of them: one hint now names every option that varies.
    other = tmp_path / "other-model"
    other.symlink_to(TINY)
    path = write(
        tmp_path / "m.yaml",
        f'matrix:\n  model: [{TINY}, {other}]\n  block-size: [32, 64]\n  output: "{{precision}}-{{ep}}"\n',
    )
    assert batch(path, "--dry-run") == 2
    err = capsys.readouterr().err
    assert err.count(hint + "{model_name}-{precision}-{ep}-{block_size}" + '"') == 3, err
    # Matrix jobs that differ only in a list of patterns, which no template may name, were told to
    # name the fields they share; a job under jobs: taking a matrix job's output has a template of its own.
    path = write(
        tmp_path / "m.yaml",
        f"matrix:\n  model: [{TINY}]\n  int8-layers: [[lm_head], ['*.v_proj']]\n  output: same\n"
        f"jobs:\n  - model: {TINY}\n    output: same\n",
    )
    assert batch(path, "--dry-run") == 2
    err = capsys.readouterr().err
    assert "m.yaml:4: matrix[1].output (model " in err and "give these jobs their own output: under jobs:" in err
    assert "m.yaml:7: jobs[0].output: " in err and "['lm_head']; line 1); give each job its own output\n" in err
    assert hint not in err, err


def test_a_file_that_is_no_valid_yaml_is_named_with_the_line_of_its_fault(tmp_path):
    path = write(tmp_path / "bad.yaml", f"jobs:\n  - model: {TINY}\n   ep: cpu\n")
    with pytest.raises(BuilderError) as refused:
        load_batch(path)
    assert str(refused.value) == (
        f"{path}:3: not valid YAML: expected <block end>, but found '<block mapping start>'\nnothing was built"
    )


YAML_FAULTS = {
    # PyYAML's problem alone was the end of a sentence: "not valid YAML: second occurrence"
    "duplicate anchor": (
        "x-gpu: &base {{ep: webgpu}}\nx-cpu: &base {{ep: cpu}}\njobs:\n  - {{<<: *base, model: {m}}}\n",
        2,
        "found duplicate anchor 'base'; first occurrence on line 1, second occurrence here; give each anchor "
        "its own name",
    ),
    "two documents": (
        "defaults: {{model: {m}}}\n---\njobs:\n  - ep: cpu\n",
        2,
        "expected a single document in the stream on line 1, but found another document here; a batch file "
        "is one YAML document",
    ),
    "tab": (
        "jobs:\n  - model: {m}\n\tep: cpu\n",
        3,
        "found character '\\t' that cannot start any token; replace the tab with spaces",
    ),
    # PyYAML's own two lines: a position in "<unicode string>", no line
    "terminal colour code": (
        "jobs:\n  - model: {m}\n    output: \x1b[0mx\n",
        3,
        "unprintable character U+001B at column 13, which YAML does not allow; delete it\nnothing was built",
    ),
    "undefined alias": ("jobs:\n  - {{<<: *base, model: {m}}}\n", 2, "found undefined alias 'base'; an alias"),
}


@pytest.mark.parametrize("case", list(YAML_FAULTS))
def test_a_yaml_fault_says_what_is_wrong_and_what_to_do(case, tmp_path):
    text, line, message = YAML_FAULTS[case]
    path = write(tmp_path / "bad.yaml", text.format(m=TINY))
    with pytest.raises(BuilderError) as refused:
        load_batch(path)
    assert f"{path}:{line}: not valid YAML: {message}" in str(refused.value), refused.value


def test_a_file_that_cannot_be_read_as_yaml_says_nothing_was_built_too(tmp_path, monkeypatch):
    """Invalid YAML, an unknown tag, aliases past the limit, another encoding and a missing file
    did not end with 'nothing was built' as every other problem of the file does."""
    from builder import batch_yaml

    monkeypatch.setattr(batch_yaml, "MAX_VALUES", 5)
    files = {
        "yaml": b"jobs: [a\n",
        "tag": b"jobs: !custom 1\n",
        "aliases": b"x: &a [1, 2, 3]\njobs: [*a, *a]\n",
        "latin": "output_root: caf\xe9\n".encode("latin-1"),
        "missing": None,
    }
    for name, data in files.items():
        path = tmp_path / f"{name}.yaml"
        if data is not None:
            path.write_bytes(data)
        with pytest.raises(BuilderError) as refused:
            load_batch(path)
        message = str(refused.value)
        assert str(path) in message and message.endswith("\nnothing was built"), message
        assert message.count("nothing was built") == 1, message


def test_every_problem_is_reported_at_once(tmp_path, capsys):
    path = write(
        tmp_path / "bad.yaml",
        f"""
        outptu_root: out
        jobs:
          - model: {TINY}
            precision: int3
          - model: {TINY}
            ep: tpu
    """,
    )
    assert batch(path) == 2
    err = capsys.readouterr().err
    assert "3 problems" in err
    assert all(f"{path}:{n}:" in err for n in (1, 4, 6)), err
    assert list(tmp_path.iterdir()) == [path]
    # Listed by line, whichever check found each: the top-level executor: is checked before the jobs.
    write(path, f"jobs:\n  - model: {TINY}\n    precision: int3\nexecutor: slurm\n")
    with pytest.raises(BuilderError) as refused:
        load_batch(path)
    assert [line.split(":")[1] for line in str(refused.value).splitlines()[1:]] == ["3", "4"], refused.value


def broken_checkpoint(folder: Path) -> Path:
    """A checkpoint no check short of building finds wrong: its config and no weights."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_bytes((TINY / "config.json").read_bytes())
    return folder


def test_failing_job_does_not_stop_the_others(tmp_path, capsys):
    broken_checkpoint(tmp_path / "broken")
    path = write(
        tmp_path / "mixed.yaml",
        f"""
        output_root: out
        jobs:
          - model: broken
          - model: {TINY}
            output: good
    """,
    )
    assert batch(path) == 1
    s = summary(tmp_path / "out", "mixed")
    assert s["counts"] == {"built": 1, "skipped": 0, "failed": 1, "interrupted": 0}
    failed = s["by_name"]["broken-int4-cpu"]
    assert failed["status"] == "failed" and "no *.safetensors files" in failed["error"]
    assert (tmp_path / "out" / "good" / "build_report.json").is_file()
    assert not (tmp_path / "out" / "broken-int4-cpu").exists()
    assert leftovers(tmp_path / "out") == []
    out = capsys.readouterr().out
    assert "failed  broken-int4-cpu" in out and "1 built, 0 skipped, 1 failed" in out
    assert "| failed |" in (tmp_path / "out" / "mixed-summary.md").read_text()


def test_a_missing_model_or_a_taken_output_is_refused_before_any_build(tmp_path, capsys):
    """Each was found only at its job's turn: a mistyped path failed after the jobs before it
    had run for hours, and the next run found the next one."""
    foreign = tmp_path / "out" / "foreign"  # an existing folder the builder did not make
    write(foreign / "notes.txt", "mine")
    write(tmp_path / "out" / "afile", "mine")
    path = write(
        tmp_path / "taken.yaml",
        f"""
        output_root: out
        jobs:
          - model: {TINY}
            output: good
          - model: {tmp_path / "nope"}
          - model: {TINY}
            output: foreign
          - model: {TINY}
            output: afile
    """,
    )
    assert batch(path, "--dry-run") == 2
    assert (
        capsys.readouterr().err
        == f"error: {path}:5: jobs[1].model: no folder {tmp_path / 'nope'}; check the path\nnothing was built\n"
    )
    write(path, path.read_text().replace(f"{tmp_path / 'nope'}", "nope/two/deep"))
    assert batch(path) == 2
    assert capsys.readouterr().err.splitlines()[0] == (
        f"error: {path}:5: jobs[1].model: no folder {tmp_path / 'nope/two/deep'} (nor a hub id: those are "
        "owner/name); a relative path is read from the batch file's folder, whatever folder the batch runs from"
    )
    write(path, path.read_text().replace("nope/two/deep", "~nosuchuser-here/x"))
    assert batch(path) == 2
    assert "jobs[1].model: no home folder for '~nosuchuser-here'" in capsys.readouterr().err
    write(path, path.read_text().replace("  - model: ~nosuchuser-here/x\n", ""))
    assert batch(path, "--dry-run") == 2  # what a run would refuse, the dry run shows
    assert "outputs the builds would refuse (nothing was built)" in capsys.readouterr().err
    assert batch(path) == 2
    err = capsys.readouterr().err
    assert "outputs the builds would refuse (nothing was built)" in err
    # named as the file's other problems are: file, line of its output:, job
    assert f"  {path}:6: jobs[1].output: output folder {foreign} exists and was not made by this builder" in err
    assert (
        f"  {path}:8: jobs[2].output: output {tmp_path / 'out' / 'afile'} exists and is a file; give the job "
        "another output folder"
    ) in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["afile", "foreign"]
    assert (foreign / "notes.txt").read_text() == "mine"


def test_a_model_that_is_a_folder_only_where_the_batch_runs_is_refused(tmp_path, monkeypatch):
    """org/name with no such folder beside the file reads as a hub id, and the build then took
    the current folder's: the same file built another checkpoint, or failed, by where it ran."""
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "tiny").symlink_to(TINY)
    path = write(tmp_path / "cfg" / "rel.yaml", "jobs:\n  - model: examples/tiny\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BuilderError, match=r"'examples/tiny' is no folder beside the batch file") as refused:
        load_batch(path)
    assert str(tmp_path / "examples" / "tiny") in str(refused.value)
    monkeypatch.chdir(tmp_path / "cfg")  # from here it is a hub id, looked up when built
    assert load_batch(path).jobs[0].options.model == "examples/tiny"
    (tmp_path / "cfg" / "examples").mkdir()
    (tmp_path / "cfg" / "examples" / "tiny").symlink_to(TINY)  # beside the file: read from there
    monkeypatch.chdir(tmp_path)
    assert load_batch(path).jobs[0].options.model == str(tmp_path / "cfg" / "examples" / "tiny")
    shutil.rmtree(tmp_path / "cfg" / "examples")
    # On Ray the driver's folders say nothing of what the nodes resolve: the nodes decide.
    assert load_batch(path, executor="ray").jobs[0].options.model == "examples/tiny"
    # The command line's executor wins over the file's, for this check too.
    write(path, "executor: ray\n" + path.read_text())
    assert load_batch(path).jobs[0].options.model == "examples/tiny"
    with pytest.raises(BuilderError, match="reads as a hub id, but the current folder has a folder of that name"):
        load_batch(path, executor="local")


def test_verify_without_its_packages_is_refused_before_any_build(tmp_path, monkeypatch):
    """In the quickstart's venv (no torch) `batch configs/tiny.yaml` passed its up-front check and
    --dry-run, and its verify job then failed; a single build refuses that up front."""
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else find_spec(name, *a))
    path = write(
        tmp_path / "v.yaml", f"defaults:\n  verify: true\njobs:\n  - model: {TINY}\n  - model: {TINY}\n    ep: webgpu\n"
    )
    with pytest.raises(BuilderError) as refused:
        load_batch(path)
    assert str(refused.value).startswith(f"{path}:2: jobs[0]: --verify needs torch, which a plain install")
    assert "(verify: at defaults)" in str(refused.value), refused.value
    # On Ray the nodes run verify, and check their own packages: the driver needs no torch.
    assert len(load_batch(path, executor="ray").jobs) == 2
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert len(load_batch(path).jobs) == 2


def test_a_family_key_builds_with_that_class_and_a_wrong_one_is_refused_up_front(tmp_path, monkeypatch):
    """family: in a batch file reaches the build (the report names the class); one that does not
    import is refused with its file line before anything is built."""
    (tmp_path / "my_fam.py").write_text(
        "from architectures import Qwen3Builder\n\n\nclass Mine(Qwen3Builder):\n    pass\n"
    )
    monkeypatch.chdir(tmp_path)  # module:Class is imported from the folder the batch runs in
    good = write(tmp_path / "g.yaml", f"jobs:\n  - model: {TINY}\n    family: my_fam:Mine\n    output: out\n")
    (job,) = load_batch(good).jobs
    assert job.options.family == "my_fam:Mine"
    assert batch(str(good)) == 0
    assert json.loads((tmp_path / "out" / "build_report.json").read_text())["checkpoint"]["family"] == "my_fam.Mine"
    named = write(tmp_path / "n.yaml", f"jobs:\n  - {{model: {TINY}, family: 'my_fam:Mine', output: '{{family}}'}}\n")
    assert [Path(job.options.output).name for job in load_batch(named).jobs] == ["Mine"]  # not my_fam:Mine
    bad = write(tmp_path / "b.yaml", f"jobs:\n  - model: {TINY}\n    family: my_fam:Nobody\n")
    with pytest.raises(BuilderError, match=r"b\.yaml:2: jobs\[0\]: --family my_fam:Nobody: importing it failed"):
        load_batch(bad)


def test_each_jobs_family_resolves_as_its_own_process_does(tmp_path, monkeypatch, capsys):
    """The driver imported every job's module:Class, whose @register then stood for the other jobs
    too, while each job builds in a process that imports only its own: a job after it was checked
    with that family and built with the built-in (rebuilt on every run), and a name only it
    registered passed the check and failed the build."""
    import sys

    from architectures import registry
    from builder.batch_resume import rebuild_reason

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry.registered()))
    monkeypatch.setattr(registry, "_HISTORY", list(registry._HISTORY))
    (tmp_path / "order_fams.py").write_text(
        "from architectures import Qwen3Builder, register\n\n\n"
        "@register('Qwen3ForCausalLM', 'OrderTestForCausalLM')\nclass Theirs(Qwen3Builder):\n    pass\n"
    )
    monkeypatch.chdir(tmp_path)  # module:Class is imported from the folder the batch runs in
    jobs = f"jobs:\n  - {{model: {TINY}, family: 'order_fams:Theirs', output: a}}\n  - {{model: {TINY}, output: b}}\n"
    try:
        named = write(tmp_path / "n.yaml", jobs + f"  - {{model: {TINY}, family: OrderTestForCausalLM, output: c}}\n")
        with pytest.raises(BuilderError, match=r"n\.yaml:4: jobs\[2\]: --family: architecture 'OrderTestForCausalLM'"):
            load_batch(named)
        path = write(tmp_path / "o.yaml", jobs)
        assert batch(path) == 0
        assert "replaces the builder for Qwen3ForCausalLM" in capsys.readouterr().err
        reports = {n: json.loads((tmp_path / n / "build_report.json").read_text()) for n in "ab"}
        assert reports["a"]["checkpoint"]["family"] == "order_fams.Theirs"
        assert reports["b"]["checkpoint"]["family"] == "architectures.qwen3.Qwen3Builder"
        assert [rebuild_reason(job.options) for job in load_batch(path).jobs] == [None, None]
    finally:
        sys.modules.pop("order_fams", None)


def _nested_aliases(levels: int, value: str) -> str:
    lines = ["x-0: &x0 [" + ", ".join(["lol"] * 9) + "]"]
    lines += [f"x-{i}: &x{i} [" + ", ".join([f"*x{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines) + f"\njobs:\n  - {{model: {TINY}, output: a, int8-layers: {value}}}\n"


def test_yaml_aliases_that_expand_past_reason_are_refused_and_values_shown_cut(tmp_path, monkeypatch):
    """Nine nested aliases of nine items each expanded to 387 million values (killed after 60 s),
    and the type error quoted the value whole: a 34 MB line."""
    import time

    bomb = write(tmp_path / "bomb.yaml", _nested_aliases(9, "*x8"))
    started = time.monotonic()
    with pytest.raises(BuilderError) as refused:
        load_batch(bomb)
    assert time.monotonic() - started < 10
    assert "bomb.yaml:6: x-5: its YAML aliases expand to 597,871 values, more than a batch file may hold" in str(
        refused.value
    )
    small = write(tmp_path / "small.yaml", _nested_aliases(4, "*x3"))
    with pytest.raises(BuilderError) as refused:
        load_batch(small)
    message = str(refused.value)
    assert "jobs[0].int8-layers: must be a pattern or a list of patterns, got [[[['lol', " in message
    assert len(message.splitlines()[0]) < 400 and "(47,565 characters)" in message, message
    # MAX_VALUES values is what a file may hold, one more is past it (here counted for a small file).
    from builder import batch_yaml

    small = write(tmp_path / "small.yaml", f"x-a: &a [1, 2]\nx-b: [*a, *a]\njobs:\n  - {{model: {TINY}}}\n")
    monkeypatch.setattr(batch_yaml, "MAX_VALUES", 18)  # the file, 3 keys, [1, 2] as 3, x-b as 1 + 3 + 3, jobs: as 4
    assert len(load_batch(small).jobs) == 1
    monkeypatch.setattr(batch_yaml, "MAX_VALUES", 17)
    with pytest.raises(BuilderError, match="small.yaml:1: its YAML aliases expand to 18 values, more than a batch"):
        load_batch(small)
    looped = write(tmp_path / "loop.yaml", f"x-r: &r [1, *r]\njobs:\n  - {{model: {TINY}}}\n")
    with pytest.raises(BuilderError, match=r"loop\.yaml:1: a YAML alias inside the value its anchor marks"):
        load_batch(looped)


def test_an_output_template_names_resolved_values_and_refuses_unset_ones(tmp_path):
    """{family} and {accuracy_level} left unset expanded to the literal 'None' (tq-None-None), so
    the folder named nothing, and jobs that differed there shared it."""
    path = write(
        tmp_path / "t.yaml",
        f"""
        matrix:
          model: [{TINY}]
          ep: [cpu, cuda]
          precision: int4
          output: "{{model_name}}-{{family}}-{{accuracy_level}}-{{target_ort}}-{{context_length}}"
        """,
    )
    names = [Path(job.options.output).name for job in load_batch(path).jobs]
    context = json.loads((TINY / "config.json").read_text())["max_position_embeddings"]
    from builder import BuildOptions
    from builder.kit.targets import Target

    ort = {ep: Target.from_options(BuildOptions(model="-", ep=ep)).version_text for ep in ("cpu", "cuda")}
    assert names == [
        f"tiny-qwen3-Qwen3ForCausalLM-4-{ort['cpu']}-{context}",
        f"tiny-qwen3-Qwen3ForCausalLM-0-{ort['cuda']}-{context}",
    ]
    unset = write(
        tmp_path / "u.yaml",
        f"jobs:\n  - {{model: {TINY}, format: transformers.js, output: '{{model_name}}-{{max_length}}'}}\n",
    )
    with pytest.raises(BuilderError) as refused:
        load_batch(unset)
    assert "u.yaml:2: jobs[0].output: template '{model_name}-{max_length}' uses {max_length}, which a --format " in str(
        refused.value
    )
    assert "transformers.js build does not use (it goes into genai_config.json); use other fields: model_name, " in str(
        refused.value
    )


TEMPLATE_FIELDS = (
    "io_dtype",
    "residual_dtype",
    "graph_capture",
    "logits",
    "int32_inputs",
    "padded_batches",
    "qkv_packing",
    "mlp_packing",
    "silu",
    "head_norm",
    "max_length",
    "intra_op_threads",
)


def test_template_fields_left_at_auto_read_as_the_build_resolves_them(tmp_path):
    """{io_dtype}, {graph_capture}, {logits}, {qkv_packing} and the other options at auto read 'auto' (an
    int4 webgpu job made tiny-qwen3-ioauto-gcauto-auto), where {accuracy_level} and {context_length} read
    as resolved: each now reads what its build records, in the option's own spelling. What only the
    checkpoint's config.json decides is refused for a hub id, whose config is read when it builds."""
    template = "-".join(f"{{{name}}}" for name in TEMPLATE_FIELDS)
    path = write(
        tmp_path / "t.yaml",
        f"output_root: out\nmatrix:\n  model: [{TINY}]\n  ep: [webgpu, cpu]\n  output: '{{ep}}/{template}'\n",
    )
    assert batch(path) == 0
    spelled = {"float16": "fp16", "float32": "fp32", True: "on", False: "off", None: "none", "kept_out": "on"}
    reports = sorted((tmp_path / "out").glob("*/*/build_report.json"))
    assert [built.parent.parent.name for built in reports] == ["cpu", "webgpu"]
    for built in reports:
        report = json.loads(built.read_text())
        target, layout = report["target"], report["layout"]
        genai = json.loads((built.parent / "genai_config.json").read_text())
        threads = genai["model"]["decoder"]["session_options"].get("intra_op_num_threads", -1)
        expected = [
            spelled[target["io_dtype"]],
            spelled[target["residual_dtype"]],
            spelled[target["graph_capture"]],
            target["logits"],
            spelled[target["int32_inputs"]],
            spelled[target["recurrent_padding"]],
            *(layout[k] for k in ("qkv_packing", "mlp_packing", "silu", "head_norm")),
            genai["search"]["max_length"],
            threads,
        ]
        assert built.parent.name == "-".join(map(str, expected))
        assert "auto" not in built.parent.name
    hub = write(tmp_path / "h.yaml", "jobs:\n  - {model: org/absent, ep: webgpu, output: '{io_dtype}-{silu}'}\n")
    with pytest.raises(BuilderError) as refused:
        load_batch(hub)
    assert (
        "uses {silu}, which this job leaves to the build and the checkpoint's config.json decides, read "
        "only when it builds (org/absent is a hub id); set it, or use other fields: " in str(refused.value)
    )
    hub.write_text("jobs:\n  - {model: org/absent, ep: webgpu, output: '{io_dtype}-{logits}-{accuracy_level}'}\n")
    assert [Path(job.options.output).name for job in load_batch(hub).jobs] == ["fp16-last-4"]


def test_a_missing_model_folder_comes_with_the_files_other_problems(tmp_path):
    """A missing folder was reported only once the file's other problems were fixed: the next
    run found the next one."""
    path = write(
        tmp_path / "e.yaml", f"jobs:\n  - model: {tmp_path / 'nosuch'}\n  - model: {TINY}\n    precison: int4\n"
    )
    with pytest.raises(BuilderError) as refused:
        load_batch(path)
    assert "2 problems" in str(refused.value) and "no folder" in str(refused.value), refused.value
    assert "precison: unknown option" in str(refused.value)


def test_matrix_exclude_leaves_out_combinations_and_checks_what_it_names(tmp_path):
    """A matrix over families and targets could not leave out the combinations a family
    refuses: the whole file was refused, each error naming a bare matrix[i]."""
    path = write(
        tmp_path / "m.yaml",
        f"""
        matrix:
          model: [{TINY}, {TINY}-other]
          ep: [cpu, webgpu, cuda]
          exclude:
            - {{model: {TINY}-other}}
            - {{model: {TINY}, ep: cuda}}
        """,
    )
    jobs = load_batch(path).jobs
    assert [(j.label, j.options.ep) for j in jobs] == [("matrix[0]", "cpu"), ("matrix[1]", "webgpu")]
    bad = write(
        tmp_path / "bad.yaml",
        f"""
        matrix:
          model: [{TINY}]
          ep: [cpu, cuda]
          precision: fp32
          exclude:
            - {{ep: dml}}
            - {{precision: fp32}}
            - ep
        """,
    )
    with pytest.raises(BuilderError) as refused:
        load_batch(bad)
    text = str(refused.value)
    assert f"bad.yaml:1: matrix[1] (model {TINY}, ep cuda): -p fp32 -e cuda cannot work" in text  # named
    assert "bad.yaml:6: matrix.exclude: {ep: dml} matches no combination" in text
    assert "bad.yaml:7: matrix.exclude[1].precision: not a list in the matrix (its lists: model, ep)" in text
    assert "bad.yaml:8: matrix.exclude[2]: must be a mapping" in text
    everything = write(
        tmp_path / "none.yaml", f"matrix:\n  model: [{TINY}]\n  ep: [cpu]\n  exclude:\n    - {{ep: cpu}}\n"
    )
    with pytest.raises(BuilderError, match="none.yaml:1: matrix: its exclude: leaves out every combination"):
        load_batch(everything)  # it said 'no jobs: add a jobs: list or a matrix:' beside the matrix


def test_what_the_models_family_refuses_is_refused_up_front(tmp_path, checkpoint):
    """--dry-run listed a Qwen3.5 cuda job as a build, which the real run then failed."""
    hybrid = checkpoint("qwen3_5")
    path = write(tmp_path / "m.yaml", f"matrix:\n  model: [{hybrid}]\n  ep: [cpu, cuda]\n")
    with pytest.raises(
        BuilderError,
        match=r"m\.yaml:1: matrix\[1\] \(model .*qwen3_5.*, ep cuda\): Qwen3_5ForConditionalGeneration builds",
    ):
        load_batch(path)
    assert batch(path, "--dry-run") == 2


def test_a_checkpoint_missing_a_tensor_is_refused_up_front(tmp_path, capsys):
    """--dry-run listed such a job as a build, and the real run failed it at its last layer, after
    the jobs before it had built."""
    from test_hardening import replace_tensor

    from support.synthetic import TINY_CONFIGS, make_checkpoint

    broken = make_checkpoint(tmp_path / "broken", TINY_CONFIGS["qwen3"])
    replace_tensor(broken, "model.layers.1.mlp.down_proj.weight", None)
    path = write(tmp_path / "m.yaml", f"jobs:\n  - model: {TINY}\n  - model: {broken}\n")
    with pytest.raises(
        BuilderError, match=r"m\.yaml:3: jobs\[1\]: tensor 'model.layers.1.mlp.down_proj.weight' is missing from"
    ):
        load_batch(path)
    assert batch(path, "--dry-run", "--output-root", tmp_path / "out") == 2
    assert "is missing from the checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_matrix_expands_to_jobs(tmp_path):
    other = tmp_path / "ckpt"
    other.mkdir()
    path = write(
        tmp_path / "m.yaml",
        """
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
    """,
    )
    jobs = load_batch(path).jobs
    assert [j.name for j in jobs] == [
        f"{m}/{p}-{e}-b64" for m in ("ckpt", "Qwen3-4B") for p in ("int4", "fp16") for e in ("cpu", "webgpu")
    ] + ["ckpt-int8-cpu"]
    assert [j.label for j in jobs] == [f"matrix[{i}]" for i in range(8)] + ["jobs[0]"]
    assert jobs[0].options.model == str(other)  # relative to the YAML file
    assert jobs[4].options.model == "Qwen/Qwen3-4B"  # a hub id stays one
    assert jobs[7].options.output == "/somewhere/Qwen3-4B/fp16-webgpu-b64"
    assert all(j.options.block_size == 64 and j.options.overwrite for j in jobs)
    # every job but the last of each checkpoint leaves it in the page cache for the next one
    assert [j.options.page_cache for j in jobs] == [True] * 7 + [False, False]
    path.write_text(path.read_text().replace("{block_size}", "{blocksize}"))
    with pytest.raises(BuilderError, match=r"m\.yaml:8: matrix\.output: template .* bad field \('blocksize'\)") as bad:
        load_batch(path)
    fields = str(bad.value).split("; fields: ")[1].split(", ")
    assert "block_size" in fields and "int8_layers" not in fields  # a list field is refused by name


def test_family_config_expands_to_eighteen_jobs(tmp_path, capsys):
    assert batch(CONFIGS / "qwen3-family-int4.yaml", "--dry-run", "--output-root", tmp_path) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 18 and all(" build " in line for line in lines)
    for size in ("0.6B", "1.7B", "4B", "8B", "14B", "32B"):
        for ep in ("webgpu", "cpu", "cuda"):
            assert any(f"Qwen3-{size}-int4-{ep}  (Qwen/Qwen3-{size}, int4, {ep}; new" in x for x in lines)
    assert list(tmp_path.iterdir()) == []


def test_two_jobs_run_in_parallel(tmp_path, capsys):
    path = write(
        tmp_path / "par.yaml",
        f"""
        output_root: out
        matrix:
          model: [{TINY}]
          ep: [cpu, webgpu]
    """,
    )
    assert batch(path, "--jobs", "2") == 0
    lines = capsys.readouterr().out.splitlines()
    events = [line.split()[1] for line in lines if line.startswith("[")]
    assert events[:2] == ["start", "start"] and events[2:4] == ["built", "built"]
    s = summary(tmp_path / "out", "par")
    assert s["counts"]["built"] == 2
    assert not [j for j in s["jobs"] if "error" in j]  # a built job's row and summary carry no error
    assert all((tmp_path / "out" / j["name"] / "model.onnx").is_file() for j in s["jobs"])


def test_rerun_keeps_the_verify_result_its_build_recorded(tiny):
    root, _ = tiny
    assert batch(CONFIGS / "tiny.yaml", "--output-root", root) == 0
    job = summary(root, "tiny")["by_name"]["tiny-qwen3-fp32-cpu"]
    assert job["status"] == "skipped"
    report = json.loads((root / "tiny-qwen3-fp32-cpu" / "build_report.json").read_text())
    assert job["verify"]["status"] == "passed" and job["verify"]["max_abs"] == report["verify"]["max_abs"]
    assert job["verify"]["from"].endswith("tiny-qwen3-fp32-cpu/build_report.json (earlier build)")
    assert job["peak_rss_bytes"] == report["peak_rss_bytes"]
    assert "passed (earlier build)" in (root / "tiny-summary.md").read_text()


def test_verify_asked_for_an_unverified_build_rebuilds_it(tmp_path):
    path = write(
        tmp_path / "v.yaml",
        f"""
        output_root: out
        jobs:
          - model: {TINY}
            precision: fp32
            output: a
    """,
    )
    assert batch(path) == 0
    path.write_text(path.read_text() + "    verify: true\n")
    assert batch(path) == 0
    job = summary(tmp_path / "out", "v")["by_name"]["a"]
    assert job["status"] == "built" and job["reason"].startswith("verify asked for")
    assert job["verify"]["status"] == "passed" and "from" not in job["verify"]


def test_verify_asked_for_where_it_would_not_run_keeps_the_build(tmp_path):
    """verify: true added to a webgpu job rebuilt it, and the rebuild recorded only "not run: the graph
    targets webgpu": nothing gained. The job is skipped, with the result a rebuild would record; on cpu,
    where verify runs, the job is still rebuilt (test_verify_asked_for_an_unverified_build_rebuilds_it)."""
    job = f"output_root: out\njobs:\n  - {{model: {TINY}, ep: webgpu, output: a"
    path = write(tmp_path / "w.yaml", job + "}\n")
    assert batch(path) == 0
    before = report_times(tmp_path / "out")
    write(path, job + ", verify: true}\n")
    assert batch(path) == 0
    skipped = summary(tmp_path / "out", "w")["by_name"]["a"]
    assert skipped["status"] == "skipped" and report_times(tmp_path / "out") == before
    assert skipped["verify"]["status"] == "not run" and "targets webgpu" in skipped["verify"]["reason"]


# ---- up to date means the files are there, as their report recorded them ----------------


def test_damaged_output_is_rebuilt_with_the_reason(tmp_path, capsys):
    from builder.batch_resume import rebuild_reason

    path = write(tmp_path / "d.yaml", ONE_JOB)
    assert batch(path) == 0
    out = tmp_path / "out" / "a"
    options = load_batch(path).jobs[0].options
    assert rebuild_reason(options) is None
    data = (out / "model.onnx.data").read_bytes()
    damages = {
        "truncated": (lambda: (out / "model.onnx.data").write_bytes(data[:100]), "model.onnx.data has 100 bytes"),
        "grown": (
            lambda: (out / "model.onnx.data").write_bytes(data + bytes(64)),
            f"model.onnx.data has {len(data) + 64} bytes, build_report.json records {len(data)}",
        ),
        "config cut short": (lambda: (out / "genai_config.json").write_text('{"model": '), "genai_config.json is"),
        "config of nothing": (
            lambda: (out / "genai_config.json").write_text('{"x": 1}'),
            "genai_config.json is not a genai config",
        ),
        "config without its decoder": (
            lambda: (out / "genai_config.json").write_text('{"model": {"type": "qwen3"}}'),
            "genai_config.json has no model.decoder",
        ),
        "tokenizer gone": (lambda: (out / "tokenizer.json").unlink(), "tokenizer.json is missing"),
        # were "up to date", and genai failed to load the tokenizer
        "tokenizer emptied": (lambda: (out / "tokenizer.json").write_bytes(b""), "tokenizer.json is empty"),
        "tokenizer cut short": (
            lambda: (out / "tokenizer.json").write_bytes(kept["tokenizer.json"][:5000]),
            "tokenizer.json is unreadable or cut short",
        ),
        "model gone": (lambda: (out / "model.onnx").unlink(), "model.onnx is missing"),
        # same size, other bytes: was up to date (only sizes were compared)
        "data rewritten in place": (
            lambda: (out / "model.onnx.data").write_bytes(bytes(len(data))),
            "model.onnx.data was written after its build",
        ),
    }
    kept = {f: (out / f).read_bytes() for f in ("model.onnx", "genai_config.json", "tokenizer.json")}
    times = {f: (out / f).stat().st_mtime_ns for f in ("model.onnx.data", *kept)}
    for damage, (apply, reason) in damages.items():
        apply()
        assert (rebuild_reason(options) or "").startswith(reason), damage
        for name, content in {"model.onnx.data": data, **kept}.items():
            (out / name).write_bytes(content)
            os.utime(out / name, ns=(times[name], times[name]))  # as a copy that keeps times (cp -p)
        assert rebuild_reason(options) is None, damage
    edited = json.loads(kept["genai_config.json"])
    edited["search"]["max_length"] = 64  # a hand edit the runtime reads: kept, not rebuilt over
    (out / "genai_config.json").write_text(json.dumps(edited))
    assert rebuild_reason(options) is None
    (out / "genai_config.json").write_bytes(kept["genai_config.json"])
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    tokenizer_config["chat_template"] = "{{ messages }}"  # likewise
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    assert rebuild_reason(options) is None

    (out / "model.onnx.data").unlink()
    capsys.readouterr()
    assert batch(path) == 0  # the builder's own folder: replaced, not refused
    assert "[1/1] start   a: int4 cpu (model.onnx.data is missing)" in capsys.readouterr().out
    job = summary(tmp_path / "out", "d")["by_name"]["a"]
    assert job["status"] == "built" and job["reason"] == "model.onnx.data is missing"
    assert (out / "model.onnx.data").read_bytes() == data
    assert leftovers(tmp_path / "out") == []


def test_a_transformers_js_folder_missing_the_generation_config_it_made_is_rebuilt(tmp_path, capsys):
    """A checkpoint without generation_config.json: the transformers.js folder gets one made from
    config.json's token ids, which transformers.js takes eos from. Deleted or cut short, the folder was
    "up to date" (only the copied tokenizer files and config.json were checked), a fresh build writes it."""
    _copy_checkpoint(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "generation_config.json").unlink()
    path = write(tmp_path / "f.yaml", FINGERPRINT_JOB.format(hash="false") + "        format: transformers.js\n")
    assert batch(path) == 0
    made = tmp_path / "out" / "a" / "generation_config.json"
    written = made.read_bytes()
    assert (
        json.loads(written)["eos_token_id"]
        == json.loads((tmp_path / "ckpt" / "config.json").read_text())["eos_token_id"]
    )
    for damage, reason in (
        (made.unlink, "generation_config.json is missing"),
        (lambda: made.write_bytes(written[:10]), "generation_config.json is unreadable"),
    ):
        damage()
        capsys.readouterr()
        assert batch(path) == 0
        job = summary(tmp_path / "out", "f")["by_name"]["a"]
        assert job["status"] == "built" and job["reason"].startswith(reason)
        assert made.read_bytes() == written
    assert batch(path) == 0
    assert summary(tmp_path / "out", "f")["by_name"]["a"]["status"] == "skipped"


def test_a_hand_edited_report_that_still_parses_is_rebuilt_not_a_traceback(tmp_path, capsys):
    """A build_report.json edited into other valid JSON ended the batch with a traceback: a list
    has no .get, and a skipped job's summary line read nodes.total and the like without looking."""
    path = write(tmp_path / "d.yaml", ONE_JOB)
    assert batch(path) == 0
    report_path = tmp_path / "out" / "a" / "build_report.json"
    kept = json.loads(report_path.read_text())
    edits = [
        ("is not a JSON object", lambda r: []),
        ("has no number at nodes.total", lambda r: {k: v for k, v in r.items() if k != "nodes"}),
        ("has no number at timings.total_s", lambda r: {**r, "timings": {}}),
        # true is an int to Python's isinstance, and no node count
        ("has no number at nodes.total", lambda r: {**r, "nodes": {**r["nodes"], "total": True}}),
        ("has no number at sizes.total_bytes", lambda r: {**r, "sizes": None}),
        ("has a 'options' that is not an object", lambda r: {**r, "options": "int4"}),
        ("names its model files otherwise", lambda r: {**r, "files": {**r["files"], "data": 3}}),
        ("names its tokenizer files otherwise", lambda r: {**r, "tokenizer_files": 5}),
    ]
    for reason, edit in edits:
        report_path.write_text(json.dumps(edit(kept)))
        capsys.readouterr()
        assert batch(path) == 0, reason
        assert f"(build_report.json {reason}" in capsys.readouterr().out, reason
        assert json.loads(report_path.read_text())["nodes"]["total"] == kept["nodes"]["total"], reason


def test_a_skipped_job_sweeps_the_staging_folder_a_killed_build_left(tmp_path, capsys):
    """A build killed with SIGKILL leaves its staging folder (the model's size); only the next
    build of that output removed it, and a rerun that finds the output up to date builds none."""
    import subprocess
    import sys

    path = write(tmp_path / "k.yaml", ONE_JOB)
    assert batch(path) == 0
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / "out" / f".builder-staging-a-{dead.stdout.strip()}-0123abcd"
    stale.mkdir()
    (stale / "model.onnx.data").write_bytes(b"\0" * 1000)
    assert batch(path) == 0
    assert "skipped a: up to date" in capsys.readouterr().out and not stale.exists()


def test_a_build_s_warnings_name_their_job_and_are_in_the_summary(tmp_path, capsys):
    """They were printed by the build's process onto the batch's status line, named no job, and
    were in neither summary file."""
    path = write(
        tmp_path / "w.yaml",
        f"output_root: out\njobs:\n  - {{model: {TINY}, precision: fp32, block-size: 64, output: f}}\n",
    )
    assert batch(path) == 0
    warning = "-p fp32 stores float weights: --block-size 64 had no effect on this build"
    assert f"warning: f: {warning}" in capsys.readouterr().err
    assert summary(tmp_path / "out", "w")["by_name"]["f"]["warnings"] == [warning]
    assert f"- f: {warning}" in (tmp_path / "out" / "w-summary.md").read_text()


def test_a_failed_rebuild_says_the_output_is_an_earlier_build(tmp_path):
    """The row said only that the job failed, over a folder that still held the build before it."""
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(TINY, ckpt)
    path = write(tmp_path / "r.yaml", f"output_root: out\njobs:\n  - {{model: {ckpt}, output: a}}\n")
    assert batch(path) == 0
    (ckpt / "model.safetensors").write_bytes((ckpt / "model.safetensors").read_bytes()[:1000])  # cut short
    assert batch(path, "--force") == 1
    job = summary(tmp_path / "out", "r")["by_name"]["a"]
    assert job["status"] == "failed"
    assert job["error"].endswith(f"; {tmp_path / 'out' / 'a'} still holds an earlier build, not this job's")


def test_a_summary_name_ending_in_json_in_capitals_is_a_file(tmp_path):
    """--summary S/Report.JSON made a folder of that name."""
    path = write(tmp_path / "k.yaml", ONE_JOB)
    assert batch(path, "--summary", str(tmp_path / "S" / "Report.JSON")) == 0
    assert (tmp_path / "S" / "Report.JSON").is_file() and (tmp_path / "S" / "Report.md").is_file()


def test_another_family_for_the_architecture_rebuilds(tmp_path, monkeypatch):
    """A plugin replacing the built-in family (or removed again) left outputs 'up to date' that
    the family now registered would build otherwise."""
    from architectures import Qwen3Builder, registry
    from builder.batch_resume import rebuild_reason

    path = write(tmp_path / "f.yaml", ONE_JOB)
    assert batch(path) == 0
    options = load_batch(path).jobs[0].options
    report = json.loads((tmp_path / "out" / "a" / "build_report.json").read_text())
    assert report["checkpoint"]["family"] == "architectures.qwen3.Qwen3Builder"
    assert rebuild_reason(options) is None

    class PluginQwen3(Qwen3Builder):
        pass

    monkeypatch.setattr(registry, "_REGISTRY", {**registry.registered(), "Qwen3ForCausalLM": PluginQwen3})
    assert rebuild_reason(options) == (
        "builder family architectures.qwen3.Qwen3Builder -> "
        "test_batch.test_another_family_for_the_architecture_rebuilds.<locals>.PluginQwen3"
    )


def test_the_family_config_json_names_spelled_out_is_no_change(tmp_path, monkeypatch, capsys):
    """family: Qwen3ForCausalLM (or architectures.qwen3:Qwen3Builder) added to a job whose config.json
    names that family rebuilt it, "options changed: family", into the same bytes: the family was compared
    as spelled, not as the class that builds. Another class, or a report that does not record its class,
    still rebuilds."""
    import sys

    path = write(tmp_path / "f.yaml", ONE_JOB)
    assert batch(path) == 0

    def dry_run(family: str) -> str:
        write(path, ONE_JOB + f"    family: {family}\n")
        capsys.readouterr()
        assert batch(path, "--dry-run") == 0
        return capsys.readouterr().out

    assert "up to date" in dry_run("Qwen3ForCausalLM")
    assert "up to date" in dry_run("'architectures.qwen3:Qwen3Builder'")
    (tmp_path / "same_fam.py").write_text(
        "from architectures import Qwen3Builder\n\n\nclass Mine(Qwen3Builder):\n    pass\n"
    )
    monkeypatch.chdir(tmp_path)  # module:Class is imported from the folder the batch runs in
    try:
        assert "builder family architectures.qwen3.Qwen3Builder -> same_fam.Mine" in dry_run("same_fam:Mine")
    finally:
        sys.modules.pop("same_fam", None)
    report_path = tmp_path / "out" / "a" / "build_report.json"
    report = json.loads(report_path.read_text())
    del report["checkpoint"]["family"]  # as a report from before the class was recorded
    report_path.write_text(json.dumps(report))
    assert "options changed: family" in dry_run("Qwen3ForCausalLM")


def test_layer_patterns_are_compared_by_what_they_select(tmp_path, capsys):
    """int8-layers: ["*.v_proj", lm_head] reordered, or "*.v_proj" written out in full, rebuilt the job
    ("options changed: int8-layers") into the same bytes: the patterns were compared as written. A list
    that selects another format for any projection still rebuilds, and says which."""
    path = write(tmp_path / "l.yaml", ONE_JOB + '    int8-layers: ["*.v_proj", lm_head]\n')
    assert batch(path) == 0

    def dry_run(layers: str) -> str:
        write(path, ONE_JOB + layers)
        capsys.readouterr()
        assert batch(path, "--dry-run") == 0
        return capsys.readouterr().out

    assert "up to date" in dry_run('    int8-layers: [lm_head, "*.v_proj"]\n')
    assert "up to date" in dry_run('    int8-layers: [lm_head, "model.layers.*.self_attn.v_proj"]\n')
    assert "options changed: int8-layers/float-layers: lm_head int8 -> int4)" in dry_run(
        '    int8-layers: ["*.v_proj"]\n'
    )
    moved = dry_run('    int8-layers: ["*.v_proj"]\n    float-layers: [lm_head]\n')
    assert "options changed: int8-layers/float-layers: lm_head int8 -> float)" in moved
    assert "options changed: int8-layers/float-layers: model.layers.0.self_attn.v_proj int8 -> int4 and " in dry_run(
        "    int8-layers: [lm_head]\n"
    )


# ---- the fingerprint sees content -------------------------------------------------------


def _copy_checkpoint(folder: Path) -> Path:
    import shutil

    shutil.copytree(TINY, folder)
    return folder / "model.safetensors"


def _resave_in_place(weights: Path, keep_mtime: bool) -> None:
    """A fine-tune saved over the old one: same names, shapes and size, other bytes."""
    st = weights.stat()
    data = bytearray(weights.read_bytes())
    for i in range(len(data) - 4096, len(data), 2):  # low mantissa bits of the last tensor's values
        data[i] ^= 1
    with open(weights, "r+b") as f:  # in place: same inode
        f.write(data)
    if keep_mtime:
        os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))


FINGERPRINT_JOB = """
    output_root: out
    jobs:
      - model: ckpt
        output: a
        checkpoint-hash: {hash}
"""


def assert_rebuilt(path: Path, tmp_path: Path) -> None:
    """A run of FINGERPRINT_JOB's file rebuilds its job, for the checkpoint's change."""
    assert batch(path) == 0
    job = summary(tmp_path / "out", "f")["by_name"]["a"]
    assert job["status"] == "built" and job["reason"] == "checkpoint changed"


def test_resaved_weights_with_same_names_and_shapes_are_rebuilt(tmp_path, capsys):
    weights = _copy_checkpoint(tmp_path / "ckpt")
    path = write(tmp_path / "f.yaml", FINGERPRINT_JOB.format(hash="false"))
    assert batch(path) == 0
    _resave_in_place(weights, keep_mtime=False)
    assert_rebuilt(path, tmp_path)

    # Another copy of the same bytes (new inode and mtime) is a change for the stat identity.
    data = weights.read_bytes()
    weights.unlink()
    weights.write_bytes(data)
    capsys.readouterr()
    assert batch(path, "--dry-run") == 0
    assert "build a  (" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["generation_config.json", "tokenizer_config.json"])
def test_a_changed_generation_config_or_tokenizer_file_is_rebuilt(tmp_path, name):
    """The output copies them and genai_config.json takes its search defaults and eos ids from
    generation_config.json: a run that skipped kept the old ones."""
    _copy_checkpoint(tmp_path / "ckpt")
    path = write(tmp_path / "f.yaml", FINGERPRINT_JOB.format(hash="false"))
    assert batch(path) == 0
    edited = tmp_path / "ckpt" / name
    edited.write_text(edited.read_text().replace('"temperature": 0.6', '"temperature": 0.1') + "\n")
    assert_rebuilt(path, tmp_path)
    assert (tmp_path / "out" / "a" / name).read_bytes() == edited.read_bytes()
    if name == "generation_config.json":
        search = json.loads((tmp_path / "out" / "a" / "genai_config.json").read_text())["search"]
        assert search["temperature"] == 0.1


def test_content_hash_sees_what_size_mtime_and_inode_cannot(tmp_path, capsys):
    weights = _copy_checkpoint(tmp_path / "ckpt")
    path = write(tmp_path / "f.yaml", FINGERPRINT_JOB.format(hash="false"))
    assert batch(path) == 0
    _resave_in_place(weights, keep_mtime=True)  # size, mtime_ns and inode all as before
    capsys.readouterr()
    assert batch(path, "--dry-run") == 0
    assert "skip  a" in capsys.readouterr().out  # the stat identity's known blind spot

    write(path, FINGERPRINT_JOB.format(hash="true"))
    assert batch(path) == 0
    first = summary(tmp_path / "out", "f")["by_name"]["a"]
    assert first["status"] == "built" and first["reason"] == "options changed: checkpoint-hash"
    data = weights.read_bytes()
    weights.unlink()
    weights.write_bytes(data)  # same bytes, new inode and mtime: the content hash is unchanged
    assert batch(path) == 0
    assert summary(tmp_path / "out", "f")["by_name"]["a"]["status"] == "skipped"
    _resave_in_place(weights, keep_mtime=True)
    assert_rebuilt(path, tmp_path)


def test_linked_weights_and_weights_replaced_with_size_and_mtime_kept_are_rebuilt(tmp_path, capsys):
    """Only the Hugging Face cache's blobs/<hash> links name their bytes: weights linked from a folder
    of one's own and re-saved there are a change; and so is a file another of the same size replaced
    keeping its mtime (rsync -t renames a new file over the old), which only the inode tells."""
    weights = _copy_checkpoint(tmp_path / "ckpt")
    stored = tmp_path / "store" / "model.safetensors"
    stored.parent.mkdir()
    weights.rename(stored)
    weights.symlink_to(stored)
    path = write(tmp_path / "f.yaml", FINGERPRINT_JOB.format(hash="false"))
    assert batch(path) == 0
    _resave_in_place(stored, keep_mtime=False)
    assert_rebuilt(path, tmp_path)

    st = stored.stat()
    new = stored.with_name("new.safetensors")
    shutil.copyfile(stored, new)
    _resave_in_place(new, keep_mtime=False)
    os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(new, stored)
    assert stored.stat().st_size == st.st_size and stored.stat().st_mtime_ns == st.st_mtime_ns
    capsys.readouterr()
    assert batch(path, "--dry-run") == 0
    assert "build a  (" in capsys.readouterr().out


def test_hub_cache_files_are_identified_by_their_blob_hash(tmp_path):
    """The cache stores each file as blobs/<hash> and links it from snapshots/<revision>/."""
    from builder.kit.checkpoint import Checkpoint

    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshots" / "rev1"
    blobs.mkdir()
    snapshot.mkdir(parents=True)
    for f in TINY.iterdir():
        blob = blobs / (f.name.replace(".", "") + "0" * 24)
        blob.write_bytes(f.read_bytes())
        (snapshot / f.name).symlink_to(blob)
    before = Checkpoint(snapshot).fingerprint()
    weights_blob = (snapshot / "model.safetensors").resolve()
    os.utime(weights_blob, ns=(1, 1))  # a touched blob is the same blob
    assert Checkpoint(snapshot).fingerprint() == before == Checkpoint(snapshot).fingerprint(content=True)
    new_blob = blobs / ("f" * 64)
    new_blob.write_bytes(weights_blob.read_bytes())
    (snapshot / "model.safetensors").unlink()
    (snapshot / "model.safetensors").symlink_to(new_blob)  # a new revision of the weights
    assert Checkpoint(snapshot).fingerprint() != before


# ---- batch files in other encodings -----------------------------------------------------

TINY_YAML = "output_root: out\njobs:\n  - model: {m}  # modèle\n    output: a\n"


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-8-sig", "utf-32"])
def test_utf16_and_bom_files_are_read(encoding, tmp_path, capsys):
    path = tmp_path / "ps.yaml"
    text = TINY_YAML.format(m=TINY)
    path.write_bytes(text.encode(encoding) if encoding != "utf-16-le" else text.encode("utf-16-le"))
    assert batch(path, "--dry-run") == 0
    assert "[1/1] build a" in capsys.readouterr().out


def test_non_utf8_file_is_one_line_naming_it(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "latin.yaml"
    path.write_bytes(TINY_YAML.format(m=TINY).encode("latin-1"))
    run = subprocess.run([sys.executable, "-m", "builder", "batch", str(path)], capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 2 and run.stderr.endswith("\nnothing was built\n"), run.stderr
    assert "Traceback" not in run.stderr
    assert f"{path}:3: not UTF-8 text (byte 0xe8 at offset" in run.stderr  # the line, for an editor
    assert "save it as UTF-8" in run.stderr
    assert not (tmp_path / "out").exists()


def test_an_output_root_with_bytes_that_are_no_utf8_gets_its_summary(tmp_path):
    """Linux names may hold any bytes: the builds ran, and writing the Markdown summary, which names
    the output root, ended the batch in a UnicodeEncodeError traceback with its temporary files left."""
    import subprocess
    import sys

    root = Path(os.fsdecode(bytes(tmp_path) + b"/out\xff"))
    path = write(tmp_path / "b.yaml", f"jobs:\n  - model: {TINY}\n    output: a\n")
    command = [sys.executable, "-m", "builder", "batch", str(path), "--output-root", str(root)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for expected in ("1 built", "1 skipped"):  # the rerun reads the summary back as its own
        run = subprocess.run(command, capture_output=True, text=True, errors="surrogateescape", env=env, timeout=300)
        assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
        assert expected in run.stdout, run.stdout
    assert sorted(p.name for p in root.iterdir()) == ["a", "b-summary.json", "b-summary.md"]
    assert summary(root, "b")["by_name"]["a"]["status"] == "skipped"


# ---- --summary is checked before anything is built ---------------------------------------

ONE_JOB = f"output_root: out\njobs:\n  - model: {TINY}\n    output: a\n"


@pytest.mark.parametrize(
    "name,content",
    [
        ("notes.txt", '{"mine": 1}'),
        ("other.json", '{"mine": 1}'),
        ("folder-file", '{"mine": 1}'),
        # A JSON of the user's own with a "jobs" key (a CI matrix, say) is no summary either: a summary
        # has builder_version and counts beside its jobs.
        ("ci.json", '{"jobs": [], "mine": 1}'),
    ],
)
def test_summary_over_a_foreign_file_is_refused_before_building(name, content, tmp_path, capsys):
    path = write(tmp_path / "s.yaml", ONE_JOB)
    target = tmp_path / name
    target.write_text(content)
    assert batch(path, "--summary", target) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --summary") and str(target) in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
    assert target.read_text() == content


def test_a_foreign_md_where_the_summary_md_goes_is_refused_before_building(tmp_path, capsys):
    """--summary run.json writes run.md beside it: a run.md of the user's own is refused as a
    foreign run.json is, not overwritten (the .md must start as a summary does)."""
    path = write(tmp_path / "s.yaml", ONE_JOB)
    notes = tmp_path / "run.md"
    notes.write_text("# Notes on this run\n")
    assert batch(path, "--summary", tmp_path / "run.json") == 2
    assert f"--summary: {notes} exists and is not a batch summary" in _one_line_error(capsys)
    assert notes.read_text() == "# Notes on this run\n" and not (tmp_path / "out").exists()


def test_summary_md_or_json_name_and_replacing_an_earlier_one(tmp_path):
    path = write(tmp_path / "s.yaml", ONE_JOB)
    assert batch(path, "--summary", tmp_path / "sums" / "run.json") == 0
    first = json.loads((tmp_path / "sums" / "run.json").read_text())
    assert first["counts"]["built"] == 1
    assert (tmp_path / "sums" / "run.md").read_text().startswith("# Batch s.yaml")
    assert batch(path, "--summary", tmp_path / "sums" / "run.json") == 0  # an earlier summary: replaced
    assert json.loads((tmp_path / "sums" / "run.json").read_text())["counts"]["skipped"] == 1


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "nothing was built" in err, err
    return err


def test_a_summary_folder_that_cannot_be_made_is_refused_before_building(tmp_path, capsys):
    """os.access says yes to root on /proc; making the folder says no."""
    path = write(tmp_path / "s.yaml", ONE_JOB)
    assert batch(path, "--output-root", "/proc/no-such-folder") == 2
    err = _one_line_error(capsys)
    assert err.startswith("error: --output-root /proc/no-such-folder: cannot write the summary there (")
    assert "pass --output-root or --summary with a writable folder" in err

    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    assert batch(path, "--summary", a_file / "sums") == 2
    assert f"--summary {a_file / 'sums'}: cannot write the summary there ({a_file} is a file" in _one_line_error(capsys)
    assert sorted(tmp_path.iterdir()) == [a_file, path]


def test_output_root_key_naming_a_file_is_named_in_the_error(tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    path = write(tmp_path / "f.yaml", ONE_JOB.replace("output_root: out", "output_root: a-file/sub"))
    assert batch(path) == 2
    err = _one_line_error(capsys)
    assert err.startswith(f"error: {path}:1: output_root: {a_file / 'sub'}: cannot write the summary there")
    assert f"({a_file} is a file, not a folder); set output_root: to a writable folder" in err
    # with the summary elsewhere, the outputs still have nowhere to go
    assert batch(path, "--summary", tmp_path / "sums") == 2
    err = _one_line_error(capsys)
    assert err.startswith(f"error: {path}:1: output_root: {a_file / 'sub'}: cannot write the outputs there")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "f.yaml"]  # the tried folders went again
    assert a_file.read_text() == "mine"
    empty = write(tmp_path / "e.yaml", ONE_JOB.replace("output_root: out", "output_root: ''"))
    with pytest.raises(BuilderError, match=r"e\.yaml:1: output_root: must be a folder path"):
        load_batch(empty)


def test_an_unwritable_output_root_is_refused_when_only_some_outputs_are_in_it(tmp_path, capsys):
    """A job whose output is elsewhere must not spare the root the check: the job inside it would
    fail at its turn, after the others had built."""
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    elsewhere = tmp_path / "elsewhere"
    text = (
        ONE_JOB.replace("output_root: out", "output_root: a-file/sub") + f"  - model: {TINY}\n    output: {elsewhere}\n"
    )
    path = write(tmp_path / "f.yaml", text)
    assert batch(path, "--summary", tmp_path / "sums") == 2
    err = _one_line_error(capsys)
    assert err.startswith(f"error: {path}:1: output_root: {a_file / 'sub'}: cannot write the outputs there"), err
    assert not elsewhere.exists() and a_file.read_text() == "mine"


def test_summary_that_reads_as_a_file_name_is_refused(tmp_path, capsys):
    path = write(tmp_path / "s.yaml", ONE_JOB)
    assert batch(path, "--summary", tmp_path / "s.md") == 2
    err = _one_line_error(capsys)
    assert "reads as a file name" in err and f"pass {tmp_path / 's.json'} or a folder" in err
    assert list(tmp_path.iterdir()) == [path]
    (tmp_path / "runs.v2").mkdir()  # an existing folder is a folder, whatever its name
    assert batch(path, "--summary", tmp_path / "runs.v2", "--dry-run") == 0


def test_two_batches_writing_one_summary_take_turns_whole(tmp_path):
    """Each writer's temporary file is its own: with one shared name, one batch renamed or
    deleted the other's half-written file and its summary went missing."""
    import subprocess
    import sys

    target = tmp_path / "s-summary.json"
    writer = (
        "import sys; from pathlib import Path; from builder.batch_summary import write_summary\n"
        "for i in range(300):\n"
        "    write_summary({Path(sys.argv[1]): sys.argv[2] * 20000})\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", writer, str(target), mark], cwd=ROOT, stderr=subprocess.PIPE, text=True)
        for mark in "ab"
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert target.read_text() in ("a" * 20000, "b" * 20000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s-summary.json"]


def test_summary_files_are_synced_before_they_replace_the_earlier_ones(tmp_path, monkeypatch):
    """Unsynced, a power loss after the rename could leave an empty summary, which the next batch
    takes for a foreign file and refuses to overwrite."""
    from builder import batch_summary

    events = []
    monkeypatch.setattr(batch_summary, "sync_file", lambda path: events.append(("sync", Path(path).name)))
    monkeypatch.setattr(batch_summary, "sync_folder_quietly", lambda path: events.append(("folder", Path(path))))
    replace = os.replace
    monkeypatch.setattr(
        batch_summary.os, "replace", lambda a, b: (events.append(("replace", Path(a).name)), replace(a, b))[1]
    )
    files = {tmp_path / "s-summary.json": "{}", tmp_path / "s-summary.md": "# Batch\n"}
    batch_summary.write_summary(files)
    for path in files:
        tmp = f".{path.name}.{os.getpid()}.tmp"
        assert events.index(("sync", tmp)) < events.index(("replace", tmp)), events
    assert events[-1] == ("folder", tmp_path), events
    assert [p.read_text() for p in files] == ["{}", "# Batch\n"]


def test_summary_that_cannot_be_written_at_the_end_is_one_line(tiny, tmp_path):
    """The disk fills up during the builds: one error line naming the file, no temporary
    file left, no earlier summary passing for this run's, and a non-zero exit."""
    import resource
    import signal
    import subprocess
    import sys

    root, _ = tiny
    sums = tmp_path / "sums"
    sums.mkdir()
    (sums / "tiny-summary.md").write_text("# Batch tiny.yaml\nan earlier run\n")

    def small_files():  # EFBIG past 2000 bytes, as a full disk gives ENOSPC
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))

    run = subprocess.run(
        [sys.executable, "-m", "builder", "batch", str(CONFIGS / "tiny.yaml"), "--output-root", str(root)]
        + ["--summary", str(sums)],
        capture_output=True,
        text=True,
        preexec_fn=small_files,
    )
    assert run.returncode == 1, run.stderr
    assert run.stderr.startswith(
        f"error: writing the batch summary {sums / 'tiny-summary.json'} failed (File too large)"
    )
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    assert "0 built, 3 skipped, 0 failed\n" in run.stdout and "tiny-qwen3-fp32-cpu" in run.stdout
    assert list(sums.iterdir()) == []


# ---- signals: running builds stop, nothing is published, the summary is written ---------


THREE_JOBS = f"output_root: out\ndefaults:\n  model: {TINY}\njobs:\n  - output: a\n  - output: b\n  - output: c\n"


def _start_paused_batch(tmp_path: Path, jobs: int, extra_env=None, **popen):
    """A batch of three jobs, --jobs 2, whose builds pause just before publishing."""
    import subprocess
    import sys
    import time

    pauses = tmp_path / "pauses"
    pauses.mkdir()
    path = write(tmp_path / "sig.yaml", THREE_JOBS)
    env = {
        **os.environ,
        "BUILDER_TEST_PAUSE_BEFORE_PUBLISH": "120",
        "BUILDER_TEST_PAUSE_DIR": str(pauses),
        **(extra_env or {}),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "builder", "batch", str(path), "--jobs", str(jobs)],
        env=env,
        **{"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **popen},
        start_new_session=True,
    )  # its own process group, like a shell job
    deadline = time.monotonic() + 120
    while len(list(pauses.glob("*.pid"))) < jobs:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "builds never reached the publish step"
        time.sleep(0.2)
    children = [int(p.read_text()) for p in pauses.glob("*.pid")]
    staging = [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".builder-staging")]
    assert len(staging) == jobs  # complete staging folders, about to be published
    return proc, children


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie is gone too
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True


def _assert_stopped_cleanly(tmp_path, children, code, expected, stderr):
    import time

    assert code == expected, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr
    assert all(_gone(pid) for pid in children)
    time.sleep(1)  # nothing may appear after the batch exited
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["sig-summary.json", "sig-summary.md"]
    s = summary(out, "sig")
    assert s["counts"] == {"built": 0, "skipped": 0, "failed": 0, "interrupted": 3}
    return s


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT", "SIGHUP"])
def test_signal_stops_running_builds_and_writes_the_summary(sig, tmp_path):
    import signal

    proc, children = _start_paused_batch(tmp_path, jobs=2)
    if sig in ("SIGINT", "SIGHUP"):
        # Ctrl-C in a terminal, or the shell passing on a closed terminal's hangup: the whole group
        os.killpg(proc.pid, getattr(signal, sig))
    else:
        proc.send_signal(signal.SIGTERM)  # kill PID: the batch alone
    stdout, stderr = proc.communicate(timeout=60)
    s = _assert_stopped_cleanly(tmp_path, children, proc.returncode, 128 + getattr(signal, sig), stderr)
    assert s["interrupted_by"] == sig
    by_name = s["by_name"]
    assert {by_name[n]["error"] for n in "ab"} == {"interrupted; its partial output was removed"}
    assert "stopping once the executor has started" not in stderr  # it had started long before
    assert not [n for n in "abc" if "stopped_by_signal" in by_name[n]]  # the Ray executor's note, not the summary's
    assert by_name["c"]["error"] == "not started: the batch was interrupted"
    assert f"0 built, 0 skipped, 0 failed, 3 interrupted by {sig}" in stdout
    assert "| interrupted |" in (tmp_path / "out" / "sig-summary.md").read_text()


def test_a_build_of_an_output_another_build_is_writing_is_refused_at_once(tmp_path):
    """Two builds to one -o: the second to finish failed only at the end, after all its work, or with
    --overwrite replaced the first's output; it is refused before it starts, naming the other build."""
    import signal
    import subprocess
    import sys

    proc, children = _start_paused_batch(tmp_path, jobs=2)
    try:
        for extra in ([], ["--overwrite"]):
            second = subprocess.run(
                [sys.executable, "-m", "builder", "-m", str(TINY), "-o", str(tmp_path / "out" / "a"), *extra],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr
            assert "another build (pid " in second.stderr and "is writing" in second.stderr, second.stderr
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=60)
    assert not (tmp_path / "out" / "a").exists()


def test_the_summary_lock_names_its_holder_alone_and_leaves_no_folder_it_made(tmp_path, monkeypatch, capsys):
    """A lock file a killed batch left (SIGKILL unlinks nothing) held a longer pid, whose tail the
    next batch's pid was written over: the refusal named a pid that was never one. A folder made
    for the summary goes again when the batch ends without writing there."""
    import errno

    from builder import batch_lock
    from builder.batch_exec import LocalExecutor
    from builder.batch_lock import SummaryLock

    summary_json = tmp_path / "s-summary.json"
    (tmp_path / ".s-summary.json.lock").write_text("4194304999\n")
    with SummaryLock(summary_json) as lock:
        assert lock.path.read_text() == f"{os.getpid()}\n"

    def no_flock(fd, how):  # some network mounts
        raise OSError(errno.ENOLCK, "No locks available")

    with monkeypatch.context() as m:
        m.setattr(batch_lock.fcntl, "flock", no_flock)
        with SummaryLock(summary_json) as lock:  # unlocked, as before there was a lock
            assert lock.fd is None

    def refuses(self, jobs, output_root):
        raise BuilderError("this executor runs nothing")

    monkeypatch.setattr(LocalExecutor, "check", refuses)
    path = write(tmp_path / "a.yaml", ONE_JOB)
    assert batch(path, "--summary", tmp_path / "new" / "deeper") == 2
    assert "this executor runs nothing" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_a_second_run_of_a_running_batch_is_refused(tmp_path):
    """Two runs of one file at once built the same outputs over each other, and the summary
    written last told only its own half. The second is refused before it builds anything; once
    the first has ended, the file runs again. Another --summary is no way out for the same file
    (its jobs failed on the outputs the first was writing): the refusal offers it for other outputs."""
    import signal
    import subprocess
    import sys

    proc, children = _start_paused_batch(tmp_path, jobs=2)
    try:
        second = subprocess.run(
            [sys.executable, "-m", "builder", "batch", str(tmp_path / "sig.yaml"), "--dry-run"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 0, second.stderr  # it builds nothing: not refused
        second = subprocess.run(
            [sys.executable, "-m", "builder", "batch", str(tmp_path / "sig.yaml")],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr
        summary_json = tmp_path / "out" / "sig-summary.json"
        assert second.stderr == (
            f"error: another batch (pid {proc.pid}) is running with the summary {summary_json}: the two would "
            "build the same outputs over each other; wait for it to end (a batch of other outputs can pass "
            "--summary with another folder) (nothing was built)\n"
        )
        assert "start" not in second.stdout
        assert len(list((tmp_path / "out").glob(".builder-staging*"))) == 2  # the first batch's, untouched
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    _assert_stopped_cleanly(tmp_path, children, proc.returncode, 128 + signal.SIGTERM, stderr)  # no lock file left
    s = summary(tmp_path / "out", "sig")
    assert s["interrupted_by"] == "SIGTERM"
    assert batch(tmp_path / "sig.yaml") == 0


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_a_signal_while_the_jobs_are_checked_ends_the_batch_in_one_line(sig, tmp_path, monkeypatch, capsys):
    """Before any build starts (while outputs are checked, weights maybe hashed): SIGTERM and
    SIGHUP killed the batch without a word, and Ctrl-C said only "interrupted". Now each says
    what was done (nothing) and exits 128 + the signal."""
    import signal

    import builder.batch

    signum = getattr(signal, sig)

    def checked(options, fingerprints=None):
        os.kill(os.getpid(), signum)
        raise AssertionError("the signal did not stop the batch")

    monkeypatch.setattr(builder.batch, "rebuild_reason", checked)
    path = write(tmp_path / "i.yaml", ONE_JOB)
    # As this process had them, not SIG_DFL: ray.init, run earlier in the same test worker, leaves its own.
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    assert batch(path) == 128 + signum
    err = capsys.readouterr().err
    assert err == f"error: interrupted ({sig}) while checking the jobs; nothing was built and no summary written\n"
    assert not (tmp_path / "out").exists()
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # handlers as they were


def test_closed_terminal_stops_the_batch_cleanly(tmp_path):
    """The terminal (or SSH session) goes away: SIGHUP to the batch and its builds, and every
    later write to the terminal fails with EIO. Before that, a status line names the
    running builds."""
    import fcntl
    import pty
    import re
    import select
    import signal
    import termios
    import time

    master, slave = pty.openpty()

    def controlling_terminal():  # in the new session: the pty becomes its terminal
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc, children = _start_paused_batch(tmp_path, jobs=2, stdin=slave, stdout=slave, preexec_fn=controlling_terminal)
    os.close(slave)
    shown, deadline = b"", time.monotonic() + 30
    # the status line, each second: each paused build is at its last step, "done" (tiny-qwen3: 2 layers + 4)
    while not re.search(rb"\r\x1b\[K\[running\] a 6/6 done \d+ s, b 6/6 done \d+ s", shown):
        assert time.monotonic() < deadline, shown
        if select.select([master], [], [], 0.2)[0]:
            shown += os.read(master, 65536)
    os.close(master)  # hang up
    _, stderr = proc.communicate(timeout=60)
    s = _assert_stopped_cleanly(tmp_path, children, proc.returncode, 128 + signal.SIGHUP, stderr)
    assert s["interrupted_by"] == "SIGHUP"


def test_a_closed_stdout_stops_the_batch_and_writes_the_summary(tmp_path):
    """`batch ... | head -1`: the reader goes after the first line. The batch went on to wait
    for the build it had started, started no other, and wrote no summary; now it stops as for
    a signal, says so on stderr, and its summary records what was built and what was not."""
    import signal
    import subprocess
    import sys

    path = write(tmp_path / "p.yaml", THREE_JOBS)
    proc = subprocess.Popen(
        [sys.executable, "-m", "builder", "batch", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout.readline().startswith("[1/3] start   a:")
    proc.stdout.close()  # as head does after its line
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 128 + signal.SIGPIPE, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr
    s = summary(tmp_path / "out", "p")
    assert s["interrupted_by"] == "SIGPIPE"
    assert {name: job["status"] for name, job in s["by_name"].items()} == {
        "a": "built",
        "b": "interrupted",
        "c": "interrupted",
    }
    assert stderr.strip().splitlines()[-1] == (
        f"error: stdout was closed, so the batch stopped as for a signal: 1 built, 2 interrupted "
        f"(partial outputs removed); summary: {tmp_path / 'out' / 'p-summary.json'}"
    )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a", "p-summary.json", "p-summary.md"]


def test_a_log_gets_a_running_line_now_and_then(tmp_path, monkeypatch, capsys):
    """Not a terminal: no status line redrawn in place, a '[running] ...' line every
    LOG_EVERY_S (30 s; shortened here)."""
    from builder.batch import Console

    pauses = tmp_path / "pauses"
    pauses.mkdir()
    monkeypatch.setenv("BUILDER_TEST_PAUSE_BEFORE_PUBLISH", "1.5")
    monkeypatch.setenv("BUILDER_TEST_PAUSE_DIR", str(pauses))
    monkeypatch.setattr(Console, "LOG_EVERY_S", 0.5)
    assert Console().every == 0.5  # not a terminal's once a second: a 30 s build would log 30 lines
    path = write(tmp_path / "p.yaml", ONE_JOB)
    assert batch(path) == 0
    out = capsys.readouterr().out
    assert "\r" not in out and "\x1b" not in out
    lines = out.splitlines()
    running = [line for line in lines if line.startswith("[running]")]
    assert running and all(line.startswith("[running] a ") and line.endswith(" s") for line in running)
    assert lines.index(running[0]) > lines.index("[1/1] start   a: int4 cpu (new)")
    assert lines.index(running[-1]) < next(i for i, line in enumerate(lines) if line.startswith("[1/1] built"))
    (pauses / "a.pid").unlink()  # the rebuild pauses as long, so a status line would have had its turn
    assert batch(path, "--force", "--quiet") == 0  # no status line; the job's lines stay
    lines = capsys.readouterr().out.splitlines()
    assert not [line for line in lines if line.startswith("[running]")]
    assert "[1/1] start   a: int4 cpu (--force)" in lines and any(line.startswith("[1/1] built") for line in lines)


def test_the_running_line_shows_how_far_each_job_is(tmp_path, monkeypatch, capsys):
    """A multi-hour job's '[running] a 2345 s' said neither how far it was nor whether it was
    converting weights or verifying: the line now has the job's step as a single build's progress
    line counts them (here the build paused at its last, before publishing), and the job's own
    lines and result are as before."""
    import re

    from builder.batch import Console

    pauses = tmp_path / "pauses"
    pauses.mkdir()
    monkeypatch.setenv("BUILDER_TEST_PAUSE_BEFORE_PUBLISH", "1.5")
    monkeypatch.setenv("BUILDER_TEST_PAUSE_DIR", str(pauses))
    monkeypatch.setattr(Console, "LOG_EVERY_S", 0.5)
    path = write(tmp_path / "p.yaml", ONE_JOB)
    assert batch(path) == 0
    lines = capsys.readouterr().out.splitlines()
    running = [line for line in lines if line.startswith("[running]")]
    # before its first step (the checks a build makes first) a job has its time alone
    assert running and all(re.fullmatch(r"\[running\] a( \d/6 [^,]+)? \d+ s", line) for line in running), lines
    assert any(re.fullmatch(r"\[running\] a 6/6 done \d+ s", line) for line in running), lines
    built = next(line for line in lines if line.startswith("[1/1] built"))
    assert re.fullmatch(r"\[1/1\] built   a in \d+\.\d s \(peak RSS .+, .+, \d+ nodes\)", built)
    s = summary(tmp_path / "out", "p")
    assert s["counts"]["built"] == 1 and s["by_name"]["a"]["status"] == "built"


def test_a_terminal_status_line_keeps_each_jobs_count_where_the_step_names_do_not_fit(monkeypatch):
    from builder import batch as batch_module

    monkeypatch.setenv("COLUMNS", "61")
    term = FakeTerminal()
    monkeypatch.setattr(batch_module.sys, "stdout", term)
    console = batch_module.Console()
    console.started("q06-fp32-v")
    console.started("q17-int4")
    console.stepped("q06-fp32-v", 12, 33, "layer 11/28")
    console._draw()
    assert term.text.endswith("\r\x1b[K[running] q06-fp32-v 12/33 layer 11/28 0 s, q17-int4 0 s"), term.text
    console.stepped("q17-int4", 33, 33, "verifying against transformers")
    console._draw()
    assert term.text.endswith("\r\x1b[K[running] q06-fp32-v 12/33 0 s, q17-int4 33/33 0 s"), term.text
    console.ended("q17-int4")
    console.stepped("q17-int4", 33, 33, "done")  # sent before it ended, read after: not shown
    console._draw()
    assert term.text.endswith("\r\x1b[K[running] q06-fp32-v 12/33 layer 11/28 0 s"), term.text


def test_a_build_never_waits_on_or_fails_for_its_step_reports():
    """The steps go over a non-blocking pipe: a batch that reads none (it is stopping its jobs)
    costs the build its reports, not a stall; what arrives is whole; a failing report is dropped."""
    import multiprocessing
    import time

    from builder.batch_exec import _StepSender
    from builder.kit.progress import SilentProgress

    receive, send = multiprocessing.get_context("spawn").Pipe(duplex=False)
    progress = SilentProgress(3000, on_step=_StepSender(send))
    started = time.monotonic()
    for i in range(3000):  # far more than the pipe holds
        progress.step(f"layer {i + 1}/3000")
    assert time.monotonic() - started < 10
    received = []
    while receive.poll():
        received.append(receive.recv())
    assert 0 < len(received) < 3000 and received[0] == (1, 3000, "layer 1/3000")
    assert all(done == int(what.split()[1].split("/")[0]) for done, _, what in received)

    def fails(*args):
        raise RuntimeError("display gone")

    progress = SilentProgress(2, on_step=fails)
    progress.step("layer 1/1")  # no exception
    assert progress.done == 1


def test_the_running_line_names_only_the_jobs_still_running(tmp_path, monkeypatch, capsys):
    from builder.batch import Console

    pauses = tmp_path / "pauses"
    pauses.mkdir()
    monkeypatch.setenv("BUILDER_TEST_PAUSE_BEFORE_PUBLISH", "1.5")
    monkeypatch.setenv("BUILDER_TEST_PAUSE_DIR", str(pauses))
    monkeypatch.setattr(Console, "LOG_EVERY_S", 0.5)
    path = write(tmp_path / "p.yaml", THREE_JOBS.replace("  - output: c\n", ""))
    assert batch(path) == 0
    lines = capsys.readouterr().out.splitlines()
    b_started = lines.index("[2/2] start   b: int4 cpu (new)")
    running = [line for line in lines[b_started:] if line.startswith("[running]")]
    assert running and all(line.startswith("[running] b ") and ", " not in line for line in running), lines


def test_killed_batch_takes_its_builds_with_it(tmp_path):
    """SIGKILL leaves no handler to run; the builds learn it from the kernel and clean up."""
    import signal
    import time

    proc, children = _start_paused_batch(tmp_path, jobs=2)
    proc.kill()
    proc.communicate(timeout=30)
    deadline = time.monotonic() + 30
    while not all(_gone(pid) for pid in children):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(1)
    # Nothing published, no staging; only the batch's lock file, which no process holds now
    # (the kernel let go of its flock) and the next run of the file removes when it ends.
    assert [p.name for p in (tmp_path / "out").iterdir()] == [".sig-summary.json.lock"]
    assert batch(tmp_path / "sig.yaml") == 0
    assert not (tmp_path / "out" / ".sig-summary.json.lock").exists()
    assert signal.SIGKILL


def test_a_build_process_killed_mid_build_fails_its_job_alone_and_leaves_no_staging(tmp_path):
    """The kernel's OOM killer takes one build (SIGKILL: it cannot clean up): its job fails with
    the signal named, the batch removes the staging folder it left, and the other jobs build."""
    import signal

    proc, children = _start_paused_batch(tmp_path, jobs=1)
    shutil.rmtree(tmp_path / "pauses")  # the next jobs run through
    os.kill(children[0], signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    s = summary(tmp_path / "out", "sig")
    assert s["by_name"]["a"]["error"] == "the build process was killed by signal 9 (out of memory?)"
    assert s["counts"] == {"built": 2, "skipped": 0, "failed": 1, "interrupted": 0}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["b", "c", "sig-summary.json", "sig-summary.md"]


def test_quantization_options_do_not_rebuild_a_float_job(tmp_path):
    """A block size changed in the defaults shared by int4 and fp16 jobs rebuilt the fp16 one
    for nothing: its weights have no blocks."""
    text = (
        f"output_root: out\ndefaults:\n  model: {TINY}\n  block-size: {{size}}\n"
        "jobs:\n  - {{output: f, precision: fp16}}\n"
    )
    path = write(tmp_path / "q.yaml", text.format(size=32))
    assert batch(path) == 0
    write(path, text.format(size=64))
    assert batch(path) == 0
    assert summary(tmp_path / "out", "q")["by_name"]["f"]["status"] == "skipped"


def test_a_default_written_out_is_no_change(tmp_path, capsys):
    """Writing an option at what it resolves to (accuracy-level: 4 on cpu, the installed
    --target-ort, intra-op-threads: 0, logits: last, ...) rebuilt every job though the files came
    out byte for byte the same: options were compared as written."""
    head = f"output_root: out\ndefaults:\n  model: {TINY}\n"
    jobs = "matrix:\n  ep: [cpu, webgpu]\n  precision: [int4, fp32]\n"
    path = write(tmp_path / "d.yaml", head + jobs)
    assert batch(path) == 0
    written_out = [
        "accuracy-level: 4",
        "logits: last",
        "graph-capture: 'off'\n  ep: cpu",  # cpu only: on webgpu auto captures
        "intra-op-threads: 0\n  ep: cpu",
        "max-length: 256",  # min(4096, the context of 256)
        "context-length: 256",
        "qkv-packing: packed-split\n  ep: cpu",
    ]
    for option in written_out:
        cpu_only = "ep: cpu" in option
        path = write(
            tmp_path / "d.yaml", head + f"  {option}\n" + ("jobs:\n  - precision: int4\n" if cpu_only else jobs)
        )
        capsys.readouterr()
        assert batch(path, "--dry-run") == 0
        out = capsys.readouterr().out
        assert out.count("up to date") == (1 if cpu_only else 4) and " build " not in out, (option, out)
    path = write(tmp_path / "d.yaml", head + "  accuracy-level: 0\n" + jobs)
    assert batch(path, "--dry-run") == 0
    out = capsys.readouterr().out
    assert out.count("options changed: target.accuracy_level 4 -> 0") == 2 and out.count("up to date") == 2, out


def test_allow_long_context_is_compared_by_the_context_it_gives(tmp_path, capsys):
    """allow-long-context: true with no longer context-length rebuilt the job ("options changed:
    allow-long-context") into the same bytes: it only permits a length, and the context length the
    job resolves to is what the output holds. A longer context still rebuilds."""
    path = write(tmp_path / "c.yaml", ONE_JOB)
    assert batch(path) == 0
    context = json.loads((TINY / "config.json").read_text())["max_position_embeddings"]
    for extra, expected in [
        ("    allow-long-context: true\n", "up to date"),
        (f"    allow-long-context: true\n    context-length: {context}\n", "up to date"),
        (
            f"    allow-long-context: true\n    context-length: {2 * context}\n",
            f"options changed: context-length {context} -> {2 * context}",
        ),
    ]:
        write(path, ONE_JOB + extra)
        capsys.readouterr()
        assert batch(path, "--dry-run") == 0
        out = capsys.readouterr().out
        assert expected in out, (extra, out)


def test_a_report_from_before_an_option_existed_is_up_to_date(tmp_path, capsys):
    """A report written before --residual-dtype has neither the option nor target.residual_dtype:
    the option is compared at its default and the stream as the activations' dtype, which is what
    those builds did (a hub job whose cache is gone: test_a_hub_job_is_checked_...)."""
    path = write(tmp_path / "d.yaml", f"output_root: out\njobs:\n  - model: {TINY}\n    ep: webgpu\n")
    assert batch(path) == 0
    (report_path,) = (tmp_path / "out").glob("*/build_report.json")
    report = json.loads(report_path.read_text())
    assert report["target"].pop("residual_dtype") == report["target"]["io_dtype"] == "float16"
    del report["options"]["residual_dtype"]
    assert report["target"].pop("padding") == "right"
    assert report["target"].pop("recurrent_padding") is None and report["options"].pop("padded_batches") == "auto"
    report_path.write_text(json.dumps(report))
    capsys.readouterr()
    assert batch(path, "--dry-run") == 0
    out = capsys.readouterr().out
    assert "up to date" in out and " build " not in out, out


def test_a_transformers_js_folder_from_before_left_padding_is_rebuilt(tmp_path, capsys):
    """transformers.js folders built before their graphs read a batch's pads on the left gave the
    shorter rows of a batch wrong logits: batch rebuilds them (genai folders stay: previous test)."""
    from builder.batch_resume import _padding_predated

    path = write(tmp_path / "d.yaml", f"jobs:\n  - {{model: {TINY}, format: transformers.js, output: out}}\n")
    assert batch(path) == 0
    report_path = tmp_path / "out" / "build_report.json"
    report = json.loads(report_path.read_text())
    assert report["target"]["padding"] == "left" and _padding_predated(report) is None
    del report["target"]["padding"]
    report_path.write_text(json.dumps(report))
    capsys.readouterr()
    assert batch(path, "--dry-run") == 0
    assert "this builder resolves the options differently now: target.padding right -> left" in capsys.readouterr().out
    # Without the checkpoint to plan with (a hub job whose cache is gone), the report alone says so.
    assert "built before transformers.js folders read" in _padding_predated(report)
    assert _padding_predated({"options": {"format": "genai"}, "target": {}}) is None


def test_a_hybrids_genai_folder_from_before_padded_batches_is_rebuilt(checkpoint, tmp_path, capsys):
    """Qwen3.5 genai folders built before --padded-batches let a batch's pads into the recurrent
    state: batch rebuilds those whose option now resolves on (cpu), not the webgpu ones (still off)."""
    hybrid = checkpoint("qwen3_5")
    path = write(
        tmp_path / "d.yaml",
        f"output_root: out\njobs:\n  - {{model: {hybrid}, ep: cpu}}\n  - {{model: {hybrid}, ep: webgpu}}\n",
    )
    assert batch(path) == 0
    for report_path in (tmp_path / "out").glob("*/build_report.json"):
        report = json.loads(report_path.read_text())
        assert report["target"].pop("recurrent_padding") == (
            "absorbed" if "webgpu" in report_path.parent.name else "kept_out"
        )
        del report["options"]["padded_batches"]
        report_path.write_text(json.dumps(report))
    capsys.readouterr()
    assert batch(path, "--dry-run") == 0
    out = capsys.readouterr().out
    assert out.count("target.recurrent_padding absorbed -> kept_out") == 1 and out.count("up to date") == 1, out
    # Without the checkpoint to plan with (a hub job whose cache is gone), the report alone says so.
    from builder.batch_resume import _padding_predated

    for report_path in (tmp_path / "out").glob("*/build_report.json"):
        reason = _padding_predated(json.loads(report_path.read_text()))
        assert (reason is None) == ("webgpu" in report_path.parent.name), reason


def test_an_output_root_with_dot_dot_is_checked_before_building(tmp_path, capsys):
    """`output_root: ../x` was kept unnormalized: no output looked to lie under it, so its
    up-front check was skipped and each job failed on its own after starting."""
    (tmp_path / "afile").write_text("a file, not a folder")
    path = write(tmp_path / "cfg" / "a.yaml", f"output_root: ../afile/sub\njobs:\n  - model: {TINY}\n    output: a\n")
    assert batch(path, "--summary", tmp_path / "s") == 2
    assert "nothing was built" in capsys.readouterr().err
    assert batch(ROOT / "configs" / "tiny.yaml", "--dry-run") == 0
    # names relative to the root; skipped where the README's `batch configs/tiny.yaml` built out/tiny already
    assert re.search(r"\] (build|skip ) tiny-qwen3-fp32-cpu  \(", capsys.readouterr().out)


def test_ray_address_without_the_ray_executor_is_refused(tmp_path, capsys):
    path = write(tmp_path / "a.yaml", ONE_JOB)
    for dry_run in ([], ["--dry-run"]):  # a dry run said nothing of it
        assert batch(path, "--ray-address", "head:6379", *dry_run) == 2
        assert "--ray-address needs --executor ray" in capsys.readouterr().err
        assert not (tmp_path / "out").exists()
    write(path, "executor: ray\nray_address: 6379\n" + ONE_JOB)
    with pytest.raises(BuilderError, match=r"a\.yaml:2: ray_address: must be an address like HOST:6379"):
        load_batch(path)


def test_the_command_line_executor_wins_over_the_files(tmp_path, monkeypatch):
    """--executor local runs a file that says executor: ray on this machine, with no Ray started."""
    from builder import batch_ray

    def no_ray(*args):
        raise AssertionError("a Ray executor was started")

    monkeypatch.setattr(batch_ray.RayExecutor, "__init__", no_ray)
    path = write(tmp_path / "a.yaml", "executor: ray\n" + ONE_JOB)
    assert batch(path, "--executor", "local") == 0
    assert summary(tmp_path / "out", "a")["executor"] == "local"


def test_jobs_below_one_is_refused_before_anything(tmp_path, capsys):
    path = write(tmp_path / "a.yaml", ONE_JOB)
    for dry_run in ([], ["--dry-run"]):
        assert batch(path, "--jobs", "0", *dry_run) == 2
        assert capsys.readouterr().err == "error: --jobs: 0 must be at least 1\n"
        assert not (tmp_path / "out").exists()


def test_parallel_jobs_share_the_cpus(monkeypatch):
    """Each of --jobs N builds gets its share of the CPUs for its threads, at least one."""
    from builder.batch_exec import LocalExecutor

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert [LocalExecutor(n).threads for n in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]


def test_the_first_signal_decides_how_the_batch_ends():
    """A Ctrl-C after a SIGTERM still ends the batch as the SIGTERM did (143, 'by SIGTERM')."""
    import signal

    from builder.batch_exec import Stop

    with Stop() as stop:
        stop.request(signal.SIGTERM)
        stop.request(signal.SIGINT)
        assert (stop.signum, stop.exit_code) == (signal.SIGTERM, 143)


def test_weights_resaved_during_a_build_are_rebuilt_next_run(tmp_path, monkeypatch):
    """A re-save that lands mid-build fails that build (its reads would mix two checkpoints), leaving
    no output, and the next run builds the checkpoint as it now is."""
    from builder import BuilderError
    from builder.kit.checkpoint import Checkpoint
    from builder.pipeline import build

    weights = _copy_checkpoint(tmp_path / "ckpt")
    path = write(tmp_path / "f.yaml", FINGERPRINT_JOB.format(hash="false"))
    read = Checkpoint.rows

    def rows_then_resave(self, *args, **kwargs):
        out = read(self, *args, **kwargs)
        if not (tmp_path / "resaved").exists():  # a fine-tune lands mid-build
            (tmp_path / "resaved").touch()
            _resave_in_place(weights, keep_mtime=False)
        return out

    monkeypatch.setattr(Checkpoint, "rows", rows_then_resave)
    job = load_batch(path).jobs[0]
    # No read-ahead: its thread may have read every byte before the re-save (a build of one
    # checkpoint, rightly not failed), which made this test pass or fail with the machine's load.
    options = dataclasses.replace(job.options, read_ahead_mb=0)
    with pytest.raises(BuilderError, match="model.safetensors changed while the build read it"):
        build(options, show_progress=False)
    assert (tmp_path / "resaved").exists() and not Path(job.options.output).exists()
    monkeypatch.undo()
    assert batch(path) == 0
    built = summary(tmp_path / "out", "f")["by_name"]["a"]
    assert built["status"] == "built", built


def test_yaml_scalars_mean_the_option_not_yaml_types(tmp_path):
    """YAML 1.1 reads a bare `off` as false and `1.30` as the float 1.3; the options mean the
    choice off and ONNX Runtime 1.30."""
    (tmp_path / "ckpt").mkdir()
    path = write(
        tmp_path / "b.yaml",
        """
        jobs:
          - model: ckpt
            ep: webgpu
            graph-capture: off
            int32-inputs: on
            target-ort: 1.30
    """,
    )
    options = load_batch(path).jobs[0].options
    assert (options.graph_capture, options.int32_inputs, options.target_ort) == ("off", "on", "1.30")


def test_a_null_accuracy_level_is_auto_and_an_output_may_start_at_home(tmp_path, monkeypatch):
    """accuracy-level: with no value is the option's own default (auto), not a missing value; an
    output starting with ~ is under the home folder, as a model's is."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = write(tmp_path / "b.yaml", f"jobs:\n  - model: {TINY}\n    accuracy-level:\n    output: ~/x-{{precision}}\n")
    options = load_batch(path).jobs[0].options
    assert options.accuracy_level is None
    assert options.output == str(tmp_path / "home" / "x-int4")


# ---- outputs that a later build would find taken ----------------------------------------


@pytest.mark.parametrize(
    "outputs, line, message",
    [
        (["a", "a/b"], 6, "jobs[1].output: {out}/a/b lies inside {out}/a, the output of jobs[0] (line 5)"),
        (["a/./b/", "a/../a"], 6, "jobs[1].output: {out}/a contains {out}/a/b, the output of jobs[0] (line 5)"),
        (["a", "."], 6, "jobs[1].output: {out} contains {out}/a, the output of jobs[0] (line 5)"),
    ],
)
def test_an_output_inside_another_is_refused(outputs, line, message, tmp_path, capsys):
    """Each built once; every later run refused the outer one, which held what its build did
    not write (the inner output)."""
    jobs = "".join(f"  - output: {o}\n" for o in outputs)
    path = write(tmp_path / "n.yaml", f"output_root: out\ndefaults:\n  model: {TINY}\njobs:\n{jobs}")
    assert batch(path, "--dry-run") == 2
    err = capsys.readouterr().err
    assert f"{path}:{line}: {message.format(out=tmp_path / 'out')}; a build replaces its whole folder" in err, err
    assert "nothing was built" in err and not (tmp_path / "out").exists()


def test_an_output_that_is_a_link_to_another_is_refused(tmp_path):
    """The build resolves links: two names of one folder would be built over each other."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path / "out" / "a")
    jobs = "jobs:\n  - output: a\n  - output: link\n"
    path = write(tmp_path / "n.yaml", f"output_root: out\ndefaults:\n  model: {TINY}\n{jobs}")
    with pytest.raises(BuilderError, match=r"n\.yaml:6: jobs\[1\]\.output: .*link is also the output of jobs\[0\]"):
        load_batch(path)


def test_an_output_that_is_a_loop_of_links_is_refused_before_building(tmp_path, capsys):
    """A dry run said build, and the run failed the job at its turn."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a").symlink_to(tmp_path / "out" / "b")
    (tmp_path / "out" / "b").symlink_to(tmp_path / "out" / "a")
    path = write(tmp_path / "n.yaml", f"output_root: out\ndefaults:\n  model: {TINY}\njobs:\n  - output: a\n")
    assert batch(path, "--dry-run") == 2
    err = capsys.readouterr().err
    assert "outputs the builds would refuse (nothing was built)" in err and "loop of links" in err, err
    # worded for a job, whose folder comes from its output: key (a batch takes no -o)
    assert "give the job another output folder" in err and "-o/--output" not in err, err


def test_a_summary_inside_an_output_is_refused(tmp_path, capsys):
    path = write(tmp_path / "s.yaml", ONE_JOB.replace("output: a", "output: ."))  # the output root itself
    assert batch(path, "--dry-run") == 2
    err = _one_line_error(capsys)
    assert err.startswith(
        f"error: {path}:4: jobs[0].output: {tmp_path / 'out'} would hold the batch summary "
        f"{tmp_path / 'out' / 's-summary.json'}; give the job another output, or pass --summary"
    )
    path = write(tmp_path / "s.yaml", ONE_JOB)
    assert batch(path, "--summary", tmp_path / "out" / "a" / "sums") == 2
    assert f"jobs[0].output: {tmp_path / 'out' / 'a'} would hold the batch summary" in _one_line_error(capsys)
    assert not (tmp_path / "out").exists()
    assert batch(path, "--summary", tmp_path / "out" / "sums", "--dry-run") == 0  # beside the output: fine


@pytest.mark.parametrize("output, how", [("../ckpt", "is the checkpoint folder"), ("..", "contains the checkpoint")])
def test_an_output_that_is_or_holds_a_checkpoint_is_refused(output, how, tmp_path, capsys):
    """Caught only when the build ran; a dry run said build."""
    (tmp_path / "ckpt").mkdir()
    path = write(tmp_path / "cfg" / "c.yaml", f"jobs:\n  - model: ../ckpt\n    output: {output}\n")
    assert batch(path, "--dry-run", "--summary", tmp_path / "sums") == 2
    err = capsys.readouterr().err
    assert f"{path}:3: jobs[0].output: {os.path.abspath(path.parent / output)} {how}" in err, err
    assert "choose an output outside the checkpoint" in err


def test_yaml_merge_keys_let_a_job_override_what_it_merges(tmp_path):
    """A key written in the job wins over the merged one, as YAML says; refused before as
    given twice. x- keys hold anchors; refused before as unknown."""
    (tmp_path / "ckpt").mkdir()
    path = write(
        tmp_path / "m.yaml",
        """
        x-webgpu: &webgpu {ep: webgpu, precision: fp16, block-size: 64}
        defaults: &base {model: ckpt, precision: int4}
        jobs:
          - {<<: *base, precision: fp16, output: m2}
          - {<<: [*webgpu, *base], output: m3}
    """,
    )
    first, second = (job.options for job in load_batch(path).jobs)
    assert (first.model, first.precision, first.output) == (str(tmp_path / "ckpt"), "fp16", str(tmp_path / "m2"))
    assert (second.ep, second.precision, second.block_size) == ("webgpu", "fp16", 64)  # the first merged wins
    path.write_text(path.read_text().replace("output: m2", "output: m2, precision: int8"))
    with pytest.raises(BuilderError, match=r"m\.yaml:4: jobs\[0\]\.precision: given twice"):
        load_batch(path)
    path.write_text(path.read_text().replace("<<: *base, precision: fp16", "<<: 5"))  # was a traceback
    with pytest.raises(BuilderError, match=r"m\.yaml:4: jobs\[0\]\.<<: merges mappings: <<: \*name or"):
        load_batch(path)
    path.write_text(path.read_text().replace("x-webgpu", "webgpu"))
    with pytest.raises(BuilderError, match=r"m\.yaml:1: webgpu: unknown top-level key.*x-base: &base"):
        load_batch(path)


@pytest.mark.parametrize(
    "text, line, tag",
    [
        ("jobs:\n  - {{model: {m}, output: !custom a}}\n", 2, "!custom"),
        (
            "output_root: !!python/object/apply:os.getcwd []\njobs:\n  - model: {m}\n",
            1,
            "!!python/object/apply:os.getcwd",
        ),
        ("x-base: &b {{precision: !mine int4}}\njobs:\n  - {{<<: *b, model: {m}}}\n", 1, "!mine"),
    ],
)
def test_a_yaml_tag_is_named_with_its_line(text, line, tag, tmp_path, capsys):
    """A tag the safe loader cannot construct ended in PyYAML's ConstructorError traceback (exit 1)
    wherever the value was read."""
    path = write(tmp_path / "t.yaml", text.format(m=TINY))
    assert batch(path, "--dry-run") == 2
    err = capsys.readouterr().err
    assert f"{path}:{line}: the YAML tag {tag} means nothing in a batch file" in err, err
    assert "Traceback" not in err
    path.write_text(text.format(m=TINY).replace("!!python/object/apply:os.getcwd []", "out").replace(f"{tag} ", ""))
    assert batch(path, "--dry-run") == 0


@pytest.mark.parametrize("hangs", [False, True])
def test_a_signal_while_the_executor_starts_stops_the_batch_with_its_summary(tmp_path, hangs):
    """A KeyboardInterrupt inside a Ray executor's start (ray.init, its probe's ray.get) ended in
    a segfault at ray.shutdown with no summary, and left Ray's agents running. The signal is
    now noted there as while builds run: no job starts, and the summary says so. A start that
    then hangs (a cluster that never answers) ends the batch after START_GRACE_S."""
    import subprocess
    import sys

    config = write(
        tmp_path / "b.yaml",
        f"""
        jobs:
          - {{model: {TINY}, output: a}}
          - {{model: {TINY}, output: b, precision: fp32}}
        """,
    )
    script = (  # the executor's check() stands for Ray's start-up: a signal lands inside it
        "import os, signal, sys, time\n"
        "from builder import batch, batch_exec, cli\n"
        "batch_exec.START_GRACE_S = 1.0\n"
        "real = batch.LocalExecutor.check\n"
        "def check(self, *a):\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        f"    time.sleep({60 if hangs else 0})\n"
        "    return real(self, *a)\n"
        "batch.LocalExecutor.check = check\n"
        f"sys.exit(cli.main(['batch', {str(config)!r}]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=50)
    assert proc.returncode == 130, proc.stderr
    assert "SIGINT: stopping once the executor has started (quitting if that takes over 1 s more)" in proc.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    if hangs:
        assert proc.stderr.strip().endswith("error: interrupted while the executor was starting; nothing was built")
        return
    jobs = summary(tmp_path, "b")["by_name"]
    assert {name: (j["status"], j["error"]) for name, j in jobs.items()} == {
        name: ("interrupted", "not started: the batch was interrupted") for name in ("a", "b")
    }


def offline_hub_cache(tmp_path, monkeypatch):
    """A Hugging Face cache holding org/tiny (the tiny Qwen3), offline, for this process and the builds'."""
    from huggingface_hub import constants
    from test_hardening import hub_cache

    home = tmp_path / "hf"
    hub_cache(home, "org/tiny", TINY)
    monkeypatch.setenv("HF_HOME", str(home))  # the builds' own processes
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return home


def test_a_hub_job_is_checked_without_downloading_its_checkpoint(tmp_path, monkeypatch, capsys):
    """Deciding that a hub job's output is up to date downloaded the whole checkpoint (a dry run
    of the Qwen3 family file would fetch 125 GB to print 'skip'); without a cache it rebuilt."""
    import shutil

    import huggingface_hub
    from huggingface_hub import constants

    import builder.kit.model_source as model_source

    home = offline_hub_cache(tmp_path, monkeypatch)
    path = write(tmp_path / "hub.yaml", "jobs:\n  - {model: org/tiny, output: out}\n")
    assert batch(path) == 0
    local_only = huggingface_hub.snapshot_download

    def no_download(*args, **kwargs):
        assert kwargs.get("local_files_only"), "the skip check asked the hub for the checkpoint"
        return local_only(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_download)
    capsys.readouterr()
    assert batch(path, "--dry-run") == 0
    assert "skip  out  (org/tiny, int4, cpu; up to date)" in capsys.readouterr().out
    shutil.rmtree(home / "hub")  # a pruned cache, or a driver that never had the files
    assert batch(path, "--dry-run") == 0
    assert "skip  out  (org/tiny, int4, cpu; up to date)" in capsys.readouterr().out
    # Built before an option existed: compared at its default (it said "options changed" and rebuilt).
    report = json.loads((tmp_path / "out" / "build_report.json").read_text())
    del report["options"]["residual_dtype"]
    (tmp_path / "out" / "build_report.json").write_text(json.dumps(report))
    assert batch(path, "--dry-run") == 0
    assert "skip  out  (org/tiny, int4, cpu; up to date)" in capsys.readouterr().out
    monkeypatch.setattr(model_source, "hub_revision", lambda repo: "f" * 40)  # the hub moved on
    # Offline, a job to build whose checkpoint this cache lacks is refused before anything runs
    # (it failed at its turn, and --dry-run called it a build).
    assert batch(path, "--dry-run") == 2
    refused = capsys.readouterr().err
    assert "hub ids not in the Hugging Face cache, and HF_HUB_OFFLINE is set" in refused
    assert "org/tiny: download it where you have network (hf download org/tiny" in refused
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert batch(path, "--dry-run") == 0
    assert (
        "build out  (org/tiny, int4, cpu; hub revision 000000000000 -> ffffffffffff; downloads it: not in the "
        "Hugging Face cache)" in capsys.readouterr().out
    )


def test_a_hub_job_without_its_cached_checkpoint_follows_the_installed_runtime(tmp_path, monkeypatch):
    """With the hub cache pruned there is no config to plan with, so the target's ONNX Runtime is the
    one thing that tells a build for another runtime apart (an upgraded onnxruntime): it is rebuilt."""
    import shutil

    from builder.batch_resume import rebuild_reason
    from builder.kit.targets import Target

    home = offline_hub_cache(tmp_path, monkeypatch)
    path = write(tmp_path / "hub.yaml", "jobs:\n  - {model: org/tiny, output: out}\n")
    assert batch(path) == 0
    shutil.rmtree(home / "hub")  # a pruned cache, or a driver that never had the files
    options = load_batch(path).jobs[0].options
    assert rebuild_reason(options) is None
    report_path = tmp_path / "out" / "build_report.json"
    report = json.loads(report_path.read_text())
    report["target"]["ort_version"] = "1.29"  # built while onnxruntime 1.29 was installed
    report_path.write_text(json.dumps(report))
    assert rebuild_reason(options) == f"target ONNX Runtime 1.29 -> {Target.from_options(options).version_text}"


def test_an_old_gemma3_report_is_rebuilt_with_or_without_its_checkpoint(checkpoint, tmp_path, monkeypatch, capsys):
    """A Gemma 3 build from before --residual-dtype had an fp16 residual stream; auto now keeps it in
    fp32. With the hub cache pruned (no config to plan with), the report counted as up to date."""
    from huggingface_hub import constants
    from test_hardening import hub_cache

    import builder.kit.model_source as model_source

    home = tmp_path / "hf"
    hub_cache(home, "org/g", checkpoint("gemma3"))
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    path = write(tmp_path / "g.yaml", "jobs:\n  - {model: org/g, precision: fp16, output: out}\n")
    assert batch(path) == 0
    capsys.readouterr()
    assert batch(path, "--dry-run") == 0
    assert "skip  out  (org/g, fp16, cpu; up to date)" in capsys.readouterr().out
    report_path = tmp_path / "out" / "build_report.json"
    report = json.loads(report_path.read_text())
    del report["options"]["residual_dtype"], report["target"]["residual_dtype"]  # as written before it
    report_path.write_text(json.dumps(report))
    assert batch(path, "--dry-run") == 0
    assert (
        "build out  (org/g, fp16, cpu; this builder resolves the options differently now: "
        "target.residual_dtype float16 -> float32)" in capsys.readouterr().out
    )
    shutil.rmtree(home / "hub")
    monkeypatch.delenv("HF_HUB_OFFLINE")  # offline, a build of a checkpoint the cache lacks is refused
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(model_source, "hub_revision", lambda repo: "0" * 40)  # the hub serves what was built
    assert batch(path, "--dry-run") == 0
    assert (
        "build out  (org/g, fp16, cpu; built before --residual-dtype, whose auto keeps Gemma3Builder's "
        "residual stream in fp32 now; downloads it: not in the Hugging Face cache)" in capsys.readouterr().out
    )


def test_checkpoint_hash_reads_a_checkpoint_once_per_batch(tmp_path, monkeypatch, capsys):
    from support.fingerprints import count_fingerprints

    path = write(
        tmp_path / "h.yaml",
        f"defaults: {{model: {TINY}, checkpoint-hash: true}}\nmatrix:\n  precision: [int4, int8, fp32]\n",
    )
    assert batch(path) == 0
    taken = count_fingerprints(monkeypatch)
    capsys.readouterr()
    assert batch(path, "--dry-run") == 0
    out = capsys.readouterr().out
    assert taken == [True] and out.count("hashing the weights") == 1 and out.count("up to date") == 3


def test_jobs_of_one_checkpoint_with_and_without_checkpoint_hash_are_both_up_to_date(tmp_path, capsys):
    """The fingerprints a batch run shares are of two kinds (file identity, content hash): one of
    them given to a job of the other kind reads as a changed checkpoint, rebuilt on every run."""
    path = write(
        tmp_path / "h.yaml",
        f"defaults: {{model: {TINY}}}\njobs:\n  - {{output: plain}}\n  - {{output: hashed, checkpoint-hash: true}}\n",
    )
    assert batch(path) == 0
    capsys.readouterr()
    assert batch(path, "--dry-run") == 0
    out = capsys.readouterr().out
    assert out.count("up to date") == 2, out


def test_dry_run_refuses_outputs_a_run_cannot_write(tmp_path, capsys):
    """--dry-run passed a batch whose output root (or an output outside it) cannot be written,
    which the run then refused; an output outside the root failed only at its turn."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    root_bad = write(tmp_path / "r.yaml", f"output_root: {blocker}/out\njobs:\n  - model: {TINY}\n")
    assert batch(root_bad, "--dry-run", "--summary", tmp_path / "s") == 2
    err = capsys.readouterr().err
    assert "output_root: " in err and "cannot write the outputs there" in err
    outside = write(tmp_path / "o.yaml", f"jobs:\n  - {{model: {TINY}, output: {blocker}/x/y}}\n")
    assert batch(outside, "--dry-run") == 2
    assert (
        f"outputs the builds cannot write (nothing was built):\n  {outside}:2: jobs[0].output: cannot write "
        f"{blocker}/x/y in {blocker}/x (" in (capsys.readouterr().err)
    )


def test_a_file_that_is_no_batch_file_is_one_problem(tmp_path):
    """batch on a config.json listed every one of its 26 keys as an unknown top-level key, each
    with the same hint."""
    config = ROOT / "examples" / "tiny-qwen3" / "config.json"
    with pytest.raises(BuilderError) as refused:
        load_batch(config)
    message = str(refused.value)
    assert message.count("\n") == 1 and "no top-level key of a batch file (architectures," in message, message
    # One key alone is a misspelt one of a batch file, named as such.
    path = write(tmp_path / "j.yaml", f"jobz:\n  - model: {TINY}\n")
    with pytest.raises(BuilderError) as refused:
        load_batch(path)
    assert str(refused.value).startswith(f"{path}:1: jobz: unknown top-level key; expected defaults, matrix, jobs")


def test_an_output_auto_now_resolves_differently_for_is_rebuilt(tmp_path):
    """The resolved target was compared only when the written options changed, so an output
    built before what auto resolves to changed (Gemma 3's webgpu activations became fp32) stayed
    'up to date' for good."""
    from builder.batch_resume import rebuild_reason

    path = write(tmp_path / "d.yaml", ONE_JOB)
    assert batch(path) == 0
    options = load_batch(path).jobs[0].options
    assert rebuild_reason(options) is None
    report_path = tmp_path / "out" / "a" / "build_report.json"
    report = json.loads(report_path.read_text())
    report["target"]["io_dtype"] = "float16"  # as if auto had resolved otherwise then
    report_path.write_text(json.dumps(report))
    assert rebuild_reason(options) == (
        "this builder resolves the options differently now: target.io_dtype float16 -> float32"
    )


def test_dry_run_names_each_jobs_output_folder(tmp_path, monkeypatch, capsys):
    """--dry-run printed job names alone, relative to an output root it did not name: a file without
    output_root: writes beside itself, whatever folder the batch runs from, and that was nowhere to be
    seen before the run wrote there. --output-root is read from the current folder."""
    path = write(tmp_path / "cfg" / "d.yaml", f"jobs:\n  - {{model: {TINY}, output: a}}\n  - {{model: {TINY}}}\n")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert batch(path, "--dry-run") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith(f"; new)  -> {tmp_path / 'cfg' / 'a'}"), lines
    assert lines[1].endswith(f"; new)  -> {tmp_path / 'cfg' / 'tiny-qwen3-int4-cpu'}"), lines
    assert batch(path, "--dry-run", "--output-root", "out") == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(f"-> {tmp_path / 'elsewhere' / 'out' / 'a'}")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["cfg", "d.yaml", "elsewhere"]  # nothing written


def test_dry_run_says_which_hub_ids_it_would_download(tmp_path, monkeypatch, capsys):
    """Offline without HF_HUB_OFFLINE, --dry-run called an uncached hub job plain "new" and the run
    then failed each one; it now says which ones the run downloads (a local folder needs nothing)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    path = write(
        tmp_path / "h.yaml", f"jobs:\n  - {{model: org/absent, output: a}}\n  - {{model: {TINY}, output: b}}\n"
    )
    assert batch(path, "--dry-run") == 0
    lines = capsys.readouterr().out.splitlines()
    assert "(org/absent, int4, cpu; new; downloads it: not in the Hugging Face cache)" in lines[0], lines
    assert lines[1].endswith(f"; new)  -> {tmp_path / 'b'}"), lines


def test_a_changed_builder_rebuilds_what_it_built(tmp_path):
    """The version stayed 0.1.0 through every fix, so a batch rerun after pulling one (QMoE's
    norm_topk_prob, which changed int4 MoE graphs) called the old, wrong outputs up to date. The
    report records a digest of the builder's own code; a change to it rebuilds."""
    import shutil
    import subprocess
    import sys

    repo = tmp_path / "repo"
    for package in ("builder", "architectures", "quant"):
        shutil.copytree(ROOT / package, repo / package, ignore=shutil.ignore_patterns("__pycache__"))
    jobs = write(tmp_path / "jobs.yaml", f"jobs:\n  - {{model: {TINY}, precision: fp32, output: {tmp_path / 'out'}}}\n")
    env = {**os.environ, "PYTHONPATH": str(repo)}

    def run() -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "builder", "batch", str(jobs)],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,  # not the checkout, whose builder would come first on sys.path
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert "1 built" in run()
    assert "0 built, 1 skipped" in run()
    # A comment, or code no output comes from (batch's own), rebuilds nothing: hours on 8B models.
    with open(repo / "architectures" / "qwen3.py", "a") as f:
        f.write("\n# reworded\n")
    with open(repo / "builder" / "batch_summary.py", "a") as f:
        f.write("\nSUMMARY_WORDING = 2\n")
    assert "0 built, 1 skipped" in run()
    with open(repo / "architectures" / "qwen3.py", "a") as f:
        f.write("\nFIXED = True\n")
    again = run()
    assert "the builder's code changed" in again and "1 built" in again, again


def test_the_builder_s_digest_covers_the_code_outputs_come_from_and_no_more(tmp_path, monkeypatch):
    """Which of the builder's files decide whether batch rebuilds: the quantizer and the pipeline do
    (a fixed int4 packing left old outputs up to date otherwise); the progress display, error
    wording, comments and files beside pipeline.py do not (each rebuilt every output: hours on 8B models)."""
    import types

    import builder.family_source as family_source

    files = {
        "builder/__init__.py": "",
        "builder/pipeline.py": "STEP = 1\n",
        "builder/pipeline_extra.py": "X = 1\n",
        "builder/kit/progress.py": "BAR = 1\n",
        "builder/kit/errors.py": "WORDS = 1\n",
        "builder/kit/graph.py": "OPS = 1\n",
        "quant/int4.py": "BLOCK = 32\n",
        "architectures/llama.py": "ROPE = 1\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    fake = types.SimpleNamespace(__file__=str(tmp_path / "builder" / "__init__.py"))
    monkeypatch.setattr(family_source.importlib, "import_module", lambda name: fake)
    monkeypatch.setattr(family_source, "builder_source_digest", family_source.builder_source_digest.__wrapped__)

    def digest_after(name: str, text: str) -> str | None:
        (tmp_path / name).write_text(text)
        return family_source.builder_source_digest()

    before = family_source.builder_source_digest()
    assert before is not None
    assert digest_after("builder/kit/progress.py", "BAR = 2\n") == before
    assert digest_after("builder/kit/errors.py", "WORDS = 2\n") == before
    assert digest_after("builder/pipeline_extra.py", "X = 2\n") == before
    assert digest_after("quant/int4.py", "# a comment\nBLOCK = 32\n") == before
    quantized = digest_after("quant/int4.py", "BLOCK = 64\n")
    assert quantized != before
    assert digest_after("builder/pipeline.py", "STEP = 2\n") not in (quantized, None)
    for name in files:  # nothing readable: the version alone decides
        (tmp_path / name).unlink()
    assert family_source.builder_source_digest() is None


def test_a_model_that_is_no_folder_and_no_valid_hub_id_is_refused_up_front(tmp_path, capsys):
    """'not a/hub id' passed the checks (a dry run said it would build 'hub id-int4-cpu') and failed
    only at its turn, after the other jobs had run."""
    path = write(tmp_path / "j.yaml", f"jobs:\n  - model: {TINY}\n  - model: not a/hub id\n")
    assert batch(path, "--output-root", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "jobs[1].model" in err and "not a valid hub id" in err and "nothing was built" in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(BuilderError, match=r"j\.yaml:3: jobs\[1\]\.model: .*not a valid hub id"):
        load_batch(path, executor="ray")  # the nodes look for folders, but a hub id is one everywhere


def test_a_family_that_fails_past_except_exception_fails_its_job_alone_with_its_traceback(tmp_path, capsys):
    """A MemoryError, a BaseException of a family's and a family's sys.exit() fail their own job,
    with one line in the terminal and the traceback in the summary; sys.exit() read 'the build
    process exited with code 3 without a result', with no trace of where."""
    from support.failing_families import FAIL

    out = tmp_path / "out"
    path = write(
        tmp_path / "bug.yaml",
        f"""
        output_root: out
        defaults:
          model: {TINY}
        jobs:
          - {{output: oom, family: 'support.failing_families:RunsOutOfMemory'}}
          - {{output: exits, family: 'support.failing_families:CallsSysExit'}}
          - {{output: good}}
        """,
    )
    write(out / FAIL, "")
    capsys.readouterr()
    assert batch(path) == 1
    printed = capsys.readouterr()
    assert "Traceback" not in printed.out + printed.err
    jobs = summary(out, "bug")["by_name"]
    expected = {
        "oom": ("MemoryError: cannot allocate 17179869184 bytes", 'raise MemoryError("cannot allocate'),
        "exits": ("the build called sys.exit(3)", "sys.exit(3)"),
    }
    for name, (error, line) in expected.items():
        job = jobs[name]
        assert (job["status"], job["error"]) == ("failed", error), job
        assert "failing_families.py" in job["traceback"] and line in job["traceback"], job["traceback"]
    assert jobs["good"]["status"] == "built"
    assert sorted(p.name for p in out.iterdir()) == [FAIL, "bug-summary.json", "bug-summary.md", "good"]


def test_a_killed_build_process_fails_its_job_alone_and_debug_prints_a_traceback(tmp_path, capsys):
    """A build killed by SIGKILL (the kernel's OOM killer) is named as such; --debug prints the
    traceback of a job that failed on an unexpected exception, which a plain run keeps to the JSON."""
    from support.failing_families import FAIL

    out = tmp_path / "out"
    path = write(
        tmp_path / "die.yaml",
        f"""
        output_root: out
        defaults:
          model: {TINY}
        jobs:
          - {{output: dies, family: 'support.failing_families:KillsItsWorker'}}
          - {{output: oom, family: 'support.failing_families:RunsOutOfMemory'}}
        """,
    )
    write(out / FAIL, "")
    capsys.readouterr()
    assert batch(path, "--debug") == 1
    printed = capsys.readouterr()
    jobs = summary(out, "die")["by_name"]
    assert (jobs["dies"]["status"], jobs["dies"]["error"]) == (
        "failed",
        "the build process was killed by signal 9 (out of memory?)",
    )
    assert "Traceback" in printed.err and 'raise MemoryError("cannot allocate' in printed.err, printed.err
    assert "\n0 built, 0 skipped, 2 failed; summary: " in printed.out, printed.out


def test_the_sigterm_of_a_ray_worker_still_ends_the_worker(tmp_path):
    """Ray's worker turns SIGTERM into a SystemExit carrying ray_terminate_msg; the worker must end
    on it, so that Ray retries the job, not report it failed as a family's sys.exit()."""
    from builder.batch_exec import run_job
    from support.failing_families import FAIL

    write(tmp_path / FAIL, "")
    family = "support.failing_families:EndedByRaysSigterm"
    with pytest.raises(SystemExit) as ended:
        run_job({"model": str(TINY), "output": str(tmp_path / "out"), "family": family}, threads=1)
    assert ended.value.ray_terminate_msg and not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_the_table_gives_each_failed_job_s_error_below_it():
    """The table's note column holds an error's first line; the whole error follows the table."""
    from builder import BuildOptions
    from builder.batch_jobs import Job
    from builder.batch_summary import table

    error = "config.json: hidden_size = 'x' is not valid\nsecond line"
    jobs = [
        Job("jobs[0]", 2, BuildOptions(model="m"), name="a", result={"status": "failed", "error": error}),
        Job("jobs[1]", 3, BuildOptions(model="m"), name="b", result={"status": "built", "seconds": 1.5}),
    ]
    text = table(jobs)
    assert text.endswith(f"\na: {error}")
    lines = text.splitlines()
    assert lines[2].split() == ["b", "built", "1.5", "s", "-", "-", "-", "-"]


def test_a_bar_or_line_break_in_an_error_stays_inside_its_markdown_cell(tmp_path):
    """An error or warning holding '|' (a shell pipe, a union type) split its row into extra cells."""
    from builder import BuildOptions
    from builder.batch_jobs import Job
    from builder.batch_schema import Batch
    from builder.batch_summary import markdown

    result = {"status": "failed", "error": "x | y\nz", "warnings": ["a|b"]}
    job = Job("jobs[0]", 2, BuildOptions(model="m"), name="a", result=result)
    text = markdown(Batch(tmp_path / "b.yaml", tmp_path, [job]))
    row = next(line for line in text.splitlines() if line.startswith("| a |"))
    assert row.endswith("| x \\| y z |") and row.count(" | ") == 7, row
    assert "- a: a\\|b" in text.splitlines()


def test_a_summary_folder_whose_name_ends_in_json_gets_the_summary_inside(tmp_path):
    from builder import BuildOptions
    from builder.batch_jobs import Job
    from builder.batch_schema import Batch
    from builder.batch_summary import summary_paths

    folder = tmp_path / "results.json"
    folder.mkdir()
    job = Job("jobs[0]", 2, BuildOptions(model="m", output=str(tmp_path / "out")), name="out")
    batch = Batch(tmp_path / "b.yaml", tmp_path, [job])
    assert summary_paths(str(folder), batch) == (folder / "b-summary.json", folder / "b-summary.md")
    assert summary_paths(str(tmp_path / "s.json"), batch) == (tmp_path / "s.json", tmp_path / "s.md")


def test_a_stopped_batch_ends_a_job_while_onnxruntime_loads_its_model(tmp_path):
    """A job's --verify load holds its build process in C++ for seconds to minutes; the batch's stop
    ends it cleanly there too (its build process waits on the load in another thread, and then ends
    with os._exit), rather than killing it after the grace."""
    import signal
    import subprocess
    import sys

    from test_hardening import HELD_IN_C_SITECUSTOMIZE

    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(HELD_IN_C_SITECUSTOMIZE)
    started = tmp_path / "started"
    job = f"  - model: {TINY}\n    output: a\n    verify: true\n"
    path = write(tmp_path / "sig.yaml", f"output_root: out\njobs:\n{job}")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(ROOT), str(ROOT / "tests")]),
        "HELD_IN_C_STARTED": str(started),
        "HELD_IN_C_EXITED": str(tmp_path / "exited"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "builder", "batch", str(path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_for_file(started, proc, "the load never started")
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr
    job = summary(tmp_path / "out", "sig")["by_name"]["a"]
    assert job["error"] == "interrupted; its partial output was removed", job
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["sig-summary.json", "sig-summary.md"]


def test_a_job_the_batch_kills_after_its_grace_is_not_blamed_on_memory(tmp_path):
    """A stopped job that outlived its SIGTERM grace was killed by the batch itself, and its error
    read "killed by signal 9 (out of memory?)", sending the user to look for a memory problem."""
    from types import SimpleNamespace

    from builder.batch_exec import LocalExecutor

    class Silent:  # a result pipe on which the killed child said nothing
        def poll(self):
            return False

        def close(self):
            pass

    killed = SimpleNamespace(exitcode=-9, join=lambda *a: None)
    for was_killed, error in [
        (True, f"interrupted (it had not stopped {LocalExecutor.GRACE_S} s after SIGTERM, and was killed)"),
        (False, "interrupted (the build process was killed by signal 9 (out of memory?))"),
    ]:
        job = SimpleNamespace(result={}, options=SimpleNamespace(output=str(tmp_path / "out")))
        LocalExecutor._collect(job, Silent(), killed, 0.0, interrupted=True, killed=was_killed)
        assert (job.result["status"], job.result["error"]) == ("interrupted", error)
