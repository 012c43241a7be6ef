"""The read-ahead (builder/kit/readahead.py): bounded in bytes, exact in what it hands
over, invisible in the output, and failures surface as they did without it."""

from __future__ import annotations

import errno
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from builder import BuilderError, BuildOptions
from builder.kit.checkpoint import RowRange
from builder.kit.errors import BuildInterrupted
from builder.kit.readahead import ReadAhead
from builder.pipeline import build
from support.synthetic import TINY_CONFIGS, make_checkpoint


def ranges(count: int, length: int) -> list[RowRange]:
    return [RowRange(f"t{i}", 0, length, Path("none"), 0, length, np.dtype(np.uint8), (length,)) for i in range(count)]


class CountingRead:
    """A stand-in for Checkpoint.read that counts the bytes read and not yet taken."""

    def __init__(self, ahead_by: int | None = None):
        self.lock = threading.Lock()
        self.outstanding = self.peak = 0
        self.order = []
        self.ahead_by, self.got_ahead = ahead_by, threading.Event()

    def __call__(self, where, buffer=None):
        with self.lock:
            self.outstanding += where.length
            self.peak = max(self.peak, self.outstanding)
            self.order.append(where.name)
            if self.ahead_by is not None and self.outstanding >= self.ahead_by:
                self.got_ahead.set()
        return np.full(where.shape, int(where.name[1:]) % 251, np.uint8)

    def taken(self, where):
        with self.lock:
            self.outstanding -= where.length


@pytest.mark.parametrize("bound", [1, 250, 1000])
def test_read_ahead_holds_at_most_its_bound(bound):
    schedule = ranges(40, 100)
    read = CountingRead(ahead_by=max(100, bound // 100 * 100))  # the whole reads the bound holds
    ahead = ReadAhead(schedule, bound, read=read).start()
    try:
        # A build that has not taken anything yet: the reader fills the bound, and no further
        # (60 s is a hang guard; the reader gets there at its own pace).
        assert read.got_ahead.wait(60), "the reader did not read ahead to its bound"
        for where in schedule:
            rows = ahead.take(where)
            read.taken(where)
            assert rows is not None and (rows == int(where.name[1:]) % 251).all()
    finally:
        ahead.close()
    # A read bigger than the bound goes alone; otherwise the bound holds, counting the
    # read in flight.
    assert read.peak <= max(bound, 100)
    assert ahead.peak_held <= max(bound, 100)
    if bound == 1000:
        assert read.peak > 100, "the reader should have read ahead"
    assert read.order == [w.name for w in schedule]
    assert (ahead.hits, ahead.misses) == (40, 0)


def test_read_ahead_follows_a_build_that_leaves_the_forecast():
    schedule = ranges(10, 10)
    read = CountingRead()
    ahead = ReadAhead(schedule, 30, read=read).start()
    try:
        assert ahead.take(schedule[0]) is not None
        unforeseen = ranges(20, 10)[15]
        assert ahead.take(unforeseen) is None  # not forecast: the build reads it itself
        assert ahead.take(schedule[4]) is not None  # skips 1-3
        assert ahead.take(schedule[2]) is None  # already passed
        for where in schedule[5:]:
            assert ahead.take(where) is not None
    finally:
        ahead.close()
    assert ahead._held == 0


def test_reader_errors_are_raised_where_the_build_reads():
    schedule = ranges(5, 10)

    def failing(where, buffer=None):
        if where.name == "t3":
            raise BuilderError("none ends inside tensor 't3'; the file is truncated: re-download it")
        return np.zeros(where.shape, np.uint8)

    ahead = ReadAhead(schedule, 1000, read=failing).start()
    try:
        for where in schedule[:3]:
            ahead.take(where)
        with pytest.raises(BuilderError, match="truncated"):
            ahead.take(schedule[3])
        assert ahead.take(schedule[4]) is not None
    finally:
        ahead.close()


def _report(out: Path) -> dict:
    return json.loads((out / "build_report.json").read_text())


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
def test_forecast_is_exact_and_bytes_unchanged(tmp_path, family):
    """The recording pass foresees every read of every family, and the data bytes
    are those of a build that reads as it goes."""
    ckpt = make_checkpoint(tmp_path / "ckpt", TINY_CONFIGS[family])
    precision = "int4"
    data = {}
    for mb in (0, 1):
        out = tmp_path / f"out{mb}"
        build(
            BuildOptions(model=str(ckpt), output=str(out), precision=precision, read_ahead_mb=mb), show_progress=False
        )
        data[mb] = (out / "model.onnx.data").read_bytes()
        report = _report(out)
        assert set(report["timings"]["phases"]) >= {"read", "read_wait", "quantize", "write"}
        if mb:
            stats = report["timings"]["read_ahead"]
            assert stats["misses"] == 0 and stats["hits"] == stats["forecast_reads"] > 0, stats
            assert stats["peak_held_bytes"] <= max(1 << 20, 0)
        else:
            assert "read_ahead" not in report["timings"]
    assert data[0] == data[1]


def test_file_truncated_during_the_build_is_one_error_and_nothing_is_left(tmp_path, monkeypatch):
    """The reader thread meets the truncation: the build fails with the error a build
    without read-ahead gives, and leaves no output."""
    import builder.pipeline as pipeline

    ckpt = make_checkpoint(tmp_path / "ckpt", TINY_CONFIGS["qwen3"])
    weights = ckpt / "model.safetensors"
    whole = weights.read_bytes()
    reading_ahead = pipeline.reading_ahead

    def truncate_then_read(*args, **kwargs):
        weights.write_bytes(whole[: len(whole) * 3 // 4])  # headers were parsed and checked before
        return reading_ahead(*args, **kwargs)

    monkeypatch.setattr(pipeline, "reading_ahead", truncate_then_read)
    messages = []
    for mb in (0, 256):
        weights.write_bytes(whole)
        out = tmp_path / f"out{mb}"
        with pytest.raises(BuilderError) as e:
            build(
                BuildOptions(model=str(ckpt), output=str(out), precision="int4", read_ahead_mb=mb), show_progress=False
            )
        messages.append(str(e.value))
        assert not out.exists() and not list(tmp_path.glob(".builder-staging-*"))
    assert "truncated" in messages[1] and "\n" not in messages[1]
    assert messages[0] == messages[1]
    assert not [t for t in threading.enumerate() if t.name == "builder-read-ahead"]


def test_interrupted_build_stops_the_reader_and_the_writer(tmp_path, monkeypatch):
    import builder.kit.linear as linear

    ckpt = make_checkpoint(tmp_path / "ckpt", TINY_CONFIGS["qwen3"])
    calls = []
    quantize = linear.quant.quantize

    def interrupt_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return quantize(*args, **kwargs)

    monkeypatch.setattr(linear.quant, "quantize", interrupt_on_third)
    out = tmp_path / "out"
    with pytest.raises(BuildInterrupted):
        build(BuildOptions(model=str(ckpt), output=str(out), precision="int4"), show_progress=False)
    assert not out.exists() and not list(tmp_path.glob(".builder-staging-*"))
    assert not [t for t in threading.enumerate() if t.name in ("builder-read-ahead", "builder-write-behind")]


def test_pooled_buffers_are_reused_only_when_let_go(tmp_path):
    """The reader reuses its memory, but never under rows the build still holds."""
    from builder.kit.checkpoint import Checkpoint

    data = np.random.default_rng(0).integers(0, 256, 64 * 1000, dtype=np.uint8).tobytes()
    path = tmp_path / "blob"
    path.write_bytes(data)
    schedule = [RowRange(f"t{i}", 0, 1000, path, i * 1000, 1000, np.dtype(np.uint8), (1000,)) for i in range(64)]
    kept = []
    ahead = ReadAhead(schedule, 4000, read=Checkpoint.read).start()
    try:
        for i, where in enumerate(schedule):
            rows = ahead.take(where)
            assert rows.tobytes() == data[i * 1000 : (i + 1) * 1000]
            if i % 2:
                kept.append((i, rows))  # held on to: its buffer must not be read into again
            del rows
    finally:
        ahead.close()
    for i, rows in kept:
        assert rows.tobytes() == data[i * 1000 : (i + 1) * 1000], i
    # the let-go half was recycled: far fewer buffers than reads
    assert len(ahead._pool) <= 4000 // 1000 + 2


# ---- reading past the page cache (builder/kit/disk_io.py) -------------------------


def _uncached(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@pytest.mark.parametrize("where", ["cached", "uncached", "refused", "refused read"])
def test_reads_are_the_files_bytes_however_they_are_read(tmp_path, monkeypatch, where):
    """Cached bytes come from the cache, the rest with O_DIRECT (or through the cache
    where O_DIRECT is refused, at the open or at the read): the same bytes for any offset and length."""
    import builder.kit.disk_io as disk_io

    if where == "refused read":
        if not getattr(os, "O_DIRECT", 0):
            pytest.skip("no O_DIRECT here")
        import fcntl

        real_preadv = os.preadv

        def preadv(fd, buffers, offset, *flags):  # O_DIRECT opened, but the device wants more alignment
            if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
                raise OSError(errno.EINVAL, "Invalid argument")
            return real_preadv(fd, buffers, offset, *flags)

        monkeypatch.setattr(disk_io.os, "preadv", preadv)

    data = np.random.default_rng(1).integers(0, 256, 10 * disk_io.ALIGN + 123, dtype=np.uint8).tobytes()
    path = tmp_path / "blob"
    path.write_bytes(data)
    real_open = os.open
    direct_opens = []

    def open_(file, flags, *args):
        if flags & getattr(os, "O_DIRECT", 0):
            direct_opens.append(file)
            if where == "refused":
                raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(file, flags, *args)

    monkeypatch.setattr(disk_io.os, "open", open_)
    cases = [
        (0, len(data)),
        (8, 5000),
        (4096, 4096),
        (12344, 30000),
        (3, 100),
        (len(data) - 8, 8),
        (len(data) - 8, 100),
    ]
    for begin, length in cases:
        if where != "cached":
            _uncached(path)
        out, got = disk_io.read_range(path, begin, length)
        assert got == min(length, len(data) - begin)
        assert out[:got].tobytes() == data[begin : begin + got]
    if where == "cached":  # but the range past the end: a short cached read cannot tell it from a gap
        assert len(direct_opens) == 1
    elif hasattr(os, "O_DIRECT"):
        assert direct_opens  # (the page cache may keep a file's last page: not every read needs it)


@pytest.mark.parametrize("preadv", [True, False], ids=["preadv", "no preadv"])
def test_a_read_checks_that_the_file_is_still_the_one_its_header_described(tmp_path, monkeypatch, preadv):
    """FileChanged after the read where the file's size or mtime is not `expect` (Windows, without
    preadv, as well), and a buffer too small or unaligned for the range is refused, not read short."""
    import builder.kit.disk_io as disk_io

    if not preadv:
        monkeypatch.delattr(os, "preadv", raising=False)
    path = tmp_path / "blob"
    path.write_bytes(bytes(range(256)) * 64)
    st = os.stat(path)
    out, got = disk_io.read_range(path, 8, 100, expect=disk_io.identity(st))
    assert got == 100 and out.tobytes() == (bytes(range(256)) * 64)[8:108]
    for other in ((st.st_size + 1, st.st_mtime_ns), (st.st_size, st.st_mtime_ns + 1)):
        with pytest.raises(disk_io.FileChanged):
            disk_io.read_range(path, 8, 100, expect=other)
    for buffer in (disk_io.aligned_buffer(100), disk_io.aligned_buffer(100 + disk_io.SLACK + 1)[1:]):
        with pytest.raises(ValueError, match="ALIGN-aligned buffer of length \\+ SLACK bytes"):
            disk_io.read_range(path, 8, 100, buffer)


def test_checkpoint_read_of_an_uncached_file_reports_truncation(tmp_path):
    from builder.kit.checkpoint import Checkpoint

    path = tmp_path / "blob"
    path.write_bytes(bytes(range(256)) * 40)
    _uncached(path)
    where = RowRange("t", 0, 20, path, 64, 512, np.dtype(np.uint16), (20, 256 // 2 * 2 // 2))
    rows = Checkpoint.read(where._replace(length=20 * 256, shape=(20, 128)))
    assert rows.tobytes() == (bytes(range(256)) * 40)[64 : 64 + 20 * 256]
    with pytest.raises(BuilderError, match="truncated"):
        Checkpoint.read(where._replace(begin=9000, length=20 * 256, shape=(20, 128)))


def test_page_cache_option_reads_nothing_with_o_direct(tmp_path, monkeypatch):
    """--page-cache (set by batch for all but a checkpoint's last job) leaves the checkpoint in
    the cache for the next build: no O_DIRECT read, the same bytes."""
    import builder.kit.disk_io as disk_io
    from builder import BuildOptions
    from builder.pipeline import build
    from support.synthetic import TINY_CONFIGS, make_checkpoint

    ckpt = make_checkpoint(tmp_path / "ckpt", TINY_CONFIGS["qwen3"])
    real_open = os.open
    direct_opens = []

    def open_(file, flags, *args):
        if flags & getattr(os, "O_DIRECT", 0) and str(file).startswith(str(ckpt)):
            direct_opens.append(file)
        return real_open(file, flags, *args)

    monkeypatch.setattr(disk_io.os, "open", open_)
    outputs = {}
    for page_cache in (False, True):
        for f in ckpt.glob("*.safetensors"):
            _uncached(f)
        direct_opens.clear()
        out = tmp_path / f"out-{page_cache}"
        build(
            BuildOptions(model=str(ckpt), output=str(out), precision="int4", page_cache=page_cache), show_progress=False
        )
        outputs[page_cache] = (out / "model.onnx.data").read_bytes()
        if page_cache:
            assert not direct_opens
        elif hasattr(os, "O_DIRECT"):
            assert direct_opens
    assert outputs[False] == outputs[True]


def test_no_memory_for_a_buffer_stops_reading_ahead_not_the_build(tmp_path, monkeypatch, capfd):
    """The reader thread's MemoryError printed a thread traceback over a build that then
    succeeded; the build now reads for itself, with the same bytes."""
    import builder.kit.disk_io as disk_io

    ckpt = make_checkpoint(tmp_path / "ckpt", TINY_CONFIGS["qwen3"])
    plain = build(BuildOptions(model=str(ckpt), output=str(tmp_path / "plain"), read_ahead_mb=0), show_progress=False)
    real, calls = disk_io.aligned_buffer, []

    def scarce(size):
        if threading.current_thread().name == "builder-read-ahead":
            calls.append(size)
            if len(calls) > 2:
                raise MemoryError
        return real(size)

    monkeypatch.setattr(disk_io, "aligned_buffer", scarce)
    thread_errors = []  # pytest turns a thread's exception into a warning: stderr never shows it
    monkeypatch.setattr(threading, "excepthook", thread_errors.append)
    ahead = build(BuildOptions(model=str(ckpt), output=str(tmp_path / "ahead"), read_ahead_mb=1), show_progress=False)
    assert len(calls) > 2 and "Traceback" not in capfd.readouterr().err and not thread_errors
    assert (ahead.output / "model.onnx.data").read_bytes() == (plain.output / "model.onnx.data").read_bytes()
    assert _report(ahead.output)["timings"]["read_ahead"]["misses"] > 0


def test_a_forecast_cut_short_reads_ahead_less_and_builds_the_same_bytes(tmp_path, monkeypatch):
    """A recording pass that stops part way (its time budget spent, a family that fails on zeros)
    has not located every tensor the build reads: those must not be refused as unused up front."""
    import builder.kit.readahead as readahead

    ckpt = make_checkpoint(tmp_path / "ckpt", TINY_CONFIGS["qwen3"])
    plain = build(BuildOptions(model=str(ckpt), output=str(tmp_path / "plain"), read_ahead_mb=0), show_progress=False)
    real, notes = readahead.RecordingCheckpoint.note, []

    def note(self, *args, **kwargs):
        notes.append(args[0])
        if len(notes) > 5:
            raise readahead._Enough
        return real(self, *args, **kwargs)

    monkeypatch.setattr(readahead.RecordingCheckpoint, "note", note)
    ahead = build(BuildOptions(model=str(ckpt), output=str(tmp_path / "ahead"), read_ahead_mb=1), show_progress=False)
    assert (ahead.output / "model.onnx.data").read_bytes() == (plain.output / "model.onnx.data").read_bytes()
    stats = _report(ahead.output)["timings"]["read_ahead"]
    assert 0 < stats["forecast_reads"] <= 5 and stats["misses"] > 0, stats


@pytest.mark.parametrize("how", ["replaced", "written"])
@pytest.mark.parametrize("read_ahead_mb", [0, 256])
def test_a_shard_re_saved_during_the_build_fails_it(tmp_path, monkeypatch, how, read_ahead_mb):
    """A shard replaced (a re-save renames a new file over it) or written to after its header
    was read was read with the old header's offsets: a model mixing two checkpoints, no word."""
    import builder.kit.checkpoint as checkpoint

    config = TINY_CONFIGS["qwen3"]
    ckpt = make_checkpoint(tmp_path / "ckpt", config, shard_size_bytes=100_000)
    other = make_checkpoint(tmp_path / "other", config, seed=1, shard_size_bytes=100_000)
    shard = sorted(ckpt.glob("*.safetensors"))[-1]
    real, reads = checkpoint.Checkpoint.read, []

    def read(where, *args, **kwargs):
        reads.append(where)
        if len(reads) == 3:  # mid-build, after every header was read
            if how == "replaced":
                os.utime(other / shard.name, ns=(0, 0))  # saved later: made in the same clock tick here
                os.replace(other / shard.name, shard)
            else:
                with open(shard, "r+b") as f:
                    f.seek(-4, os.SEEK_END)
                    f.write(b"\x01\x02\x03\x04")
                os.utime(shard, ns=(0, 0))  # a coarse clock could leave the mtime as it was
        return real(where, *args, **kwargs)

    monkeypatch.setattr(checkpoint.Checkpoint, "read", staticmethod(read))
    out = tmp_path / "out"
    options = BuildOptions(model=str(ckpt), output=str(out), precision="int4", read_ahead_mb=read_ahead_mb)
    with pytest.raises(BuilderError, match=rf"{shard.name} changed while the build read it.*build again once"):
        build(options, show_progress=False)
    assert not out.exists()
