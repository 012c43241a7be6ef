"""A family that records when its build runs, for tests of what an executor runs side by side.

`family: support.logged_families:LogsItsBuild` builds as Qwen3 and appends "start NAME" and
"end NAME" (NAME: the output folder's name) to EVENTS in the folder of its job's output around
the build's build_graph (not the read forecast's dry walk). After its start it waits, at most
MEET_S, for another job's start: two builds the executor lets run at once then overlap for sure,
whichever worker came up first; one left to wait in a queue costs the first build MEET_S.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from architectures import Qwen3Builder
from builder.kit.readahead import RecordingCheckpoint

EVENTS = "events.log"
MEET_S = 20.0


def events(folder: Path) -> list[str]:
    try:
        return (folder / EVENTS).read_text().splitlines()
    except FileNotFoundError:
        return []


def _append(folder: Path, line: str) -> None:
    # One write of a whole line with O_APPEND: builds in other processes append to the same file.
    fd = os.open(folder / EVENTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


class LogsItsBuild(Qwen3Builder):
    def build_graph(self, graph, progress):
        if isinstance(self.checkpoint, RecordingCheckpoint):  # the forecast's dry walk, before the build
            return super().build_graph(graph, progress)
        folder, name = Path(self.options.output).parent, Path(self.options.output).name
        _append(folder, f"start {name}")
        deadline = time.monotonic() + MEET_S
        while time.monotonic() < deadline:
            if any(e.startswith("start ") and e != f"start {name}" for e in events(folder)):
                break
            time.sleep(0.1)
        super().build_graph(graph, progress)
        _append(folder, f"end {name}")
