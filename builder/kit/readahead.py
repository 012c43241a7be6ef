"""Reading the checkpoint ahead of the build, bounded in bytes, and where a build's time goes.

A build reads every checkpoint byte once, so on a cold page cache its floor is the
disk. Reading, converting/quantizing and writing one chunk after another adds their
times; `ReadAhead` reads the next row chunks on one thread while the build works on
the current one (file reads and numpy release the GIL), holding at most `bound`
bytes that the build has not taken yet.

It has to know what comes next. The build's order is its graph walk's (embedding and
lm_head, then layer by layer), not the files' order, and only the walk knows it; so
`record_reads` runs the family's own walk once over a stand-in checkpoint that
answers every read with zeros and writes nothing, recording each (tensor, rows) read
in order. That costs milliseconds for a dense model (nodes only: quantization and
float conversion are skipped, see RecordingProjections). It is only a forecast: a
read the forecast did not foresee is read on the spot, forecast reads the build
skips are dropped, so the bytes built never depend on it, and any failure of the
recording pass only means no read-ahead. Except one: a read the checkpoint itself
refuses (a tensor it lacks, or holds in another shape or dtype) would stop the real
build at that point, after every weight before it was quantized, so the forecast
keeps it for the build to raise before it starts.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import numpy as np

from builder.kit import disk_io
from builder.kit.checkpoint import Checkpoint, RowRange
from builder.kit.errors import BuilderError
from builder.kit.progress import Phases

DEFAULT_BOUND = 256 * 1024 * 1024
# The recording pass stops here and keeps what it has (a family that computes on the
# weights it reads, e.g. MoE experts quantized per row, would otherwise compute twice).
RECORD_BUDGET_S = 2.0


class ReadAhead:
    """One thread reading the forecast `schedule` of RowRanges ahead of the build.

    `take(where)` hands over the rows if they are the next forecast read (or a later
    one: the reads in between are dropped), waiting for the reader if it is not
    there yet; None means "not forecast", and the caller reads them itself. A read
    error is kept with its rows and raised by `take`, in the build's thread, at the
    point the build would have read them.
    """

    def __init__(
        self, schedule: list[RowRange], bound: int = DEFAULT_BOUND, phases: Phases | None = None, read=Checkpoint.read
    ):
        self.schedule = list(schedule)
        self.bound = max(1, int(bound))
        self.phases = phases or Phases()
        self._read = read
        self._positions: dict[tuple, list[int]] = defaultdict(list)
        for pos, where in enumerate(self.schedule):
            self._positions[where.key].append(pos)
        self._cond = threading.Condition()
        self._ready: dict[int, tuple[np.ndarray | None, BaseException | None]] = {}
        self._next = 0  # the first schedule position the build has not taken or skipped
        self._held = 0  # bytes read or being read and not yet taken
        self.peak_held = 0
        self.hits = self.misses = 0
        self._closed = False
        self._reader_done = False
        self._pool: list[np.ndarray] = []
        largest = max((w.length for w in self.schedule), default=0)
        self._buffer_bytes = largest + disk_io.SLACK
        # The bound's worth plus what the build holds (its current rows, the next ones).
        self._pool_size = max(2, (self.bound + 2 * largest) // self._buffer_bytes)
        self._thread = threading.Thread(target=self._run, name="builder-read-ahead", daemon=True)

    def start(self) -> ReadAhead:
        self._thread.start()
        return self

    # ---- the reader thread ----------------------------------------------------

    def _run(self) -> None:
        try:
            for pos, where in enumerate(self.schedule):
                with self._cond:
                    # Held bytes stay within the bound; one read bigger than it goes alone.
                    while (
                        not self._closed and pos >= self._next and self._held and self._held + where.length > self.bound
                    ):
                        self._cond.wait()
                    buffer = self._free_buffer()
                    while buffer is None and not self._closed and pos > self._next:
                        self._cond.wait(0.005)  # the build lets go of rows without a word: look again soon
                        buffer = self._free_buffer()
                    if self._closed:
                        return
                    if pos < self._next:
                        continue  # the build went past it
                    if buffer is None:  # the build holds the whole pool and needs this read next
                        buffer = disk_io.aligned_buffer(self._buffer_bytes)
                    self._held += where.length
                    self.peak_held = max(self.peak_held, self._held)
                t = time.perf_counter()
                try:
                    data, error = self._read(where, buffer), None
                except BaseException as e:  # raised by take(), in the build's thread
                    data, error = None, e
                self.phases.add("read", time.perf_counter() - t)
                del buffer
                with self._cond:
                    if pos < self._next:
                        self._held -= where.length
                    else:
                        self._ready[pos] = (data, error)
                    self._cond.notify_all()
        except MemoryError:
            # No memory for another buffer: stop reading ahead. The build reads for itself
            # (take() sees _reader_done), instead of a thread traceback on a good build.
            pass
        finally:
            with self._cond:
                self._reader_done = True
                self._cond.notify_all()

    def _free_buffer(self) -> np.ndarray | None:
        """A pooled buffer no rows refer to any more, or a new one while the pool has room.

        Fresh memory for each read would be mapped and zeroed page by page by the kernel
        (malloc hands a thread large blocks from mmap): seconds of system time for a 4B
        model. All pooled buffers have the size of the largest read, so any free one
        fits any read. A buffer is free when no view of it is left: views share its
        base, so only the buffer and getrefcount's argument refer to that.
        """
        for buffer in self._pool:
            if sys.getrefcount(buffer.base) == 2:
                return buffer
        if len(self._pool) < self._pool_size:
            self._pool.append(disk_io.aligned_buffer(self._buffer_bytes))
            return self._pool[-1]
        return None

    # ---- the build's side -------------------------------------------------------

    def take(self, where: RowRange) -> np.ndarray | None:
        t = time.perf_counter()
        with self._cond:
            pos = next((p for p in self._positions.get(where.key, ()) if p >= self._next), None)
            if pos is None:
                self.misses += 1
                return None
            for skipped in range(self._next, pos):
                self._drop(skipped)
            self._next = pos  # what the reader must not skip while the build waits for it
            self._cond.notify_all()
            while pos not in self._ready and not self._reader_done:
                self._cond.wait()
            entry = self._ready.pop(pos, None)
            if entry is not None:
                self._held -= where.length
            self._next = pos + 1
            self._cond.notify_all()
        self.phases.add("read_wait", time.perf_counter() - t)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        data, error = entry
        if error is not None:
            raise error
        return data

    def _drop(self, pos: int) -> None:
        if self._ready.pop(pos, None) is not None:
            self._held -= self.schedule[pos].length

    def describe(self) -> dict:
        return {
            "bound_bytes": self.bound,
            "forecast_reads": len(self.schedule),
            "hits": self.hits,
            "misses": self.misses,
            "peak_held_bytes": self.peak_held,
        }

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._ready.clear()
            self._cond.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)


@contextlib.contextmanager
def reading_ahead(
    checkpoint: Checkpoint, schedule: list[RowRange], bound: int = DEFAULT_BOUND, phases: Phases | None = None
):
    """Attach a ReadAhead to `checkpoint` for the duration of the block."""
    if not schedule or bound <= 0:
        yield None
        return
    ahead = ReadAhead(schedule, bound, phases, functools.partial(Checkpoint.read, page_cache=checkpoint.page_cache))
    ahead.start()
    checkpoint.ahead = ahead
    try:
        yield ahead
    finally:
        checkpoint.ahead = None
        ahead.close()


# ---- forecasting the reads -----------------------------------------------------------


class _Enough(Exception):
    """The recording pass ran out of its time budget."""


class RecordingCheckpoint:
    """Stands in for a Checkpoint in the recording pass: checks each read like the
    real one, records where it lies, and answers with zeros (calloc'd: untouched pages
    cost nothing)."""

    def __init__(self, real: Checkpoint, budget_s: float = RECORD_BUDGET_S):
        self._real = real
        self.reads: list[RowRange] = []
        self.refusal: BuilderError | None = None  # the checkpoint's refusal of a read, as the build would meet it
        self._deadline = time.perf_counter() + budget_s

    def __getattr__(self, name):
        return getattr(self._real, name)

    def note(self, name, start, stop, expect_shape=None) -> RowRange:
        """Record a read whose rows the caller does not look at (`name` may be a linear.RowSlice)."""
        if time.perf_counter() > self._deadline:
            raise _Enough
        from builder.kit.linear import RowSlice

        if isinstance(name, RowSlice):
            self._locate(name.tensor, 0, 0, name.tensor_shape)
            stop = name.stop if stop is None else min(name.start + stop, name.stop)
            return self.note(name.tensor, name.start + start, stop)
        where = self._locate(name, start, stop, expect_shape)
        if where.length:
            self.reads.append(where)
        return where

    def _locate(self, *args) -> RowRange:
        try:
            return self._real.locate(*args)
        except BuilderError as e:
            self.refusal = e
            raise

    def rows(self, name, start, stop, expect_shape=None):
        where = self.note(name, start, stop, expect_shape)
        # uint8 zeros come from calloc (a custom dtype such as bfloat16 would be filled)
        return np.zeros(where.length, np.uint8).view(where.dtype).reshape(where.shape)

    def tensor(self, name, expect_shape=None):
        return self.rows(name, 0, None, expect_shape)


class RecordingProjections:
    """Mixed in before a family's Projections for the recording pass: the same reads,
    without quantizing, converting or writing weights."""

    def quantized_weight(self, name, tensors, fmt, shapes):
        from builder.kit.linear import QuantizedTensor

        for tensor, shape in zip(tensors, shapes):
            self.checkpoint.note(tensor, 0, 0, expect_shape=shape)
        for tensor, start, stop in self.row_chunks(tensors, shapes, shapes[0][1]):
            self.checkpoint.note(tensor, start, stop)
        zero_points = None if fmt.symmetric else f"{name}.qzeros"
        return QuantizedTensor(
            f"{name}.qweight", f"{name}.scales", zero_points, sum(s[0] for s in shapes), shapes[0][1], fmt
        )

    def float_initializer(self, name, tensor, shape):
        self.checkpoint.note(tensor, 0, 0, expect_shape=shape)
        for tensor_, start, stop in self.row_chunks([tensor], [shape], int(np.prod(shape[1:]))):
            self.checkpoint.note(tensor_, start, stop)
        return name

    def matmul(self, x, name, tensors, shapes, fmt, biases=None):
        if fmt.quantized:
            return super().matmul(x, name, tensors, shapes, fmt, biases)
        for tensor, shape in zip(tensors, shapes):
            self.checkpoint.note(tensor, 0, None, expect_shape=shape)
        for tensor, shape in zip(biases or [], shapes):
            self.checkpoint.note(tensor, 0, None, expect_shape=(shape[0],))
        return self.graph.op("MatMul", [x, name.lstrip("/").replace("/", ".") + ".weight"], name + "/MatMul")


class _NullData:
    path = Path("recording.data")
    offset = 0

    def append(self, chunks):
        for _ in chunks:
            pass
        return 0, 0


class Forecast(NamedTuple):
    reads: list[RowRange]  # in the order the build will make them
    complete: bool  # the walk reached its end: every tensor the build reads has been located
    # What ended the walk, where it was the checkpoint refusing a read: the build would end there too.
    refusal: BuilderError | None = None


def record_reads(arch, graph_type, progress) -> Forecast:
    """The checkpoint reads `arch.build_graph` will make, in order (see the module doc).

    Runs on a shallow copy of the family object with a recording checkpoint and
    projections; whatever goes wrong (or past RECORD_BUDGET_S) ends the forecast
    where it got to: the real build reports its own errors, but for the checkpoint's
    refusal of a read (Forecast.refusal), which it raises before it starts.
    """
    import copy

    recording = RecordingCheckpoint(arch.checkpoint)
    dry = copy.copy(arch)
    dry.checkpoint = recording
    dry.warnings = list(getattr(arch, "warnings", []))
    base = arch.projections
    dry.projections = type(f"Recording{base.__name__}", (RecordingProjections, base), {})
    try:
        dry.build_graph(graph_type(_NullData()), progress)
    except Exception as e:
        # Only the checkpoint's own refusal: a family may fail on the zeros it is handed, where real
        # weights build.
        return Forecast(recording.reads, False, e if e is recording.refusal else None)
    return Forecast(recording.reads, True)
