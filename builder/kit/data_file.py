"""model.onnx.data, written behind the build by a thread of its own.

The build appends each weight's bytes once, in order. Writing them on the build's
thread added the write's time to the quantizer's; here `append` copies the bytes
into one of a few staging blocks and a writer thread writes full blocks while the
build goes on. The copy is also what makes handing bytes over safe: the callers'
arrays may be views of buffers that read-ahead or the quantizer reuse.

The blocks are written with O_DIRECT where the file system allows it: through the
page cache, writing 2 GB took 2.0 s of system time here (`dd`; 0.4 s with
oflag=direct), on a 2-core machine that quantizes on both (disk_io's note on reads
says the same). That
needs block-aligned memory, offsets and lengths: blocks are ALIGN-aligned and
written whole, and the last one, padded to a whole block, is cut back to the file's
size at close. Where O_DIRECT is refused, the writer writes through the cache and
starts the write-back every FLUSH_EVERY bytes, so the fsync at close finds little left.

Memory: at most `bound` bytes of blocks. A write error (a full disk) stops the
writer and is raised by the build's next append or by close, as one BuilderError.
Any other exception that ends the writer (MemoryError, a bug) is raised there as it
is: the build fails rather than waiting for a block or publishing a file with holes.
"""

from __future__ import annotations

import collections
import errno
import os
import stat
import threading
import time
from pathlib import Path

import numpy as np

from builder.kit.disk_io import ALIGN, aligned_buffer
from builder.kit.errors import BuilderError, write_failed
from builder.kit.progress import Phases

DEFAULT_BOUND = 64 << 20
BLOCK = 8 << 20
_O_DIRECT = getattr(os, "O_DIRECT", 0)
# Windows has no O_CLOEXEC and needs O_BINARY; macOS has no fdatasync; Windows no pwritev.
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
_datasync = getattr(os, "fdatasync", os.fsync)
# fsync/fdatasync refused by the file system (some FUSE, 9p and vboxsf mounts): it has no sync
# to offer, as a plain write's output would not be synced there either; not a failed write.
NO_SYNC = (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS)


def _sync(sync, fd: int) -> bool:
    """`sync(fd)`; False where the file system refuses syncing (then there is none to wait for)."""
    try:
        sync(fd)
    except OSError as e:
        if e.errno in NO_SYNC:
            return False
        raise
    return True


class ExternalDataFile:
    """Append-only writer of model.onnx.data (see the module doc).

    `offset` counts the bytes appended so far, written or not; `phases` gets "write"
    (the writer's busy time), "write_wait" (the build waiting for a free block),
    "write_copy" (the build copying into blocks) and "write_sync" (close).
    """

    FLUSH_EVERY = 256 << 20

    def __init__(self, path: Path, phases: Phases | None = None, bound: int | None = None, block: int | None = None):
        self.path = Path(path)
        self.phases = phases or Phases()
        self.offset = 0
        self._block_bytes = max(ALIGN, (block or BLOCK) // ALIGN * ALIGN)
        self._fd, self._direct = self._open()
        self._regular = stat.S_ISREG(os.fstat(self._fd).st_mode)  # not /dev/null: it can be synced and cut
        count = max(2, (bound or DEFAULT_BOUND) // self._block_bytes)
        self._free = [aligned_buffer(self._block_bytes) for _ in range(count)]
        self._block: np.ndarray | None = None  # the block being filled, from self._block_start on
        self._block_start = 0
        self._queue: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        self._stop = False
        self._flushed_to = 0
        self._syncs = self._regular  # False once the file system refuses fdatasync
        self._writer = threading.Thread(target=self._run, name="builder-write-behind", daemon=True)
        self._writer.start()

    def _open(self) -> tuple[int, bool]:
        flags = _OPEN_FLAGS
        try:
            if _O_DIRECT:
                try:
                    return os.open(self.path, flags | _O_DIRECT, 0o644), True
                except OSError as e:
                    if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                        raise
            return os.open(self.path, flags, 0o644), False
        except OSError as e:
            raise self._failed(e) from None

    def _failed(self, e: OSError) -> BuilderError:
        return write_failed(self.path, e)

    # ---- the build's side -----------------------------------------------------

    def append(self, chunks) -> tuple[int, int]:
        """Write the byte chunks of one tensor (any buffers: they are copied); return (offset, length)."""
        pad = (-self.offset) % ALIGN
        if pad:
            self._copy(memoryview(bytes(pad)))
        start = self.offset
        for chunk in chunks:
            self._copy(memoryview(chunk).cast("B"))
        return start, self.offset - start

    def _copy(self, view: memoryview) -> None:
        done = 0
        while done < view.nbytes:
            if self._block is None:
                self._block = self._take_free()
                self._block_start = self.offset
            at = self.offset - self._block_start
            n = min(view.nbytes - done, self._block_bytes - at)
            t = time.perf_counter()
            self._block[at : at + n] = np.frombuffer(view[done : done + n], np.uint8)
            self.phases.add("write_copy", time.perf_counter() - t)
            done += n
            self.offset += n
            if at + n == self._block_bytes:
                self._submit()

    def _take_free(self) -> np.ndarray:
        t = time.perf_counter()
        with self._cond:
            while not self._free and self._error is None:
                self._cond.wait()
            self._raise_error()
            block = self._free.pop()
        self.phases.add("write_wait", time.perf_counter() - t)
        return block

    def _submit(self) -> None:
        with self._cond:
            self._raise_error()
            self._queue.append((self._block, self._block_start, self.offset - self._block_start))
            self._cond.notify_all()
        self._block = None

    def _raise_error(self) -> None:
        if isinstance(self._error, OSError):
            raise self._failed(self._error) from None
        if self._error is not None:
            raise self._error  # its traceback still shows where the writer met it

    def close(self) -> None:
        """Write what is left, wait for the writer, cut the last block's padding, fsync.
        The writer's error, if any, is raised as one BuilderError."""
        t = time.perf_counter()
        try:
            if self._block is not None:
                self._submit()
            self._join()
            self._raise_error()
            try:
                if self._regular:
                    os.ftruncate(self._fd, self.offset)
                    if self._syncs:
                        _sync(os.fsync, self._fd)
            except OSError as e:
                raise self._failed(e) from None
        finally:
            self.abort()
            self.phases.add("write_sync", time.perf_counter() - t)

    def abort(self) -> None:
        """Stop writing (a failed or interrupted build: its output is removed anyway)."""
        with self._cond:
            self._queue.clear()
        self._join()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _join(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._writer.join()

    # ---- the writer thread ------------------------------------------------------

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException as e:
            # Whatever ends this thread must reach the build: when only OSError did, the build
            # waited forever for a free block, or closed a file whose blocks were never written
            # (zeros) and published it.
            with self._cond:
                self._error = self._error or e
                self._cond.notify_all()

    def _serve(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stop:
                    self._cond.wait()
                if not self._queue:
                    return
                block, start, length = self._queue.popleft()
            if self._error is None:
                t = time.perf_counter()
                try:
                    self._write(block, start, length)
                except OSError as e:  # raised in the build's thread
                    self._error = e
                self.phases.add("write", time.perf_counter() - t)
            with self._cond:
                self._free.append(block)
                self._cond.notify_all()

    def _write(self, block: np.ndarray, start: int, length: int) -> None:
        if self._direct:
            length = -(-length // ALIGN) * ALIGN  # the last block, padded: close cuts the file back
        view = memoryview(block)[:length]
        done = 0
        while done < length:
            try:
                done += _write_at(self._fd, view[done:], start + done)
            except OSError as e:
                if not (self._direct and e.errno == errno.EINVAL):
                    raise
                import fcntl  # O_DIRECT exists only where fcntl does (Linux)

                # O_DIRECT opened but the device wants more alignment: through the cache from here on
                fcntl.fcntl(self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) & ~_O_DIRECT)
                self._direct = False
        if self._syncs and not self._direct and start + length - self._flushed_to >= self.FLUSH_EVERY:
            self._flushed_to = start + length
            self._syncs = _sync(_datasync, self._fd)  # on this thread: the build goes on meanwhile


def _write_at(fd: int, view: memoryview, offset: int) -> int:
    """os.pwritev where the platform has it (not Windows): seek and write there."""
    if hasattr(os, "pwritev"):
        return os.pwritev(fd, [view], offset)
    os.lseek(fd, offset, os.SEEK_SET)  # only the writer thread moves this fd's position
    return os.write(fd, view)
