"""Reading checkpoint bytes without paying the page cache for bytes it does not hold.

A build reads every checkpoint byte once. Through the page cache, a cold read costs
the kernel more CPU than the build's copy of it: here `cat` of an 8 GB checkpoint
took 8.6 s of system time cold, 1.6 s warm, on a 2-core machine whose other core
quantizes. O_DIRECT moves the bytes from the disk into our buffer with none of that
(0.3 s for 4 GB). But O_DIRECT also bypasses bytes the cache does hold, so a warm
build would go back to the disk: `read_range` first takes the cached prefix of a
range with RWF_NOWAIT (which copies only what is in the cache and starts no I/O),
then reads the rest with O_DIRECT. Where O_DIRECT is refused (tmpfs, unaligned
offsets, no RWF_NOWAIT, no preadv on Windows), it reads through the cache as before:
the bytes are the same either way.

O_DIRECT needs the buffer address, file offset and length aligned to the device's
block size; ALIGN (a page) covers every block size Linux supports. The bytes of
a range land at `begin % ALIGN` past an aligned address, so the caller's buffer
needs SLACK bytes beyond the range's length.
"""

from __future__ import annotations

import errno
import os

import numpy as np

ALIGN = 4096
SLACK = 2 * ALIGN  # the aligned start (< ALIGN in) and the rounded-up end (< ALIGN past)
_O_DIRECT = getattr(os, "O_DIRECT", 0)
_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", 0)
# Errors that mean "not this way here", not "the file is bad": then read through the cache.
_REFUSED = (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EAGAIN)


def aligned_buffer(nbytes: int) -> np.ndarray:
    """uint8 memory of `nbytes` whose first byte is ALIGN-aligned (a view of a bigger array)."""
    raw = np.empty(nbytes + ALIGN, np.uint8)
    skip = -raw.ctypes.data % ALIGN
    return raw[skip : skip + nbytes]


class FileChanged(Exception):
    """The file read is not the one `identity` names any more (replaced, or written to)."""


def identity(st: os.stat_result) -> tuple[int, int]:
    """What tells a file apart from a re-save of it: its size and mtime. Not its inode: FUSE
    mounts (gcsfuse, s3fs, libfuse without use_ino) number a file anew once the kernel forgets it."""
    return st.st_size, st.st_mtime_ns


def read_range(
    path,
    begin: int,
    length: int,
    buffer: np.ndarray | None = None,
    page_cache: bool = False,
    expect: tuple | None = None,
) -> tuple[np.ndarray, int]:
    """Bytes [begin, begin + length) of `path`, as a uint8 view of `buffer`
    (ALIGN-aligned, at least length + SLACK bytes; allocated if None), and how many
    of them the file held (fewer: it ends early). OSError for a failed read.
    page_cache: read every byte through the cache (no O_DIRECT), leaving it there for
    a later build of the same checkpoint. expect: the file's `identity` when its header
    was read; FileChanged if the file read (after the read) is another or was modified."""
    if buffer is None:
        buffer = aligned_buffer(length + SLACK)
    if buffer.ctypes.data % ALIGN or buffer.nbytes < length + SLACK:
        raise ValueError("read_range needs an ALIGN-aligned buffer of length + SLACK bytes")
    base = begin - begin % ALIGN
    # The data must start 8-byte aligned for any dtype: other ranges go to the buffer's
    # start and through the cache (safetensors data offsets are 8-byte aligned).
    direct = begin % 8 == 0 and not page_cache
    head = begin - base if direct else 0
    out = buffer[head : head + length]
    if not hasattr(os, "preadv"):  # Windows: a plain buffered read
        with open(path, "rb") as f:
            f.seek(begin)
            got = 0
            while got < length and (n := f.readinto(out[got:])):
                got += n
            _check(f.fileno(), expect)
        return out, got
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        got = _cached_prefix(fd, out, begin)
        if got < length and direct:
            got = _read_direct(path, buffer, base, begin, got, length)
        while got < length:  # through the page cache
            n = os.preadv(fd, [out[got:]], begin + got)
            if n == 0:
                break
            got += n
        _check(fd, expect)
    finally:
        os.close(fd)
    return out, got


def _check(fd: int, expect: tuple | None) -> None:
    if expect is not None and identity(os.fstat(fd)) != tuple(expect):
        raise FileChanged


def _cached_prefix(fd: int, out: np.ndarray, begin: int) -> int:
    """What the page cache holds of the range's start, copied without starting I/O."""
    if not _RWF_NOWAIT or not out.nbytes:
        return 0
    try:
        return os.preadv(fd, [out], begin, _RWF_NOWAIT)
    except OSError as e:
        if e.errno in _REFUSED:
            return 0
        raise


def _read_direct(path, buffer: np.ndarray, base: int, begin: int, got: int, length: int) -> int:
    """Read the range from byte `got` on with O_DIRECT, in whole ALIGN blocks; how far
    the range is now read (`got` unchanged where O_DIRECT is refused)."""
    if not _O_DIRECT:
        return got
    start = (begin + got) // ALIGN * ALIGN  # rereads the cached prefix's last partial block: same bytes
    end = -(-(begin + length) // ALIGN) * ALIGN
    try:
        fd = os.open(path, os.O_RDONLY | _O_DIRECT | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        if e.errno in _REFUSED:
            return got
        raise
    try:
        pos = start
        while pos < end:
            try:
                n = os.preadv(fd, [buffer[pos - base : end - base]], pos)
            except OSError as e:
                if e.errno in _REFUSED:
                    break
                raise
            if n <= 0 or n % ALIGN:  # end of file (a short read is only possible there)
                pos += max(n, 0)
                break
            pos += n
    finally:
        os.close(fd)
    return max(got, min(pos - begin, length))
