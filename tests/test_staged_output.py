"""Signals and failures at every step of staged_output: the output is complete or absent, the
previous build stays until a new one replaces it, and nothing named .builder-staging-* is left.
Each test sends real signals to this process at a chosen point."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import sys

import pytest

from builder import output_dir
from builder.kit.errors import BuilderError, BuildInterrupted
from builder.output_dir import REPORT_NAME, staged_output


def previous_build(out):
    out.mkdir()
    (out / REPORT_NAME).write_text("{}")
    (out / "model.onnx").write_bytes(b"old")


@contextlib.contextmanager
def held_elsewhere(folder):
    """`folder`'s lock held by another live process (a build in another container, say) while inside."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX); "
            "print('held', flush=True); sys.stdin.read()",
            str(folder),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        yield
    finally:
        holder.communicate("")


def leftovers(tmp_path):
    return sorted(p.name for p in tmp_path.glob(".builder-staging-*"))


def without_exchange(monkeypatch, code=errno.EINVAL):
    """This machine as one whose kernel, libc or file system refuses renameat2's RENAME_EXCHANGE."""

    def refused(src, dst, flags):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(output_dir, "_renameat2", refused)


def signal_then(call, *sigs):
    def wrapped(*args, **kwargs):
        for sig in sigs:
            os.kill(os.getpid(), sig)
        return call(*args, **kwargs)

    return wrapped


@pytest.mark.parametrize(
    "first, second",
    [
        (signal.SIGTERM, signal.SIGTERM),  # a batch job's parent-death signal, once per thread of the batch
        (signal.SIGINT, signal.SIGINT),  # an impatient second Ctrl-C
        (signal.SIGTERM, signal.SIGINT),
        (signal.SIGINT, signal.SIGHUP),
    ],
)
def test_a_second_signal_does_not_cut_the_cleanup_short(tmp_path, monkeypatch, first, second):
    out = tmp_path / "out"
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    with pytest.raises((BuildInterrupted, KeyboardInterrupt)) as stopped:
        with staged_output(out, overwrite=False) as staging:
            for i in range(20):
                (staging / f"part{i}").write_bytes(b"partial")
            monkeypatch.setattr(output_dir.shutil, "rmtree", signal_then(shutil.rmtree, second))
            os.kill(os.getpid(), first)
    monkeypatch.undo()
    assert stopped.type is BuildInterrupted and stopped.value.exit_code == 128 + first
    assert not out.exists() and leftovers(tmp_path) == []
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_a_signal_while_a_failed_build_is_cleaned_up_keeps_its_error(tmp_path, monkeypatch):
    out = tmp_path / "out"
    with pytest.raises(BuilderError) as failed:
        with staged_output(out, overwrite=False) as staging:
            (staging / "model.onnx.data").write_bytes(b"partial")
            monkeypatch.setattr(output_dir.shutil, "rmtree", signal_then(shutil.rmtree, signal.SIGTERM))
            raise BuilderError("writing model.onnx.data failed (No space left on device)")
    monkeypatch.undo()
    assert "No space left" in str(failed.value) and not isinstance(failed.value, BuildInterrupted)
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "when",
    ["swapping the folders", "before the first rename", "between the renames", "removing the old build"],
)
def test_a_signal_while_publishing_lets_the_new_build_land(tmp_path, monkeypatch, when):
    """Once the output is complete, a stop waits the few steps it takes to put it in place;
    before, a rebuild stopped there left the old build half-deleted or the output missing."""
    out = tmp_path / "out"
    previous_build(out)
    renames = []
    rename, rmtree, renameat2 = os.rename, shutil.rmtree, output_dir._renameat2

    def renaming(src, dst):
        renames.append(src)
        if (when, len(renames)) in {("before the first rename", 1), ("between the renames", 2)}:
            os.kill(os.getpid(), signal.SIGTERM)
        rename(src, dst)

    monkeypatch.setattr(output_dir.os, "rename", renaming)
    if "rename" in when:  # the two renames of a system without RENAME_EXCHANGE
        without_exchange(monkeypatch)
    if when == "swapping the folders":
        monkeypatch.setattr(output_dir, "_renameat2", signal_then(renameat2, signal.SIGTERM))
    if when == "removing the old build":
        monkeypatch.setattr(output_dir.shutil, "rmtree", signal_then(rmtree, signal.SIGTERM))
    with staged_output(out, overwrite=True) as staging:
        (staging / REPORT_NAME).write_text("{}")
        (staging / "model.onnx").write_bytes(b"new")
    monkeypatch.undo()
    assert (out / "model.onnx").read_bytes() == b"new" and leftovers(tmp_path) == []


def test_a_folder_made_at_the_output_while_publishing_is_not_replaced(tmp_path, monkeypatch):
    """The output was free when checked, and someone made an empty folder there before the rename:
    a plain rename replaces an empty folder without a word, so the build refuses it as it refuses
    any folder already there."""
    out = tmp_path / "out"
    rename, renameat2 = os.rename, output_dir._renameat2

    def made_first(call):
        def wrapped(src, dst, *flags):
            out.mkdir(exist_ok=True)
            return call(src, dst, *flags)

        return wrapped

    monkeypatch.setattr(output_dir.os, "rename", made_first(rename))
    monkeypatch.setattr(output_dir, "_renameat2", made_first(renameat2))
    with pytest.raises(BuilderError, match="already exists; pass --overwrite"):
        with staged_output(out, overwrite=False) as staging:
            (staging / "model.onnx").write_bytes(b"new")
    monkeypatch.undo()
    assert out.is_dir() and list(out.iterdir()) == [] and leftovers(tmp_path) == []


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("target", ["missing", "folder"])
def test_a_link_made_at_the_output_while_building_is_refused(tmp_path, monkeypatch, target, overwrite):
    """A symbolic link made at the output during the build (a link given as -o is followed before it
    begins): a dangling one was replaced even without --overwrite, and the link, swapped out, stayed
    under a staging name for good (the sweeps cannot rmtree a link); one to a folder got the
    abandoned-folder mark written into that folder."""
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    if target == "folder":
        elsewhere.mkdir()
    monkeypatch.setattr(output_dir, "_before_publish", lambda: out.symlink_to(elsewhere))
    with pytest.raises(BuilderError, match="became a symbolic link while the build ran"):
        with staged_output(out, overwrite=overwrite) as staging:
            (staging / "model.onnx").write_bytes(b"new")
    monkeypatch.undo()
    assert out.is_symlink() and os.readlink(out) == str(elsewhere) and leftovers(tmp_path) == []
    assert not elsewhere.exists() or list(elsewhere.iterdir()) == []


def test_a_first_publish_without_renameat2_renames(tmp_path, monkeypatch):
    out = tmp_path / "out"
    without_exchange(monkeypatch, errno.ENOSYS)
    with staged_output(out, overwrite=False) as staging:
        (staging / "model.onnx").write_bytes(b"new")
    monkeypatch.undo()
    assert (out / "model.onnx").read_bytes() == b"new" and leftovers(tmp_path) == []


def test_a_failed_publish_puts_the_previous_build_back(tmp_path, monkeypatch):
    out = tmp_path / "out"
    previous_build(out)
    without_exchange(monkeypatch)
    rename, calls = os.rename, []

    def second_fails(src, dst):  # output -> old, then staging -> output fails, then old -> output
        calls.append(src)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        rename(src, dst)

    monkeypatch.setattr(output_dir.os, "rename", second_fails)
    with pytest.raises(BuilderError, match="moving the finished build"):
        with staged_output(out, overwrite=True) as staging:
            (staging / "model.onnx").write_bytes(b"new")
    monkeypatch.undo()
    assert (out / "model.onnx").read_bytes() == b"old" and leftovers(tmp_path) == []
    assert not (out / output_dir.ALIVE_MARK).exists()  # the mark of a folder set aside went with it


def test_a_failed_swap_leaves_the_previous_build(tmp_path, monkeypatch):
    """An error other than those that mean "no swap here" fails the build, with nothing moved."""
    out = tmp_path / "out"
    previous_build(out)
    without_exchange(monkeypatch, errno.EIO)
    renames = []
    monkeypatch.setattr(output_dir.os, "rename", lambda src, dst: renames.append(src))
    with pytest.raises(BuilderError, match=r"moving the finished build into .*out failed \(Input/output error\)"):
        with staged_output(out, overwrite=True) as staging:
            (staging / "model.onnx").write_bytes(b"new")
    monkeypatch.undo()
    assert renames == [] and (out / "model.onnx").read_bytes() == b"old" and leftovers(tmp_path) == []


def test_staging_sweeps_take_only_their_own_outputs_folders(tmp_path):
    """`a`'s sweeps must not take `a-verify`'s live staging folder (the Ray executor removed it)."""
    from builder.batch_exec import remove_staging
    from builder.output_dir import remove_stale_staging

    dead = 2**22 + 12345  # above the default pid_max: no such process
    mine = tmp_path / f".builder-staging-a-verify-{os.getpid()}-0123abcd"
    dead_a = tmp_path / f".builder-staging-a-{dead}-89abcdef"
    live_a = tmp_path / f".builder-staging-a-{os.getpid()}-fedcba98"
    for folder in (mine, dead_a, live_a):
        folder.mkdir()
    remove_stale_staging(tmp_path / "a")
    assert leftovers(tmp_path) == sorted([mine.name, live_a.name])
    remove_staging(tmp_path / "a")
    assert leftovers(tmp_path) == [mine.name]


def test_an_ignored_sigint_stays_ignored(tmp_path):
    """A shell's background job inherits SIGINT ignored; a build must not start taking it."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with staged_output(tmp_path / "out", overwrite=False) as staging:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            (staging / "model.onnx").write_bytes(b"x")
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_after_publishing_still_exits_0_with_the_path(tmp_path, sig):
    """After the rename the default handlers came back, so a stop during the rest of the run
    (the interpreter's shutdown after --verify's torch takes ~0.7 s) exited -15 or 129, or
    printed a KeyboardInterrupt, over a complete output."""
    from pathlib import Path

    from support.synthetic import TINY_CONFIGS, make_checkpoint

    ckpt = make_checkpoint(tmp_path / "ckpt", TINY_CONFIGS["qwen3"])
    out = tmp_path / "out"
    script = (  # python -m builder, with a signal right after the build returns
        "import os, runpy, sys\n"
        "import builder.pipeline as p\n"
        "real = p.run\n"
        "def run(*a, **k):\n"
        "    result = real(*a, **k)\n"
        f"    os.kill(os.getpid(), {int(sig)})\n"
        "    return result\n"
        "p.run = run\n"
        f"sys.argv = ['builder', '-m', {str(ckpt)!r}, '-o', {str(out)!r}, '--quiet']\n"
        "runpy.run_module('builder', run_name='__main__', alter_sys=True)\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{root / 'tests'}"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and proc.stdout == f"{out}\n" and proc.stderr == "", (proc.returncode, proc.stderr)
    assert (out / REPORT_NAME).is_file() and leftovers(tmp_path) == []


def test_the_lock_decides_whatever_the_pid_says(tmp_path):
    """The pid alone misjudged other PID namespaces: a container retried after an OOM kill often
    has the dead build's pid (1, its own), which kept its folder forever, and a live build in
    another container has a pid not seen here, which lost its folder."""
    out = tmp_path / "out"
    mine, unseen = os.getpid(), 2**22 + 1  # in use here; above the kernel's PID_MAX_LIMIT, never alive
    dead = tmp_path / f"{output_dir.STAGING_PREFIX}out-{mine}-0000dead"  # marked, lock free
    unmarked = tmp_path / f"{output_dir.STAGING_PREFIX}out-{mine}-00000001"  # before its lock, or an old version
    live = tmp_path / f"{output_dir.STAGING_PREFIX}out-{unseen}-0000a11e"  # marked and locked elsewhere
    for folder in (dead, unmarked, live):
        folder.mkdir()
        (folder / "model.onnx.data").write_bytes(b"partial")
    for folder in (dead, live):
        (folder / output_dir.ALIVE_MARK).touch()
    with held_elsewhere(live):
        output_dir.remove_stale_staging(out)
        assert leftovers(tmp_path) == sorted([unmarked.name, live.name])
    output_dir.remove_stale_staging(out)  # its holder is gone now
    assert leftovers(tmp_path) == [unmarked.name]


def test_a_build_holds_its_staging_folder_and_publishes_without_the_mark(tmp_path):
    with staged_output(tmp_path / "out", overwrite=False) as staging:
        assert output_dir._lock_state(staging) == "held" and (staging / output_dir.ALIVE_MARK).is_file()
        output_dir.remove_stale_staging(tmp_path / "out")
        assert staging.is_dir()
        (staging / REPORT_NAME).write_text("{}")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [REPORT_NAME] and leftovers(tmp_path) == []


def test_an_output_name_near_the_file_systems_limit_builds(tmp_path):
    """Its staging folder's name (the output's plus ~35 characters) was too long, so legal
    names of 221-255 bytes were refused."""
    out = tmp_path / ("n" * 250)
    with staged_output(out, overwrite=False) as staging:
        assert len(staging.name) <= 255 and output_dir.staging_folders(out) == [(staging, os.getpid())]
        (staging / REPORT_NAME).write_text("{}")
    assert (out / REPORT_NAME).is_file() and leftovers(tmp_path) == []


def test_an_older_versions_folder_for_a_long_name_is_still_swept(tmp_path):
    """Before the shortened stem, names of 201-220 bytes had staging folders named after the
    whole name; one left by a SIGKILLed build of that version was never swept again."""
    out = tmp_path / ("n" * 210)
    dead = tmp_path / f"{output_dir.STAGING_PREFIX}{out.name}-{2**22 + 1}-0000dead"
    dead.mkdir()
    (dead / "model.onnx.data").write_bytes(b"partial")
    with staged_output(out, overwrite=False) as staging:
        assert not dead.exists() and staging.name != dead.name
        (staging / REPORT_NAME).write_text("{}")
    assert (out / REPORT_NAME).is_file() and leftovers(tmp_path) == []


def test_a_caller_of_main_gets_its_handlers_back(tmp_path):
    """Only `python -m builder` keeps noting signals after publishing: cli.main in a notebook
    or a test left Ctrl-C swallowed for every later build of the process."""
    from builder.cli import main
    from builder.pipeline import build
    from support.synthetic import TINY_CONFIGS, make_checkpoint

    ckpt = make_checkpoint(tmp_path / "ckpt", TINY_CONFIGS["qwen3"])
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    assert main(["-m", str(ckpt), "-o", str(tmp_path / "cli"), "--quiet"]) == 0
    assert {sig: signal.getsignal(sig) for sig in before} == before
    build(model=str(ckpt), output=str(tmp_path / "library"), show_progress=False)
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_the_program_ignores_stop_signals_once_main_returns(tmp_path):
    """Python's finalization resets Python-level handlers to SIG_DFL, so a signal during the
    shutdown after a published build (torch's takes ~0.7 s after --verify) still killed it with
    130/143. The program (python -m builder, onnx-builder) leaves them ignored as it ends; main()
    itself, which a notebook may call, gives Ctrl-C back."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    tiny = root / "examples" / "tiny-qwen3"
    script = (
        "import signal, sys\n"
        "from builder import cli\n"
        f"sys.argv = ['builder', '-m', {str(tiny)!r}, '-o', {str(tmp_path / 'a')!r}, '--quiet']\n"
        "assert cli.main(sys.argv[1:]) == 0 and signal.getsignal(signal.SIGINT) is signal.default_int_handler\n"
        f"sys.argv[4] = {str(tmp_path / 'b')!r}\n"
        "code = cli.program()\n"
        "stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)\n"
        "print(code, all(signal.getsignal(s) is signal.SIG_IGN for s in stops))\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{root / 'tests'}"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "0 True", proc.stdout


@pytest.mark.parametrize("swap", [True, False], ids=["exchange", "two renames"])
def test_every_file_is_on_disk_before_the_rename_publishes_it(tmp_path, monkeypatch, swap):
    """Only model.onnx.data was fsynced: after a power loss the rename could be on disk and
    model.onnx or the configs empty, a published output that is half-written."""
    events = []
    real_fsync, real_rename, real_renameat2 = os.fsync, os.rename, output_dir._renameat2

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def rename(src, dst):
        events.append(("rename", str(src), str(dst)))
        return real_rename(src, dst)

    def renameat2(src, dst, flags):
        events.append(("rename", os.fsdecode(src), os.fsdecode(dst)))
        return real_renameat2(src, dst, flags)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(output_dir, "_renameat2", renameat2)
    if not swap:
        without_exchange(monkeypatch)
    out = tmp_path / "out"
    previous_build(out)  # replacing an output: a swap, or two renames
    with staged_output(out, overwrite=True) as staging:
        (staging / "sub").mkdir()
        (staging / "model.onnx").write_bytes(b"model")
        (staging / "sub" / "config.json").write_text("{}")
        (staging / REPORT_NAME).write_text("{}")
    publish = next(i for i, e in enumerate(events) if e[0] == "rename" and e[2] == str(out))
    synced = {e[1] for e in events[:publish] if e[0] == "fsync"}
    for name in ("model.onnx", "sub/config.json", REPORT_NAME, "sub", "."):
        assert os.path.normpath(str(staging / name)) in synced, name
    assert ("fsync", str(tmp_path)) in events[publish:]  # the rename itself


def test_a_file_system_that_refuses_fsync_still_publishes(tmp_path, monkeypatch):
    import errno

    def refused(fd):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "fsync", refused)
    out = tmp_path / "out"
    with staged_output(out, overwrite=False) as staging:
        (staging / "model.onnx").write_bytes(b"model")
    assert (out / "model.onnx").read_bytes() == b"model"


def test_a_failed_fsync_fails_the_build_and_leaves_nothing(tmp_path, monkeypatch):
    import errno

    def failed(fd):
        raise OSError(errno.EIO, "Input/output error")

    out = tmp_path / "out"
    with pytest.raises(BuilderError, match=r"writing the finished build to disk failed \(Input/output error: .*"):
        with staged_output(out, overwrite=False) as staging:
            (staging / "model.onnx").write_bytes(b"model")
            monkeypatch.setattr(os, "fsync", failed)
    assert not out.exists() and not leftovers(tmp_path)


def test_replacing_an_output_swaps_the_folders_and_it_is_never_absent(tmp_path, monkeypatch):
    """--overwrite renamed the old build aside, then the new one into place: a kill between the
    two left neither at the output. On Linux the folders are swapped in one step."""
    out = tmp_path / "out"
    previous_build(out)
    steps = []

    def present(step):
        kept = (out / "model.onnx").read_bytes() if (out / "model.onnx").is_file() else None
        assert kept in (b"old", b"new"), f"{out} is absent {step}"
        steps.append((step, kept))

    def spied(name, call):
        def spy(*args, **kwargs):
            present(f"before {name}")
            result = call(*args, **kwargs)
            present(f"after {name}")
            return result

        return spy

    for name in ("exchange", "sync_folder_quietly"):
        monkeypatch.setattr(output_dir, name, spied(name, getattr(output_dir, name, None)), raising=False)
    monkeypatch.setattr(output_dir.os, "rename", spied("os.rename", os.rename))
    monkeypatch.setattr(output_dir.shutil, "rmtree", spied("rmtree", shutil.rmtree))
    with staged_output(out, overwrite=True) as staging:
        (staging / REPORT_NAME).write_text("{}")
        (staging / "model.onnx").write_bytes(b"new")
    monkeypatch.undo()
    assert [s for s in steps if "exchange" in s[0]] == [("before exchange", b"old"), ("after exchange", b"new")]
    assert not [s for s in steps if "os.rename" in s[0]]  # the swap, not the two renames
    assert sorted(p.name for p in out.iterdir()) == ["build_report.json", "model.onnx"] and leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "refusal",
    [errno.EINVAL, errno.ENOSYS, errno.EXDEV, errno.EOPNOTSUPP, errno.EPERM, "no renameat2 in libc"],
)
def test_where_the_swap_is_refused_two_renames_replace_the_output(tmp_path, monkeypatch, refusal):
    out = tmp_path / "out"
    previous_build(out)
    if refusal == "no renameat2 in libc":  # glibc before 2.28, not Linux
        monkeypatch.setattr(output_dir, "_libc_renameat2", lambda: None)
    else:
        without_exchange(monkeypatch, refusal)
    renames, rename = [], os.rename
    monkeypatch.setattr(output_dir.os, "rename", lambda src, dst: renames.append(dst) or rename(src, dst))
    with staged_output(out, overwrite=True) as staging:
        (staging / REPORT_NAME).write_text("{}")
        (staging / "model.onnx").write_bytes(b"new")
    monkeypatch.undo()
    assert len(renames) == 2 and renames[1] == out
    assert (out / "model.onnx").read_bytes() == b"new" and leftovers(tmp_path) == []


@pytest.mark.parametrize("swap", [True, False], ids=["new build in place", "between the two renames"])
def test_a_publish_killed_halfway_leaves_nothing_a_later_build_keeps(tmp_path, swap):
    """A build killed (SIGKILL) while it replaces an output leaves the previous build under a
    staging name: once the new build is in place, or between the two renames of a system
    without the swap (the new one still in its staging folder, and no output). The next build
    sweeps both and publishes its own, even where a live process has the dead build's pid (a
    container's retry): the folder set aside was locked but never marked, so with its pid alive
    it was kept for good."""
    from pathlib import Path

    out = tmp_path / "out"
    previous_build(out)
    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from builder import output_dir\n"
        "def killed(*args, **kwargs):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        + (
            "output_dir.shutil.rmtree = killed\n"  # the old build swapped out, not yet removed
            if swap
            else "def refused(src, dst, flags):\n"
            "    raise OSError(22, 'Invalid argument')\n"
            "output_dir._renameat2 = refused\n"
            "rename = os.rename\n"
            "def second_killed(src, dst):\n"
            "    if Path(src).name != 'out':\n"
            "        killed()\n"
            "    rename(src, dst)\n"
            "output_dir.os.rename = second_killed\n"  # killed between the two renames
        )
        + "with output_dir.staged_output(Path(sys.argv[1]), overwrite=True) as staging:\n"
        "    (staging / 'build_report.json').write_text('{}')\n"
        "    (staging / 'model.onnx').write_bytes(b'new')\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{root / 'tests'}"}
    proc = subprocess.run(
        [sys.executable, "-c", script, str(out)], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    left = {(tmp_path / name / "model.onnx").read_bytes(): tmp_path / name for name in leftovers(tmp_path)}
    if swap:
        assert (out / "model.onnx").read_bytes() == b"new" and set(left) == {b"old"}
    else:
        assert not out.exists() and set(left) == {b"old", b"new"}
    # The folder set aside now carries a live pid (ours), as a retried container's build may.
    dead = dict(output_dir.staging_folders(out))[left[b"old"]]
    left[b"old"].rename(left[b"old"].with_name(left[b"old"].name.replace(f"-{dead}-", f"-{os.getpid()}-")))
    with staged_output(out, overwrite=True) as staging:
        (staging / REPORT_NAME).write_text("{}")
        (staging / "model.onnx").write_bytes(b"newer")
    assert (out / "model.onnx").read_bytes() == b"newer" and leftovers(tmp_path) == []


def test_a_file_at_the_output_is_named_as_a_file_with_or_without_overwrite(tmp_path):
    """Told only that the output "already exists; pass --overwrite", the user passed it and then met
    another error: a file is no folder a build replaces, whatever the flags."""
    out = tmp_path / "out"
    out.write_text("notes")
    for overwrite in (False, True):
        with pytest.raises(BuilderError, match=r"exists and is a file; choose another -o/--output$"):
            output_dir.check_output_free(out, overwrite=overwrite)
    assert out.read_text() == "notes"


def test_an_empty_folder_at_the_output_is_replaced_with_overwrite(tmp_path):
    """An empty folder (made ahead with mkdir) holds nothing the builder could destroy: --overwrite
    builds into it, where a folder with files and no build report is refused."""
    out = tmp_path / "out"
    out.mkdir()
    with staged_output(out, overwrite=True) as staging:
        (staging / REPORT_NAME).write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == [REPORT_NAME] and leftovers(tmp_path) == []


def test_an_output_ending_in_dot_dot_names_no_folder(tmp_path):
    """out/.. is the folder above out: a build would try to swap tmp_path itself into place."""
    (tmp_path / "a").mkdir()
    with pytest.raises(BuilderError, match=r"output '.*/a/\.\.' names no folder of its own"):
        output_dir.output_folder(tmp_path / "a" / "..")


def test_a_staging_folder_of_another_users_live_build_is_kept_where_flock_is_missing(tmp_path, monkeypatch):
    """Without flock the pid decides: kill(pid, 0) answering EPERM means a live process of another
    user, whose staging folder must not be removed under it."""
    out = tmp_path / "out"
    theirs = tmp_path / f"{output_dir.STAGING_PREFIX}out-4242-0000a11e"
    theirs.mkdir()
    (theirs / "model.onnx.data").write_bytes(b"partial")

    def not_yours(pid, sig):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(output_dir, "_lock_state", lambda folder: "unknown")
    monkeypatch.setattr(output_dir.os, "kill", not_yours)
    output_dir.remove_stale_staging(out)
    assert leftovers(tmp_path) == [theirs.name] and (theirs / "model.onnx.data").read_bytes() == b"partial"


def test_a_mount_point_at_the_output_is_refused_before_the_build(tmp_path, monkeypatch):
    """Its rename fails with EBUSY only once the build is finished: refused up front, with a folder
    inside it to pass instead."""
    out = tmp_path / "mnt"
    out.mkdir()
    (out / REPORT_NAME).write_text("{}")
    monkeypatch.setattr(output_dir.os.path, "ismount", lambda path: os.fspath(path) == os.fspath(out))
    with pytest.raises(BuilderError, match="is a mount point") as refused:
        output_dir.check_output_free(out, overwrite=True)
    assert f"pass a folder inside it, such as {out / 'my-model'}" in str(refused.value)


def test_a_finished_jobs_sweep_leaves_the_staging_folder_another_live_build_holds(tmp_path):
    """A Ray job over for good removed every staging folder of its output, also that of a live
    `python -m builder -o` of the same folder (the one the job was refused for): that build lost its
    files halfway."""
    from builder.batch_exec import remove_staging

    out = tmp_path / "out"
    dead = tmp_path / f"{output_dir.STAGING_PREFIX}out-{2**22 + 1}-0000dead"  # an attempt of the job, killed
    live = tmp_path / f"{output_dir.STAGING_PREFIX}out-{os.getpid()}-0000a11e"
    for folder in (dead, live):
        folder.mkdir()
        (folder / "model.onnx.data").write_bytes(b"partial")
        (folder / output_dir.ALIVE_MARK).touch()
    with held_elsewhere(live):
        remove_staging(out)
        assert leftovers(tmp_path) == [live.name] and (live / "model.onnx.data").read_bytes() == b"partial"
    remove_staging(out)  # its holder is gone now
    assert leftovers(tmp_path) == []
