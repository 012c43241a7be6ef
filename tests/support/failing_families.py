"""Families whose builds fail the way a bug or a dying machine fails them, for the batch tests.

Each fails in build_graph, with its staging folder made, and only while a file named FAIL sits in
the folder of its job's output (so a rerun without it builds, as the fixed job would); without
it each builds as Qwen3. A batch names them as `family: support.failing_families:KillsItsWorker`;
Ray's workers import them from the tests folder on PYTHONPATH.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from architectures import Qwen3Builder

FAIL = "FAIL"


class _Failing(Qwen3Builder):
    def build_graph(self, graph, progress):
        if (Path(self.options.output).parent / FAIL).exists():
            self.fail()
        super().build_graph(graph, progress)

    def fail(self):
        raise NotImplementedError


class KillsItsWorker(_Failing):
    """The process dies at once, as under the kernel's OOM killer."""

    def fail(self):
        os.kill(os.getpid(), signal.SIGKILL)


class RunsOutOfMemory(_Failing):
    def fail(self):
        raise MemoryError("cannot allocate 17179869184 bytes")


class Aborted(BaseException):
    """Not an Exception: what no `except Exception` catches."""


class RaisesABaseException(_Failing):
    def fail(self):
        raise Aborted("a BaseException from the family")


class CallsSysExit(_Failing):
    """What a script's habit does inside a library: SystemExit, which Ray takes for a worker that
    chose to exit."""

    def fail(self):
        sys.exit(3)


class EndedByRaysSigterm(_Failing):
    """What a Ray worker's own SIGTERM handler raises outside the build's signal handlers."""

    def fail(self):
        stop = SystemExit(1)
        stop.ray_terminate_msg = "The process receives a SIGTERM."
        raise stop
