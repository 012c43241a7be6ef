"""Progress display for long builds.

On a terminal (not TERM=dumb) one line is redrawn in place; in logs (CI, batch workers) each
step prints its own line, so the output stays readable when captured.
Warnings and errors always start on a line of their own: `warn` clears the
progress line first and redraws it after, and `end_line` (the CLI calls it
before printing an error) ends a line left open by an interrupted build.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
import time
from collections import defaultdict

# The display whose line is open on a terminal, if any: what end_line has to close.
_open_line: Progress | None = None


def end_line() -> None:
    """Before printing to the terminal outside a Progress: finish an open progress line."""
    global _open_line
    if _open_line is not None:
        try:
            _open_line.stream.write("\n")
            _open_line.stream.flush()
        except (OSError, ValueError):
            pass
        _open_line = None


def redraws_in_place(stream) -> bool:
    """Whether `stream` is a terminal that takes the redraw's carriage return and erase-line escape.
    TERM=dumb says it does not (Emacs' shell and compilation buffers): there every redraw showed as
    '^[[K' in one growing line, so it gets a log's lines instead."""
    if os.environ.get("TERM") == "dumb":
        return False
    return bool(getattr(stream, "isatty", lambda: False)())


NARROW_LABEL = 8  # characters of the output's name a terminal row keeps before the bar gives way


class Progress:
    """on_step(done, total, what), if given, hears of each step as it starts, shown or not (a batch's
    build process passes its step to the batch). It must not block; whatever it raises is dropped: a
    display never fails a build."""

    def __init__(self, total: int, label: str = "build", stream=None, enabled: bool = True, on_step=None):
        self.total = max(total, 1)
        self.on_step = on_step
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.done = 0
        self.start = time.perf_counter()
        self.tty = redraws_in_place(self.stream)
        self.line = ""
        self._lock = threading.RLock()  # a ticking step redraws from its own thread

    def step(self, what: str) -> None:
        self.done += 1
        if self.on_step is not None:
            try:
                self.on_step(self.done, self.total, what)
            except Exception:
                pass
        if self.enabled:
            self._show_step(what)

    def _show_step(self, what: str) -> None:
        elapsed = time.perf_counter() - self.start
        width = 24
        filled = int(width * min(self.done, self.total) / self.total)
        bar = " [" + "#" * filled + "-" * (width - filled) + "]"
        counts = f" {self.done}/{self.total} {what} ({elapsed:.1f}s)"
        tail, label = bar + counts, self.label
        if self.tty:  # a long output name gives way first, so the counts stay in the row
            room = self.columns() - len(tail)
            if room < min(len(label), NARROW_LABEL):
                # A narrow terminal (a split tmux pane): the bar gives way before the name and the
                # counts, which said nothing but "o..." beside it at 40 columns.
                tail = counts
                room += len(bar)
            if len(label) > room:
                label = label[: room - 3] + "..." if room > 3 else label[: max(room, 1)]
        with self._lock:
            self.line = label + tail
            self._draw()

    def columns(self) -> int:
        """The terminal's width less one (a full row would wrap the cursor onto the next)."""
        columns = 0
        if not os.environ.get("COLUMNS"):  # which shutil's size, like every tool's, puts first
            try:
                columns = os.get_terminal_size(self.stream.fileno()).columns
            except (AttributeError, OSError, ValueError):
                pass
        # 0 from a terminal whose size was never set (a fresh pty): shutil's fallback, 80.
        return (columns if columns > 0 else shutil.get_terminal_size().columns) - 1

    @contextlib.contextmanager
    def ticking(self, what: str, every_s: float = 1.0):
        """A step that can take minutes (verify at 8B): on a terminal its line keeps counting
        the seconds while it runs, so a long step does not look hung. Logs get its one line."""
        self.step(what)
        if not (self.enabled and self.tty):
            yield
            return
        stop = threading.Event()

        def tick() -> None:
            while not stop.wait(every_s):
                self._show_step(what)

        ticker = threading.Thread(target=tick, name="progress ticker", daemon=True)
        ticker.start()
        try:
            yield
        finally:
            stop.set()
            ticker.join()

    def show(self, line: str) -> None:
        """Display a line of the caller's own (batch's running jobs) as the progress line."""
        with self._lock:
            self.line = line
            if self.enabled:
                self._draw()

    def _draw(self) -> None:
        global _open_line
        if self.tty:
            # One terminal row: a wrapped line is not cleared by the next redraw, so an 80-column
            # terminal stacked a copy each step (each second while verify ticked).
            width, line = max(self.columns(), 1), self.line
            if len(line) > width:
                line = line[: width - 3] + "..." if width > 3 else line[:width]
            self.stream.write("\r\033[K" + line)
            _open_line = self
        else:
            self.stream.write(self.line + "\n")
        self.stream.flush()

    def warn(self, message: str) -> None:
        """One 'warning: ...' line, also with --quiet (a warning is not progress)."""
        global _open_line
        stream = self.stream if self.enabled else sys.stderr
        with self._lock:
            if _open_line is self:
                stream.write("\r\033[K")
                _open_line = None
            stream.write(f"warning: {message}\n")
            if self.enabled and self.tty and self.line:
                self._draw()
            stream.flush()

    def finish(self, message: str) -> None:
        global _open_line
        if not self.enabled:
            return
        with self._lock:
            if self.tty:
                self.stream.write("\r\033[K")
            if _open_line is self:
                _open_line = None
            self.stream.write(message + "\n")
            self.stream.flush()


class SilentProgress(Progress):
    def __init__(self, total: int = 1, on_step=None):
        super().__init__(total, enabled=False, on_step=on_step)


class Phases:
    """Seconds spent per phase, added to from any thread."""

    def __init__(self):
        self._lock = threading.Lock()
        self.seconds: dict[str, float] = defaultdict(float)

    def add(self, phase: str, seconds: float) -> None:
        with self._lock:
            self.seconds[phase] += seconds

    @contextlib.contextmanager
    def timed(self, phase: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.add(phase, time.perf_counter() - t)

    def report(self) -> dict[str, float]:
        with self._lock:
            return {k: round(v, 3) for k, v in sorted(self.seconds.items())}
