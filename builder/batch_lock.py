"""One batch at a time per summary file.

Two runs of one batch file at once (a second terminal, a cron job that overlapped the last)
built the same outputs, each replacing what the other had just published, and the summary
that was written last told only its own half. The second is refused before it builds anything.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from builder.kit.errors import BuilderError


class SummaryLock:
    """An flock on a hidden file beside the summary, held while the batch runs; the kernel lets it
    go when the process ends, however it ends. Where the file system has no flock (some network
    mounts) nothing is locked, as before."""

    def __init__(self, summary_json: Path):
        self.summary = summary_json
        self.path = summary_json.with_name(f".{summary_json.name}.lock")
        self.fd: int | None = None
        self._made: list[Path] = []

    def __enter__(self) -> SummaryLock:
        folder = self.path.parent
        while not folder.exists():  # made now; removed again if the batch ends without writing there
            self._made.append(folder)
            folder = folder.parent
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
                os.close(fd)
                self._remove_made()
                raise BuilderError(
                    f"another batch (pid {holder}) is running with the summary {self.summary}: the two would "
                    "build the same outputs over each other; wait for it to end (a batch of other outputs "
                    "can pass --summary with another folder) (nothing was built)"
                ) from None
            except OSError:
                os.close(fd)
                return self
            # The holder before us removes the file as it lets go: lock the file the name now has.
            try:
                current = os.stat(self.path).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(fd).st_ino:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            try:
                self.path.unlink()
            except OSError:
                pass
            os.close(self.fd)  # after the unlink: a batch waiting on this file sees it gone and retries
            self.fd = None
        self._remove_made()

    def _remove_made(self) -> None:
        for folder in self._made:  # innermost first; only while still empty
            try:
                folder.rmdir()
            except OSError:
                break
