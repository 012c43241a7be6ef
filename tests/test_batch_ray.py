"""`python -m builder batch --executor ray`: the same builds, on a Ray cluster.

One local Ray instance per module, bounded to 2 CPUs, no dashboard, a small
object store; this test process is the driver (as `batch` would be), the builds
run in Ray's worker processes. Ray is the [ray] extra, which scripts/setup.sh
installs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray
from test_batch import batch, summary

from builder import batch_ray
from support.processes import wait_for_file

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples" / "tiny-qwen3"
TINY_JOBS = ("tiny-qwen3-fp32-cpu", "tiny-qwen3-int4-cpu", "tiny-qwen3-int4-webgpu")


@pytest.fixture(scope="module")
def pause_dir(tmp_path_factory):
    """The pause hook's folder: set before Ray starts so its workers inherit the variables;
    a build pauses only while the folder exists."""
    folder = tmp_path_factory.mktemp("pauses") / "active"
    saved = {k: os.environ.get(k) for k in ("BUILDER_TEST_PAUSE_BEFORE_PUBLISH", "BUILDER_TEST_PAUSE_DIR")}
    os.environ.update(BUILDER_TEST_PAUSE_BEFORE_PUBLISH="120", BUILDER_TEST_PAUSE_DIR=str(folder))
    yield folder
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module", autouse=True)
def cluster(pause_dir):
    """The cluster's GCS address, for drivers in other processes. Its workers import this
    checkout and the tests' support modules (support.failing_families) through PYTHONPATH."""
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), *filter(None, [saved])])
    # "local": a cluster of its own, even where `ray start --head` has recorded one on this machine
    # (ray.init() would join that, and refuses num_cpus for it; or wait without end if it is gone).
    context = ray.init(
        address="local",
        num_cpus=2,
        object_store_memory=80 * 1024 * 1024,
        include_dashboard=False,
        log_to_driver=False,
    )
    yield context.address_info["gcs_address"]
    ray.shutdown()
    if saved is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = saved


def hidden(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def tiny_both(tmp_path_factory):
    """configs/tiny.yaml run by each executor into its own output root."""
    local, on_ray = tmp_path_factory.mktemp("local"), tmp_path_factory.mktemp("ray")
    codes = (
        batch(ROOT / "configs" / "tiny.yaml", "--output-root", local),
        batch(ROOT / "configs" / "tiny.yaml", "--output-root", on_ray, "--executor", "ray"),
    )
    return local, on_ray, codes


def test_ray_outputs_equal_the_local_executors_byte_for_byte(tiny_both, capsys):
    local, on_ray, codes = tiny_both
    assert codes == (0, 0)
    s = summary(on_ray, "tiny")
    assert s["executor"] == "ray"
    assert s["counts"] == {"built": 3, "skipped": 0, "failed": 0, "interrupted": 0}
    for name in TINY_JOBS:
        for f in ("model.onnx.data", "model.onnx", "genai_config.json"):
            assert (on_ray / name / f).read_bytes() == (local / name / f).read_bytes(), f"{name}/{f}"
        job = s["by_name"][name]
        assert job["node"] and job["attempts"] == 1 and "attempt_nodes" not in job
        assert job["memory_request_bytes"] > job["peak_rss_bytes"] > 50e6
    assert s["by_name"]["tiny-qwen3-fp32-cpu"]["verify"]["status"] == "passed"
    assert hidden(on_ray) == []  # no staging folders, no probe or attempt records
    md = (on_ray / "tiny-summary.md").read_text()
    assert "| node |" in md and all(f"| {n} | built |" in md for n in TINY_JOBS)


def test_rerun_on_ray_skips_everything(tiny_both, capsys):
    _, on_ray, _ = tiny_both
    before = {n: (on_ray / n / "build_report.json").stat().st_mtime_ns for n in TINY_JOBS}
    assert batch(ROOT / "configs" / "tiny.yaml", "--output-root", on_ray, "--executor", "ray") == 0
    s = summary(on_ray, "tiny")
    assert s["counts"] == {"built": 0, "skipped": 3, "failed": 0, "interrupted": 0}
    assert before == {n: (on_ray / n / "build_report.json").stat().st_mtime_ns for n in TINY_JOBS}
    assert capsys.readouterr().out.count("skipped tiny-qwen3-") == 3


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_worker_is_retried_and_nothing_partial_remains(tmp_path, pause_dir, sig):
    """The build's worker is killed with its staging folder complete and unpublished. SIGTERM is
    how `ray stop` and a node shutting down stop a worker: the build turned it into a clean stop,
    and the job was reported 'interrupted' in a batch nobody interrupted, never retried, while
    the batch exited 0 without it."""
    path = write(tmp_path / "kill.yaml", f"output_root: out\njobs:\n  - model: {TINY}\n    output: k\n")
    pause_dir.mkdir()
    killed = []

    def killer():
        marker = pause_dir / "k.pid"
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if marker.exists():
            time.sleep(0.2)  # the pid is written just before the pause
            staging = [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".builder-staging-k-")]
            killed.append((int(marker.read_text()), staging))
            os.kill(killed[0][0], sig)

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        code = batch(path, "--executor", "ray")
    finally:
        thread.join()
        shutil.rmtree(pause_dir)
    assert killed and len(killed[0][1]) == 1, "the build never paused with a staging folder"
    assert code == 0
    job = summary(tmp_path / "out", "kill")["by_name"]["k"]
    assert job["status"] == "built" and job["attempts"] == 2 and job["pid"] != killed[0][0]
    assert len(job["attempt_nodes"]) == 2
    assert (tmp_path / "out" / "k" / "model.onnx").is_file()
    assert hidden(tmp_path / "out") == []


FAILING = "support.failing_families"


def test_a_worker_that_dies_on_every_attempt_fails_its_job_alone_in_one_line(tmp_path, cluster):
    """A job whose worker dies mid-build each time (SIGKILL in the task, as the OOM killer
    sends) is tried 1 + MAX_RETRIES times and then fails by itself: the other job is built, the
    batch exits 1, nothing of the job is left, and a rerun builds only it. Ray's own report of
    each death (a paragraph of IDs and likely causes, then 'There are 2 retries remaining')
    was printed into the batch's stdout, between its job lines."""
    import subprocess
    import sys

    from support.failing_families import FAIL

    out = tmp_path / "out"
    path = write(
        tmp_path / "die.yaml",
        f"output_root: out\ndefaults:\n  model: {TINY}\njobs:\n  - output: good\n"
        f"  - {{output: dies, family: '{FAILING}:KillsItsWorker'}}\n",
    )
    write(out / FAIL, "")
    proc = subprocess.run(  # a driver of its own: all that Ray prints in it lands here
        [sys.executable, "-m", "builder", "batch", str(path), "--executor", "ray", "--ray-address", cluster],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    for text in (proc.stdout, proc.stderr):
        assert "A worker died" not in text and "retries remaining" not in text and "(raylet)" not in text, text
    assert "Traceback" not in proc.stderr
    s = summary(out, "die")
    assert s["counts"] == {"built": 1, "skipped": 0, "failed": 1, "interrupted": 0}
    dies = s["by_name"]["dies"]
    assert dies["status"] == "failed" and dies["attempts"] == 3 and len(dies["attempt_nodes"]) == 3
    assert dies["error"].startswith("its worker died 3 time(s)") and "\n" not in dies["error"], dies["error"]
    assert len(re.findall(r" pid \d+[,;]", dies["error"])) == 3 and "/worker-*-<pid>.err on its node" in dies["error"]
    assert "[2/2] failed  dies after" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == [FAIL, "die-summary.json", "die-summary.md", "good"]

    (out / FAIL).unlink()
    built = (out / "good" / "build_report.json").stat().st_mtime_ns
    assert batch(path, "--executor", "ray") == 0
    s = summary(out, "die")
    assert s["counts"] == {"built": 1, "skipped": 1, "failed": 0, "interrupted": 0}
    assert s["by_name"]["dies"]["status"] == "built" and s["by_name"]["dies"]["attempts"] == 1
    assert (out / "good" / "build_report.json").stat().st_mtime_ns == built
    assert hidden(out) == []


def test_a_bug_that_raises_fails_its_job_once_with_its_traceback_in_the_summary(tmp_path, capsys):
    """An exception that is no BuilderError (a bug, a MemoryError) fails its job once, with one
    line in the terminal and its traceback in the summary JSON (--debug prints it). One that is not
    even an Exception left the job body and was reported as 'its worker died 1 time(s)'; a family's
    sys.exit() was retried as a dead worker."""
    from support.failing_families import FAIL

    out = tmp_path / "out"
    path = write(
        tmp_path / "bug.yaml",
        f"output_root: out\ndefaults:\n  model: {TINY}\njobs:\n"
        f"  - {{output: oom, family: '{FAILING}:RunsOutOfMemory'}}\n"
        f"  - {{output: base, family: '{FAILING}:RaisesABaseException'}}\n"
        f"  - {{output: exits, family: '{FAILING}:CallsSysExit'}}\n",
    )
    write(out / FAIL, "")
    capsys.readouterr()
    assert batch(path, "--executor", "ray") == 1
    printed = capsys.readouterr()
    assert "Traceback" not in printed.out + printed.err
    jobs = summary(out, "bug")["by_name"]
    expected = {
        "oom": ("MemoryError: cannot allocate 17179869184 bytes", 'raise MemoryError("cannot allocate'),
        "base": ("Aborted: a BaseException from the family", 'raise Aborted("a BaseException'),
        "exits": ("the build called sys.exit(3)", "sys.exit(3)"),
    }
    for name, (error, line) in expected.items():
        job = jobs[name]
        assert (job["status"], job["error"], job["attempts"]) == ("failed", error, 1), job
        assert f"failed  {name} after" in printed.out and error in printed.out
        assert "failing_families.py" in job["traceback"] and line in job["traceback"], job["traceback"]
        assert "\x1b[" not in job["traceback"]  # Ray colours the task's name
        assert job["node"]
    assert sorted(p.name for p in out.iterdir()) == [FAIL, "bug-summary.json", "bug-summary.md"]

    (out / FAIL).unlink()
    assert batch(path, "--executor", "ray") == 0
    assert summary(out, "bug")["counts"]["built"] == 3
    assert hidden(out) == []


def test_bad_input_fails_once_without_retries(tmp_path, capsys):
    """A folder here that is no checkpoint refused the whole batch as 'not visible on node ...;
    put local checkpoints on shared storage': it fails its own job, as locally. A folder that
    exists nowhere (a typo) is refused before anything is built, as locally; on Ray it was
    built at its turn, after the others."""
    (tmp_path / "empty").mkdir()
    typo = write(
        tmp_path / "typo.yaml", f"output_root: out\njobs:\n  - model: {TINY}\n  - model: {tmp_path / 'nothing'}\n"
    )
    assert batch(typo, "--executor", "ray") == 2
    assert f"no folder {tmp_path / 'nothing'} here nor on any node" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("*int4*"))
    path = write(
        tmp_path / "bad.yaml",
        f"output_root: out\njobs:\n  - model: {TINY}\n    output: good\n  - model: {tmp_path / 'empty'}\n",
    )
    assert batch(path, "--executor", "ray") == 1
    s = summary(tmp_path / "out", "bad")
    empty = s["by_name"]["empty-int4-cpu"]
    assert empty["status"] == "failed" and "config.json" in empty["error"] and empty["attempts"] == 1
    assert s["by_name"]["good"]["status"] == "built"  # failure isolation
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["bad-summary.json", "bad-summary.md", "good"]


def test_a_job_too_large_for_every_node_is_refused_up_front(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(batch_ray, "BASE_BYTES", 1e15)  # as if the model needed a petabyte
    path = write(tmp_path / "big.yaml", f"output_root: out\njobs:\n  - model: {TINY}\n    output: big\n")
    assert batch(path, "--executor", "ray") == 2
    err = capsys.readouterr().err
    assert "no node can run this job (nothing was built)" in err
    assert "big: needs 2 CPUs and 1000000." in err and "the largest node offers" in err
    assert not (tmp_path / "out").exists()


def test_sigterm_to_a_ray_batch_cancels_its_builds(tmp_path, pause_dir, cluster):
    """The driver as its own process, joining this cluster; SIGTERM reaches only the driver. a and b
    run (1 CPU each), c waits in Ray's queue for a CPU and d in the batch's: neither started."""
    import subprocess
    import sys

    path = write(
        tmp_path / "sig.yaml",
        f"output_root: out\ndefaults:\n  model: {TINY}\njobs:\n" + "".join(f"  - output: {n}\n" for n in "abcd"),
    )
    pause_dir.mkdir()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "builder", "batch", str(path), "--executor", "ray", "--ray-address", cluster]
            + ["--jobs", "3"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 120
        while not (pause_dir / "a.pid").exists() or not (pause_dir / "b.pid").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the build never paused"
            time.sleep(0.2)
        worker = int((pause_dir / "a.pid").read_text())
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=90)
    finally:
        shutil.rmtree(pause_dir)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr
    s = summary(tmp_path / "out", "sig")
    assert s["interrupted_by"] == "SIGTERM"
    assert s["counts"] == {"built": 0, "skipped": 0, "failed": 0, "interrupted": 4}
    for name in "cd":
        assert s["by_name"][name]["error"] == "not started: the batch was interrupted"
    time.sleep(1)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["sig-summary.json", "sig-summary.md"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the cancelled build's worker is gone
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"worker {worker} still runs the cancelled build")


def test_memory_estimate_follows_precision_verify_and_a_measured_peak(tmp_path):
    from builder.kit.checkpoint import Checkpoint
    from builder.kit.options import BuildOptions

    numel = {n: int(np.prod(s)) for n, s in Checkpoint(TINY).shapes().items()}
    params, table = sum(numel.values()), numel["model.embed_tokens.weight"]
    assert "lm_head.weight" not in numel  # tied

    def estimate(**options):
        return batch_ray.memory_estimate(BuildOptions(model=str(TINY), output=str(tmp_path / "none"), **options))

    # Weights stream, the int4 embedding too; only a float lm_head of its own is read whole
    # (the untied int4 embedding was counted as a float table after it had become int4).
    int4, how = estimate(precision="int4")
    assert int4 == int(0.5e9 + 0.2e9) and "streamed" in how
    fp32, how = estimate(precision="fp32")
    assert fp32 == int4  # tied: the lm_head reads the Gather's table
    own_head, how = estimate(precision="int4", float_layers=["lm_head"])
    assert own_head == int(0.7e9 + 8 * table) and "lm_head, transposed whole" in how
    verified, how = estimate(precision="fp32", verify=True)
    assert verified == int(fp32 + 0.3e9 + 13 * params) and "13 B x" in how and "for verify" in how
    report = tmp_path / "none" / "build_report.json"
    measured = {"options": {"precision": "int4", "ep": "cpu"}, "peak_rss_bytes": 100_000_000}
    fingerprint = Checkpoint(TINY).fingerprint(False)
    write(report, json.dumps({**measured, "checkpoint": {"fingerprint": fingerprint}}))
    assert estimate(precision="int4") == (125_000_000, "1.25 x the 0.10 GB its last build measured")
    # Built from other weights (the job's model changed): that peak says nothing of these.
    write(report, json.dumps({**measured, "checkpoint": {"fingerprint": "another checkpoint"}}))
    assert estimate(precision="int4") == (int4, "0.7 GB for a streamed int4 build")


def test_memory_estimate_finds_the_table_of_a_conditional_generation_checkpoint(checkpoint, tmp_path):
    """Qwen3.5's released checkpoints keep the embedding as model.language_model.embed_tokens.weight:
    a float lm_head of its own beside the int4 embedding was estimated at no table at all."""
    from builder.kit.checkpoint import Checkpoint
    from builder.kit.options import BuildOptions

    ckpt = checkpoint("qwen3_5")
    shapes = Checkpoint(ckpt).shapes()
    table = int(np.prod(shapes["model.language_model.embed_tokens.weight"]))
    options = BuildOptions(model=str(ckpt), output=str(tmp_path / "none"), precision="int4", float_layers=["lm_head"])
    estimate, how = batch_ray.memory_estimate(options)
    assert estimate == int(0.7e9 + 8 * table) and "lm_head, transposed whole" in how


def test_sigterm_while_ray_starts_up_is_not_ray_s_exit(tmp_path, cluster):
    """SIGTERM while the driver starts Ray ends the batch as it does while builds run (exit 143,
    no job started, the summary written); ray.init's handler made it exit with code 15 and a
    stack dump, and a signal raised inside Ray's start-up crashed ray.shutdown."""
    import subprocess
    import sys

    path = write(tmp_path / "one.yaml", f"output_root: out\ndefaults:\n  model: {TINY}\njobs:\n  - output: a\n")
    mark = tmp_path / "checking"
    driver = (  # marks the moment RayExecutor.check starts (ray.init done) and holds it there
        "import sys, time, pathlib; from builder import batch_ray; from builder.cli import main\n"
        "check = batch_ray.RayExecutor.check\n"
        "def marked(self, *a):\n"
        f"    pathlib.Path({str(mark)!r}).touch(); time.sleep(3); return check(self, *a)\n"
        "batch_ray.RayExecutor.check = marked\n"
        "sys.exit(main())\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", driver, "batch", str(path), "--executor", "ray", "--ray-address", cluster],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_file(mark, proc, "the driver never reached its check")
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "SIGTERM received" not in stderr and "Traceback" not in stderr
    jobs = json.loads((tmp_path / "out" / "one-summary.json").read_text())["jobs"]
    assert [(j["status"], j["error"]) for j in jobs] == [("interrupted", "not started: the batch was interrupted")]
    assert hidden(tmp_path / "out") == [] and not (tmp_path / "out" / "a").exists()


@pytest.mark.parametrize(
    "module, step",
    [
        ("ray._private.services", "start_raylet"),  # the raylet up, ray.init going on with the node
        ("ray._private.worker", "connect"),  # the driver just connected
    ],
)
def test_sigterm_inside_ray_init_stops_the_batch_and_its_ray_processes(tmp_path, module, step):
    """SIGTERM inside ray.init (a local instance starting) met ray.init's own handler, sys.exit(15):
    the batch exited 15 without a word, no summary, and the raylet's agents ran on without it. Just
    after connect, Ray's native crash handler printed a C++ stack dump for it as well."""
    import subprocess
    import sys

    path = write(tmp_path / "one.yaml", f"output_root: out\ndefaults:\n  model: {TINY}\njobs:\n  - output: a\n")
    driver = (  # the signal arrives as `step` returns, inside ray.init
        f"import os, signal, sys, time, {module} as where; from builder.cli import main\n"
        f"step = where.{step}\n"
        "def step_then_signal(*a, **k):\n"
        "    out = step(*a, **k); os.kill(os.getpid(), signal.SIGTERM); time.sleep(0.3); return out\n"
        f"where.{step} = step_then_signal\n"
        "sys.exit(main())\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", driver, "batch", str(path), "--executor", "ray"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},  # a local instance, started here
    )
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr and "SIGTERM: stopping once the executor has started" in stderr
    assert "SIGTERM received" not in stderr  # absl's stack dump
    jobs = json.loads((tmp_path / "out" / "one-summary.json").read_text())["jobs"]
    assert [(j["status"], j["error"]) for j in jobs] == [("interrupted", "not started: the batch was interrupted")]
    # Ray names its session folder after the driver's pid; no process of that session is left.
    session = f"_{proc.pid}/"
    time.sleep(1)
    left = [p for p in Path("/proc").glob("[0-9]*/cmdline") if session in _read(p)]
    assert left == [], [_read(p) for p in left]


def _read(path: Path) -> str:
    try:
        return path.read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_an_address_where_nothing_listens_is_one_line_at_once(tmp_path):
    """ray.init retried such an address for as long as it was left (10+ minutes), printing only
    its own warnings, and Ctrl-C took 45 s to end it. $RAY_ADDRESS is such an address too."""
    import subprocess
    import sys

    path = write(tmp_path / "one.yaml", f"jobs:\n  - model: {TINY}\n")
    with socket_nobody_listens() as port:
        address = f"127.0.0.1:{port}"
        for flag, env in ((["--ray-address", address], {}), ([], {"RAY_ADDRESS": address})):
            proc = subprocess.run(
                [sys.executable, "-m", "builder", "batch", str(path), "--executor", "ray", *flag],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
                env={**os.environ, **env},
            )
            assert proc.returncode == 2, proc.stderr
            assert f"nothing answers at {address}" in proc.stderr and "Traceback" not in proc.stderr


def test_a_gone_clusters_ray_start_record_is_not_joined(tmp_path, monkeypatch, cluster):
    """Without an address ray.init() joins the cluster that `ray start --head` last recorded in Ray's
    temp folder; one gone without `ray stop` (its machine rebooted, its processes killed) left the
    record, and the batch waited for it without end (a Ctrl-C took up to 40 s). Such a record is
    passed over (a local instance starts); a live one is joined, as Ray does."""
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    record = tmp_path / "ray" / "ray_current_cluster"
    assert batch_ray._stale_ray_start() is None  # no record: ray.init starts a local instance
    with socket_nobody_listens() as port:
        write(record, f"127.0.0.1:{port}")
        assert batch_ray._stale_ray_start() == f"127.0.0.1:{port}"
    write(record, cluster)
    assert batch_ray._stale_ray_start() is None


@contextlib.contextmanager
def socket_nobody_listens():
    """A local port that was free a moment ago: bound, then closed, so nothing listens there."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    yield port


def test_the_running_line_shows_a_ray_jobs_step(tmp_path, pause_dir, monkeypatch, capsys):
    """A Ray job's line had its time alone ('[running] s 40 s'), where a local job's has its step: the
    step now comes back from the worker through the run folder on the shared storage. The build
    pauses at its last step until the folder of the pause goes."""
    from builder.batch import Console

    monkeypatch.setattr(Console, "LOG_EVERY_S", 0.3)
    path = write(tmp_path / "s.yaml", f"output_root: out\njobs:\n  - model: {TINY}\n    output: s\n")
    pause_dir.mkdir()

    def release():
        deadline = time.monotonic() + 120
        while not (pause_dir / "s.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(2)  # some running lines while it pauses
        shutil.rmtree(pause_dir)

    thread = threading.Thread(target=release)
    thread.start()
    try:
        code = batch(path, "--executor", "ray")
    finally:
        thread.join()
        shutil.rmtree(pause_dir, ignore_errors=True)
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    running = [line for line in lines if line.startswith("[running]")]
    assert any(re.fullmatch(r"\[running\] s (\d+)/\1 done \d+ s", line) for line in running), lines
    assert summary(tmp_path / "out", "s")["by_name"]["s"]["status"] == "built"
    assert hidden(tmp_path / "out") == []  # the run folder and its step files went with the batch


def test_a_ray_jobs_step_file_holds_its_latest_step_whole_and_never_fails_the_build(tmp_path):
    steps = tmp_path / "steps" / "job"
    steps.parent.mkdir()
    report = batch_ray._StepFile(steps)
    assert batch_ray._latest_step(steps) is None  # before the first step
    for i in range(1, 4):
        report(i, 3, f"layer {i}/3")
    assert batch_ray._latest_step(steps) == (3, 3, "layer 3/3")
    assert [p.name for p in steps.parent.iterdir()] == ["job"]  # nothing left aside
    shutil.rmtree(steps.parent)  # the run folder gone (the batch ended): the build goes on
    report(4, 4, "done")
    steps.parent.mkdir()
    steps.write_text('[1, 3, "lay')  # a file cut short is no step
    assert batch_ray._latest_step(steps) is None


def test_a_job_starts_when_ray_runs_it_not_when_it_is_queued(tmp_path, capsys):
    """With more jobs submitted than the cluster's CPUs, every "start" line printed at once and
    the queued jobs' times counted their wait in Ray's queue."""
    path = write(
        tmp_path / "q.yaml",
        f"output_root: out\ndefaults: {{model: {TINY}}}\nmatrix:\n  precision: [int4, int8, fp16]\n",
    )
    capsys.readouterr()
    assert batch(path, "--executor", "ray", "--jobs", "3") == 0  # 1 CPU each on the 2-CPU cluster
    lines = [line.split()[1] for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert lines.count("start") == lines.count("built") == 3
    assert lines.index("built") < len(lines) - 1 - lines[::-1].index("start"), lines  # one waited for a CPU


def test_a_run_folder_left_by_a_killed_driver_is_swept(tmp_path):
    """kill -9 of a Ray batch's driver left .builder-batch-run-<hex>/ in output_root for good. Run
    folders are locked like staging folders: a free, marked one is removed by the next Ray batch;
    one a live driver holds is not."""
    from builder.output_dir import ALIVE_MARK, hold_working_folder

    out = tmp_path / "out"
    dead, live = out / ".builder-batch-run-dead0000", out / ".builder-batch-run-live0000"
    for folder in (dead, live):
        (folder / "attempts").mkdir(parents=True)
    (dead / ALIVE_MARK).touch()  # its driver marked it, and is gone: the lock is free
    held = hold_working_folder(live)
    try:
        path = write(tmp_path / "s.yaml", f"output_root: out\njobs:\n  - model: {TINY}\n    output: a\n")
        assert batch(path, "--executor", "ray") == 0
        assert not dead.exists() and (live / ALIVE_MARK).exists()
        assert hidden(out) == [live.name]
    finally:
        held.close()


def estimate_of(model, output, **options):
    from builder.kit.options import BuildOptions

    return batch_ray.memory_estimate(BuildOptions(model=str(model), output=str(output), **options))


def test_a_measured_peak_counts_only_for_a_build_of_the_same_ep_and_verify(tmp_path):
    """A peak recorded by another EP's build, or by a build without the verify this job runs
    (torch and the float32 model beside it), says nothing of this job's; a verified build's
    peak covers the same build without verify."""
    from builder.kit.checkpoint import Checkpoint

    out = tmp_path / "out"
    streamed = estimate_of(TINY, out, precision="int4")
    fingerprint = Checkpoint(TINY).fingerprint(False)

    def record(**report):
        report = {"peak_rss_bytes": 100_000_000, "checkpoint": {"fingerprint": fingerprint}, **report}
        write(out / "build_report.json", json.dumps(report))

    measured = (125_000_000, "1.25 x the 0.10 GB its last build measured")
    record(options={"precision": "int4", "ep": "webgpu"})
    assert estimate_of(TINY, out, precision="int4") == streamed
    record(options={"precision": "int4", "ep": "cpu"})
    _, how = estimate_of(TINY, out, precision="int4", verify=True)
    assert how.startswith("0.7 GB for a streamed int4 build") and how.endswith("for verify")
    record(options={"precision": "int4", "ep": "cpu"}, verify={"status": "passed"})
    assert estimate_of(TINY, out, precision="int4", verify=True) == measured
    assert estimate_of(TINY, out, precision="int4") == measured


def test_memory_estimate_of_verify_off_cpu_and_of_an_unreadable_checkpoint(tmp_path):
    """verify of a non-cpu build loads no model (it is not run there): no memory for it. A folder
    the driver cannot read as a checkpoint gets the base request; its build fails and says why."""
    streamed = estimate_of(TINY, tmp_path / "none", precision="int4")
    assert estimate_of(TINY, tmp_path / "none", precision="int4", ep="webgpu", verify=True) == streamed
    (tmp_path / "empty").mkdir()
    unreadable = estimate_of(tmp_path / "empty", tmp_path / "none", precision="int4")
    assert unreadable == (500_000_000, "checkpoint unreadable here; the build will say why")


def test_memory_estimate_reads_the_config_s_tie_and_the_largest_embedding(checkpoint, tmp_path, monkeypatch):
    """An lm_head.weight of its own is transposed whole in a float build, unless config.json ties it
    to the embedding (some tied checkpoints hold one too, which the build does not read). Of several
    embed_tokens tables the largest is the vocabulary's."""
    from builder.verify import verify_memory_bytes

    untied = checkpoint("qwen3-untied")
    table = int(np.prod(batch_ray._shapes(str(untied))["lm_head.weight"]))
    assert estimate_of(untied, tmp_path / "none", precision="fp32")[0] == int(0.7e9 + 8 * table)
    tied = shutil.copytree(untied, tmp_path / "tied")
    config = json.loads((tied / "config.json").read_text())
    write(tied / "config.json", json.dumps({**config, "tie_word_embeddings": True}))
    assert estimate_of(tied, tmp_path / "none", precision="fp32")[0] == int(0.7e9)
    # and verify's reference holds it once, tied to the embedding, as the build's own check counts it
    params = sum(int(np.prod(shape)) for shape in batch_ray._shapes(str(tied)).values()) - table
    verified = estimate_of(tied, tmp_path / "none", precision="fp32", verify=True)
    assert verified[0] == int(0.7e9) + verify_memory_bytes(params), verified

    shapes = {"model.language_model.embed_tokens.weight": (1000, 8), "mtp.embed_tokens.weight": (10, 8)}
    monkeypatch.setattr(batch_ray, "_shapes", lambda model: shapes)
    int4_head_of_its_own = estimate_of(
        tmp_path / "nowhere", tmp_path / "none", precision="int4", float_layers=["lm_head"]
    )
    assert int4_head_of_its_own[0] == int(0.7e9 + 8 * 8000)


def test_check_sizes_jobs_by_the_live_nodes_with_cpus(tmp_path, monkeypatch):
    """A build's threads are the cluster's CPUs split over --jobs, at most the largest node's (a task
    runs on one node); a job no node can hold is refused with what the largest node offers."""
    from types import SimpleNamespace

    from builder.kit.options import BuildOptions

    class Cluster:
        def nodes(self):
            return [
                {"Alive": True, "Resources": {"CPU": 4.0, "memory": 8e9}},
                {"Alive": True, "Resources": {"CPU": 4.0, "memory": 0.5e9}},
                {"Alive": False, "Resources": {"CPU": 64.0, "memory": 1e12}},  # gone
                {"Alive": True, "Resources": {"memory": 1e12}},  # a head without CPUs runs no build
            ]

    checked = []
    monkeypatch.setattr(batch_ray.RayExecutor, "_check_shared", lambda self, jobs, root, nodes: checked.append(nodes))
    executor = object.__new__(batch_ray.RayExecutor)
    executor.ray, executor.address, executor.interrupted = Cluster(), "head:6379", False
    jobs = [SimpleNamespace(name=n, options=BuildOptions(model=str(TINY), output=str(tmp_path / n))) for n in "ab"]
    for parallel, threads in ((1, 4), (4, 2), (16, 1)):
        executor.parallel = parallel
        executor.check(jobs, tmp_path)
        assert executor.threads == threads
    assert [len(nodes) for nodes in checked] == [2, 2, 2]
    monkeypatch.setattr(batch_ray, "BASE_BYTES", 10e9)
    with pytest.raises(batch_ray.BuilderError, match="no node can run these 2 jobs") as refused:
        executor.check(jobs, tmp_path)
    assert "the largest node offers 8.00 GB of Ray memory and 4 CPUs" in str(refused.value)


def test_a_checkpoint_only_the_driver_sees_is_refused_before_any_build(tmp_path):
    """The driver is often no node of the cluster: a local checkpoint found here, on no node (storage
    not shared), is refused up front; the nodes' probe reports a folder without config.json as missing."""

    class Probe:
        def options(self, **kwargs):
            return self

        def remote(self, probe, models):
            return probe, models

    class Cluster:  # one node: it sees output_root, and no model folder
        exceptions = ray.exceptions

        def remote(self, task):
            return Probe()

        def get(self, refs, timeout):
            return [{"node": "node1 (10.0.0.1)", "seen": Path(p).read_text(), "missing": m} for p, m in refs]

    from types import SimpleNamespace

    executor = object.__new__(batch_ray.RayExecutor)
    executor.ray, executor.started_here, executor.run_folder = Cluster(), False, None
    jobs = [SimpleNamespace(options=SimpleNamespace(model=str(TINY)))]
    try:
        with pytest.raises(batch_ray.BuilderError, match=f"model folder {TINY} is not visible on node node1"):
            executor._check_shared(jobs, tmp_path / "out", [{"NodeID": "ab" * 28}])
    finally:
        executor.close()
    (tmp_path / "empty").mkdir()
    probed = batch_ray._probe_task(str(tmp_path / "out" / "nothing"), [str(TINY), str(tmp_path / "empty")])
    assert probed["missing"] == [str(tmp_path / "empty")] and probed["seen"].startswith("cannot read it: ")


def test_ray_s_reports_of_retried_workers_are_left_out_and_its_others_go_to_stderr(monkeypatch):
    """Ray's driver prints the cluster's reports (pid 'raylet') into stdout: those of a worker's death
    and its retries, which the batch reports itself, are left out; any other goes to stderr."""
    import ray._private.worker as ray_worker

    shown = []
    monkeypatch.setattr(ray_worker, "print_to_stdstream", lambda data, *a, **k: shown.append(data))
    batch_ray._quiet_ray_reports()
    died = "A worker died or was killed while executing a task by an unexpected system error."
    retried = "Task 16310a0f0a45af5c failed. There are 2 retries remaining, so the task will be retried."
    ray_worker.print_to_stdstream({"pid": "raylet", "lines": [died, retried], "is_err": False})
    ray_worker.print_to_stdstream({"pid": "raylet", "lines": [died, "The node ran out of disk."], "is_err": False})
    ray_worker.print_to_stdstream({"pid": 4321, "lines": [died], "is_err": False})
    assert shown == [
        {"pid": "raylet", "lines": ["The node ran out of disk."], "is_err": True},
        {"pid": 4321, "lines": [died], "is_err": False},  # a task's own output, as Ray prints it
    ]


def test_an_address_is_probed_only_where_it_names_a_port(tmp_path):
    """'auto' and the like are ray.init's to resolve; a ray:// client address is probed at its port."""
    import socket

    assert batch_ray._unreachable("auto") is None
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert batch_ray._unreachable(f"ray://127.0.0.1:{port}") is None
        assert batch_ray._unreachable(f"127.0.0.1:{port}") is None
    assert batch_ray._unreachable(f"ray://127.0.0.1:{port}")  # closed now: nothing answers


def test_a_joining_driver_sends_the_token_it_has(monkeypatch):
    """A cluster started by recent Ray asks for a token; a driver sends its own (~/.ray/auth_token,
    $RAY_AUTH_TOKEN) only with RAY_AUTH_MODE=token, which the executor sets when it joins a cluster."""
    monkeypatch.setenv("RAY_AUTH_MODE", "")
    monkeypatch.delenv("RAY_AUTH_MODE")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "secret")
    batch_ray.RayExecutor(None, 1)  # a local instance (here: the one this process runs) needs none
    assert "RAY_AUTH_MODE" not in os.environ
    batch_ray.RayExecutor("head:6379", 1)
    assert os.environ["RAY_AUTH_MODE"] == "token"


def test_a_ray_agent_that_ignores_sigterm_is_killed():
    import subprocess
    import sys

    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        proc.stdout.readline()  # its handler is in place
        batch_ray._end_processes([proc.pid], grace_s=0.5)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()


def test_a_job_is_timed_from_when_its_first_attempt_marked_itself(tmp_path):
    """A job seen late is timed from its mark's age, not from when the driver saw it; a node whose
    clock runs ahead gives no start in the future."""
    mark = write(tmp_path / "mark", "")
    os.utime(mark, (time.time() - 100, time.time() - 100))
    assert 100 <= time.perf_counter() - batch_ray._started_at(mark) < 200
    os.utime(mark, (time.time() + 100, time.time() + 100))
    assert batch_ray._started_at(mark) <= time.perf_counter()


@pytest.mark.parametrize("share", [0.6, 0.4])
def test_ray_runs_at_once_only_the_builds_that_fit_a_node_s_memory(tmp_path, monkeypatch, share):
    """Each build asks Ray for its estimated memory: two jobs that each need 0.6 of the node's memory
    run one after the other though --jobs 2 and the node's 2 CPUs would take both; two of 0.4 each
    run side by side. The builds log their start and end, each waiting a while for the other's start."""
    from support.logged_families import events

    node_memory = ray.cluster_resources()["memory"]
    monkeypatch.setattr(batch_ray, "memory_estimate", lambda options: (int(share * node_memory), "a test's share"))
    path = write(
        tmp_path / "mem.yaml",
        f"output_root: out\ndefaults:\n  model: {TINY}\n  family: 'support.logged_families:LogsItsBuild'\n"
        "jobs:\n  - output: a\n  - output: b\n",
    )
    assert batch(path, "--executor", "ray", "--jobs", "2") == 0
    s = summary(tmp_path / "out", "mem")
    assert [j["memory_request_bytes"] for j in s["jobs"]] == [int(share * node_memory)] * 2
    log = events(tmp_path / "out")
    assert sorted(log) == ["end a", "end b", "start a", "start b"], log
    if share > 0.5:  # each ends before the other starts
        assert [e.split()[0] for e in log] == ["start", "end", "start", "end"], log
    else:
        assert [e.split()[0] for e in log[:2]] == ["start", "start"], log


def test_ray_is_asked_for_each_job_s_threads_and_memory_and_at_most_jobs_at_once(tmp_path, monkeypatch):
    """What run() asks of Ray, on a faked cluster of two 8-CPU nodes where --jobs 2 makes builds of
    8 threads: each task reserves the CPUs its build's threads use and its own memory estimate, and
    at most --jobs tasks are in Ray's hands at once (Ray would start any more that fit)."""
    from types import SimpleNamespace

    from builder.kit.options import BuildOptions

    estimates = {"a": 1e9, "b": 3e9, "c": 2e9, "d": 5e9, "e": 4e9}

    class Cluster:
        exceptions = ray.exceptions

        def __init__(self):
            self.submitted, self.in_flight, self.most_in_flight = [], [], 0

        def nodes(self):
            return [{"Alive": True, "Resources": {"CPU": 8.0, "memory": 64e9}} for _ in range(2)]

        def remote(self, **task_options):
            assert task_options == {"max_calls": 1}  # a fresh worker per job
            return lambda function: self

        def options(self, **asked):
            return SimpleNamespace(remote=lambda *args: self._submit(asked, args))

        def _submit(self, asked, args):
            ref = len(self.submitted)
            self.submitted.append((asked, args))
            self.in_flight.append(ref)
            self.most_in_flight = max(self.most_in_flight, len(self.in_flight))
            return ref

        def wait(self, refs, num_returns, timeout):  # the oldest task is done
            return refs[:1], refs[1:]

        def get(self, ref, timeout=None):
            self.in_flight.remove(ref)
            return {"status": "built"}

    monkeypatch.setattr(batch_ray, "memory_estimate", lambda options: (estimates[Path(options.output).name], "test"))
    monkeypatch.setattr(batch_ray.RayExecutor, "_check_shared", lambda self, jobs, root, nodes: None)
    executor = object.__new__(batch_ray.RayExecutor)
    executor.ray, executor.address, executor.interrupted, executor.parallel = Cluster(), "head:6379", False, 2
    jobs = [
        SimpleNamespace(name=n, options=BuildOptions(model=str(TINY), output=str(tmp_path / n)), result={})
        for n in estimates
    ]
    executor.check(jobs, tmp_path)
    executor.run_folder = tmp_path / "run"
    (executor.run_folder / "attempts").mkdir(parents=True)
    ended = []
    executor.run(jobs, lambda job: None, lambda job: ended.append(job.name), SimpleNamespace(signum=None))

    assert ended == list(estimates)
    assert executor.ray.most_in_flight == 2
    for (asked, (options, threads, *_)), (name, estimate) in zip(executor.ray.submitted, estimates.items()):
        assert Path(options["output"]).name == name
        assert (asked["num_cpus"], threads, asked["memory"]) == (8, 8, estimate), name
        assert asked["max_retries"] == batch_ray.MAX_RETRIES and asked["retry_exceptions"] is False
    assert [j.result["memory_request_bytes"] for j in jobs] == list(estimates.values())


def test_the_executors_benchmark_runs_a_batch_both_ways(cluster, tmp_path):
    """scripts/bench_batch_executors.py (docs/cluster.md's local-against-Ray figures) builds every
    job of a batch file under each executor, here joining this module's cluster; it reads the
    batch's summary, so a change to where batch writes it would break the script and this test.
    One job, not configs/tiny.yaml's three (55 s of the suite): tiny.yaml under both executors is
    test_ray_outputs_equal_the_local_executors_byte_for_byte's."""
    import subprocess
    import sys

    one = write(tmp_path / "one.yaml", f"output_root: out\ndefaults:\n  model: {TINY}\njobs:\n  - output: int4\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUILDER_TEST_PAUSE")}
    bench = [sys.executable, str(ROOT / "scripts" / "bench_batch_executors.py"), str(one)]
    run = subprocess.run(
        [*bench, "--repeat", "1", "--ray-address", cluster],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["run 1 local", "run 1 ray  ", "local", "ray  "], run.stdout
    assert all(", 1 built, sum of job times " in line for line in lines[:2]), run.stdout
    assert all(" over 1 runs (" in line for line in lines[2:]), run.stdout
