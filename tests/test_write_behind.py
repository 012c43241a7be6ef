"""model.onnx.data written behind the build (builder/kit/data_file.py): the same bytes,
bounded memory, errors as one line with nothing left, and no thread left behind."""

from __future__ import annotations

import errno
import os
import threading

import numpy as np
import pytest

import builder.kit.data_file as data_file
from builder import BuilderError, BuildOptions
from builder.kit.data_file import ExternalDataFile
from builder.kit.disk_io import ALIGN
from builder.kit.errors import BuildInterrupted
from builder.pipeline import build
from support.synthetic import TINY_CONFIGS, make_checkpoint


def tensors(seed: int = 0) -> list[list[np.ndarray]]:
    """Tensors of chunks of awkward sizes: empty, odd, bigger than a block."""
    rng = np.random.default_rng(seed)
    sizes = [[1], [4095, 1], [0, 7], [3 * ALIGN + 5], [ALIGN], [2 * ALIGN, 1, 9999], [13]]
    return [[rng.integers(0, 256, n, dtype=np.uint8) for n in chunks] for chunks in sizes]


def expected_bytes(parts: list[list[np.ndarray]]) -> tuple[bytes, list[tuple[int, int]]]:
    """What the old in-line writer wrote: each tensor at a 4096-aligned offset, zeros between."""
    out, spans = b"", []
    for chunks in parts:
        out += bytes(-len(out) % ALIGN)
        data = b"".join(c.tobytes() for c in chunks)
        spans.append((len(out), len(data)))
        out += data
    return out, spans


@pytest.mark.parametrize("direct", [True, False, "refused at write"])
def test_bytes_and_offsets_are_those_written_in_line(tmp_path, monkeypatch, direct):
    if not direct:  # a file system that refuses O_DIRECT: through the page cache
        monkeypatch.setattr(data_file, "_O_DIRECT", 0)
    if direct == "refused at write":  # O_DIRECT opened, but the device wants more alignment
        if not getattr(os, "O_DIRECT", 0):
            pytest.skip("no O_DIRECT here")
        import fcntl

        real = data_file.os.pwritev

        def pwritev(fd, buffers, offset, *args):
            if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
                raise OSError(errno.EINVAL, "Invalid argument")
            return real(fd, buffers, offset, *args)

        monkeypatch.setattr(data_file.os, "pwritev", pwritev)
    parts = tensors()
    path = tmp_path / "model.onnx.data"
    f = ExternalDataFile(path, block=ALIGN, bound=2 * ALIGN)  # blocks smaller than some chunks
    f.FLUSH_EVERY = 2 * ALIGN  # the write-back started along the way (without O_DIRECT)
    assert f._direct == (direct and bool(os.O_DIRECT))
    spans = []
    for chunks in parts:
        spans.append(f.append(iter(chunks)))
        for c in chunks:
            c[:] = 0  # the caller reuses its buffers as soon as append returns
    f.close()
    want, want_spans = expected_bytes(tensors())
    assert path.read_bytes() == want
    assert spans == want_spans and f.offset == len(want)
    assert not f._writer.is_alive()
    if direct == "refused at write":
        assert not f._direct  # through the cache from the refused write on


def test_memory_is_bounded_in_blocks(tmp_path):
    """However far the build runs ahead of a slow disk, the writer has bound // block blocks, no more."""
    f = ExternalDataFile(tmp_path / "d", block=ALIGN, bound=3 * ALIGN)
    blocks = {id(b) for b in f._free}
    assert len(blocks) == 3
    real = f._write

    def slow_write(block, start, length):
        threading.Event().wait(0.002)
        blocks.add(id(block))
        real(block, start, length)

    f._write = slow_write
    data = np.arange(40 * ALIGN, dtype=np.uint8)
    f.append([data])
    f.close()
    assert len(blocks) == 3
    assert (tmp_path / "d").read_bytes() == data.tobytes()
    assert f.phases.report()["write_wait"] > 0  # the build waited for the disk instead of queueing more


def test_write_error_is_raised_by_the_build_as_one_line(tmp_path, monkeypatch):
    def full(fd, buffers, offset, *args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(data_file.os, "pwritev", full)
    f = ExternalDataFile(tmp_path / "d", block=ALIGN, bound=2 * ALIGN)
    with pytest.raises(BuilderError) as e:
        for _ in range(10):  # the error surfaces at a later append, once the writer met it
            f.append([np.zeros(ALIGN, np.uint8)])
        f.close()
    message = str(e.value)
    assert "No space left on device" in message and "free disk space" in message and "\n" not in message
    f.abort()
    assert not f._writer.is_alive()


def test_disk_full_mid_build_leaves_nothing(tmp_path, monkeypatch):
    ckpt = make_checkpoint(tmp_path / "ckpt", TINY_CONFIGS["qwen3"])
    real = data_file.os.pwritev
    writes = []

    def full_after_two(fd, buffers, offset, *args):
        writes.append(offset)
        if len(writes) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, buffers, offset, *args)

    monkeypatch.setattr(data_file.os, "pwritev", full_after_two)
    monkeypatch.setattr(data_file, "BLOCK", ALIGN)  # several blocks even for a tiny model
    out = tmp_path / "out"
    with pytest.raises(BuilderError, match=r"writing .*model.onnx.data failed \(No space left on device\); free disk"):
        build(BuildOptions(model=str(ckpt), output=str(out), precision="fp32"), show_progress=False)
    assert not out.exists() and not list(tmp_path.glob(".builder-staging-*"))
    assert not [t for t in threading.enumerate() if t.name == "builder-write-behind"]


def test_interrupt_before_the_first_weight_stops_the_writer(tmp_path, monkeypatch):
    import builder.pipeline as pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    ckpt = make_checkpoint(tmp_path / "ckpt", TINY_CONFIGS["qwen3"])
    out = tmp_path / "out"
    # Ctrl-C once the writer runs, before the first read; then during the forecast, before any
    # output or writer exists (as while hashing the checkpoint): the interrupt itself, nothing left.
    for where, stopped in (("reading_ahead", BuildInterrupted), ("record_reads", KeyboardInterrupt)):
        with monkeypatch.context() as m:
            m.setattr(pipeline, where, interrupted)
            with pytest.raises(stopped):
                build(BuildOptions(model=str(ckpt), output=str(out), precision="int4"), show_progress=False)
        assert not out.exists() and not list(tmp_path.glob(".builder-staging-*"))
        assert not [t for t in threading.enumerate() if t.name == "builder-write-behind"]


def test_build_report_has_the_writer_phases(tmp_path):
    import json

    ckpt = make_checkpoint(tmp_path / "ckpt", TINY_CONFIGS["qwen3"])
    out = tmp_path / "out"
    build(BuildOptions(model=str(ckpt), output=str(out), precision="int4"), show_progress=False)
    phases = json.loads((out / "build_report.json").read_text())["timings"]["phases"]
    assert set(phases) >= {"write", "write_copy", "write_wait", "write_sync"}


def test_without_the_unix_only_calls_a_build_writes_the_same_bytes(tmp_path, monkeypatch):
    """Windows has no os.preadv/pwritev/O_DIRECT (macOS no fdatasync): reads and writes fall back
    to plain positioned file I/O, and the model's bytes are the same."""
    import builder.kit.disk_io as disk_io

    ckpt = make_checkpoint(tmp_path / "ckpt", TINY_CONFIGS["qwen3"])
    build(BuildOptions(model=str(ckpt), output=str(tmp_path / "a"), precision="int4"), show_progress=False)
    for name in ("preadv", "pwritev", "fdatasync"):
        monkeypatch.delattr(os, name, raising=False)
    monkeypatch.setattr(data_file, "_O_DIRECT", 0)
    monkeypatch.setattr(disk_io, "_O_DIRECT", 0)
    monkeypatch.setattr(data_file, "_datasync", os.fsync)
    monkeypatch.setattr(data_file, "BLOCK", ALIGN)  # many positioned writes
    build(BuildOptions(model=str(ckpt), output=str(tmp_path / "b"), precision="int4"), show_progress=False)
    for name in ("model.onnx", "model.onnx.data"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


@pytest.mark.parametrize("refusal", [errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS])
def test_a_file_system_that_refuses_fsync_still_gets_the_model(tmp_path, monkeypatch, refusal):
    """Some mounts (FUSE, 9p, vboxsf) refuse fsync/fdatasync: a build there failed at the end with
    'writing model.onnx.data failed (Invalid argument)', where a plain write would have done."""
    ckpt = make_checkpoint(tmp_path / "ckpt", TINY_CONFIGS["qwen3"])
    build(BuildOptions(model=str(ckpt), output=str(tmp_path / "a"), precision="int4"), show_progress=False)
    datasyncs = []

    def refused(fd):
        raise OSError(refusal, os.strerror(refusal))

    def refused_datasync(fd):
        datasyncs.append(fd)
        refused(fd)

    monkeypatch.setattr(data_file.os, "fsync", refused)
    monkeypatch.setattr(data_file, "_datasync", refused_datasync)
    monkeypatch.setattr(data_file, "_O_DIRECT", 0)  # through the cache: the fdatasync along the way too
    monkeypatch.setattr(data_file, "BLOCK", ALIGN)
    monkeypatch.setattr(ExternalDataFile, "FLUSH_EVERY", ALIGN)
    build(BuildOptions(model=str(ckpt), output=str(tmp_path / "b"), precision="int4"), show_progress=False)
    assert len(datasyncs) == 1  # refused once, then not asked again
    for name in ("model.onnx", "model.onnx.data"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_a_failed_fsync_still_fails_the_build(tmp_path, monkeypatch):
    def failed(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(data_file.os, "fsync", failed)
    f = ExternalDataFile(tmp_path / "d", block=ALIGN, bound=2 * ALIGN)
    f.append([np.ones(10, np.uint8)])
    with pytest.raises(BuilderError, match=r"failed \(Input/output error\)"):
        f.close()


def finished(call, timeout: float = 60.0):
    """What `call()` raised (or None), run on a thread that must end within `timeout`: a writer
    error the build never hears of leaves it waiting for a free block, and a regression must fail
    here rather than hang the suite."""
    outcome = []

    def run():
        try:
            call()
        except BaseException as e:
            outcome.append(e)
        else:
            outcome.append(None)

    thread = threading.Thread(target=run, name="build-under-test", daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"the build still waits {timeout:.0f} s after its writer thread died"
    return outcome[0]


def test_a_build_waiting_for_a_free_block_hears_of_its_writer_dying(tmp_path, monkeypatch):
    """The writer holds every block and dies of an error that is no OSError while the build waits
    for one: the build must be woken with that error (the test above reaches this wait only by chance)."""
    import types

    build_waits = threading.Event()

    class Condition(threading.Condition):
        def wait(self, timeout=None):
            if threading.current_thread().name == "build-under-test":
                build_waits.set()
            return super().wait(timeout)

    def dies(fd, buffers, offset, *args):
        build_waits.wait(60)
        raise RuntimeError("bad buffer")

    monkeypatch.setattr(data_file, "threading", types.SimpleNamespace(Condition=Condition, Thread=threading.Thread))
    monkeypatch.setattr(data_file.os, "pwritev", dies)
    f = ExternalDataFile(tmp_path / "d", block=ALIGN, bound=2 * ALIGN)
    try:
        failure = finished(lambda: f.append([np.zeros(3 * ALIGN, np.uint8)]))  # a third block: waits
        waited = build_waits.is_set()
    finally:
        build_waits.set()  # lets the writer go, should the build not have waited
        f.abort()
    assert waited and type(failure) is RuntimeError and str(failure) == "bad buffer"


@pytest.mark.parametrize(
    "error, raised",
    [
        (RuntimeError("bad buffer"), RuntimeError),  # a bug: raised as it is, with its traceback
        (ValueError("memoryview: underlying buffer is not C-contiguous"), ValueError),
        (MemoryError(), MemoryError),  # the CLI's one line for running out of memory
        (KeyboardInterrupt(), BuildInterrupted),
    ],
    ids=["RuntimeError", "ValueError", "MemoryError", "KeyboardInterrupt"],
)
@pytest.mark.parametrize("when", ["first write", "after two writes"])
def test_any_error_in_the_writer_fails_the_build_and_leaves_nothing(
    tmp_path, monkeypatch, checkpoint, error, raised, when
):
    """Only OSError was caught in the writer thread: anything else ended it in silence. With blocks
    left to write the build then waited forever for a free one; with the whole model in one block
    (written at close) it published a model.onnx.data of zeros."""
    ckpt = checkpoint("qwen3")  # before the writes fail: making it writes through ExternalDataFile too
    real = data_file.os.pwritev
    writes = []

    def failing(fd, buffers, offset, *args):
        writes.append(offset)
        if when == "first write" or len(writes) > 2:
            raise error
        return real(fd, buffers, offset, *args)

    monkeypatch.setattr(data_file.os, "pwritev", failing)
    if when == "after two writes":  # more blocks than the writer has: the build must wait for one
        monkeypatch.setattr(data_file, "BLOCK", ALIGN)
        monkeypatch.setattr(data_file, "DEFAULT_BOUND", 2 * ALIGN)
    out = tmp_path / "out"
    options = BuildOptions(model=str(ckpt), output=str(out), precision="fp32")
    failure = finished(lambda: build(options, show_progress=False))
    assert type(failure) is raised, failure
    if raised is not BuildInterrupted:
        assert failure is error  # the writer's own exception, not a stand-in
    assert writes and not out.exists() and not list(tmp_path.glob(".builder-staging-*"))
    assert not [t for t in threading.enumerate() if t.name == "builder-write-behind"]


def test_running_out_of_memory_in_the_writer_is_the_clis_one_line(tmp_path, monkeypatch, checkpoint, capsys):
    from builder.cli import main

    ckpt = checkpoint("qwen3")

    def no_memory(fd, buffers, offset, *args):
        raise MemoryError

    monkeypatch.setattr(data_file.os, "pwritev", no_memory)
    out = tmp_path / "out"
    codes = []
    assert finished(lambda: codes.append(main(["-m", str(ckpt), "-o", str(out), "--quiet"]))) is None
    err = capsys.readouterr().err
    assert codes == [1] and err.startswith("error: out of memory;") and err.count("\n") == 1, err
    assert not out.exists() and not list(tmp_path.glob(".builder-staging-*"))
