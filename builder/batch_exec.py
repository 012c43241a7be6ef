"""Where a batch's builds run: the Executor seam, the job body, the local executor.

batch.py decides what to build and summarizes; an Executor only runs a list of
jobs and reports each one's result through on_start/on_end. Both executors run
the same job body (run_job), so a build means the same wherever it ran.

While a local job runs, its build's progress steps reach the batch too (on_step), over a pipe
of their own, so the batch's status line can say how far each job is.

A job's result is a dict: status (built | failed | interrupted), and the
build's figures (size_bytes, nodes, build_seconds, peak_rss_bytes, verify) or
its error. Bad input (BuilderError) is a result, never an exception, so no
executor retries it.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import shutil
import signal
import socket
import sys
import threading
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from builder import interruptible
from builder.interruptible import calls_interrupted, exit_now
from builder.kit.errors import BuilderError, BuildInterrupted
from builder.output_dir import REPORT_NAME, held_by_a_live_build, remove_stale_staging, staging_folders

# Test hook: while the folder $BUILDER_TEST_PAUSE_DIR exists, a job pauses
# $BUILDER_TEST_PAUSE_BEFORE_PUBLISH seconds just before publishing its output
# (staging folder complete, output not yet renamed into place), after writing its
# pid to <that folder>/<output name>.pid, or until the folder is removed. Only the first attempt
# of a job pauses, so tests can stop or kill a build at a known point and watch what follows.
PAUSE_ENV, PAUSE_DIR_ENV = "BUILDER_TEST_PAUSE_BEFORE_PUBLISH", "BUILDER_TEST_PAUSE_DIR"
STOPPED_BY = "stopped_by_signal"  # in a stopped job's result until its executor reads it


def report_fields(report: dict) -> dict:
    fields = {
        "size_bytes": report["sizes"]["total_bytes"],
        "nodes": report["nodes"]["total"],
        "build_seconds": report["timings"]["total_s"],
    }
    if "verify" in report:
        fields["verify"] = report["verify"]
    return fields


def run_job(options: dict, threads: int, on_step: Callable[[int, int, str], None] | None = None) -> dict[str, Any]:
    """One build (and verify, if asked) in this process; never raises for a failed build.
    on_step(done, total, what): each progress step of the build (kit.progress.Progress)."""
    from builder.kit.options import BuildOptions
    from builder.pipeline import build_from_flags, peak_rss_bytes

    result: dict[str, Any] = {"status": "failed", "node": socket.gethostname(), "pid": os.getpid()}
    # The build's warnings go back with its result, for the batch to print under the job's name
    # and keep in the summary: written here, they ran into the batch's status line, named no job,
    # and were in no summary.
    captured = io.StringIO()
    try:
        _set_threads(threads)
        _pause_hook(Path(options["output"]))
        with contextlib.redirect_stderr(captured):
            report = build_from_flags(BuildOptions(**options), show_progress=False, on_step=on_step).report
        result.update(report_fields(report), status="built")
    except (BuildInterrupted, KeyboardInterrupt) as e:
        result.update(status="interrupted", error="interrupted; its partial output was removed")
        if getattr(e, "exit_code", 0) > 128:  # the signal the build caught: the Ray executor tells whose it was
            result[STOPPED_BY] = e.exit_code - 128
    except BuilderError as e:
        result["error"] = str(e)
    except Exception as e:  # a builder bug: keep the traceback for the JSON summary
        result["error"] = f"{type(e).__name__}: {e}"
        result["traceback"] = traceback.format_exc()
    except SystemExit as e:
        if hasattr(e, "ray_terminate_msg"):
            raise  # a Ray worker's SIGTERM handler: the worker ends, and Ray retries the job elsewhere
        # A family's sys.exit(): left to end the process, the local executor saw a child with no
        # result and Ray a worker that chose to exit, which it retried as a dead one.
        result["error"] = f"the build called sys.exit({e.code!r})"
        result["traceback"] = traceback.format_exc()
    if result["status"] != "built" and (Path(options["output"]) / REPORT_NAME).is_file():
        # A rebuild that failed leaves the earlier build in place: say so, or it passes for this job's.
        result["error"] = (
            f"{result.get('error', 'failed')}; {options['output']} still holds an earlier build, not this job's"
        )
    result["peak_rss_bytes"] = peak_rss_bytes()
    lines = captured.getvalue().splitlines()
    result["warnings"] = [line.removeprefix("warning: ") for line in lines if line.startswith("warning: ")]
    other = [line for line in lines if not line.startswith("warning: ")]
    if other:
        print("\n".join(other), file=sys.stderr, flush=True)
    return result


def _set_threads(threads: int) -> None:
    """Parallel jobs share the cores instead of fighting for them: the quantizer's threads,
    and torch's in a verify run (OMP_NUM_THREADS for a fresh process; a reused Ray worker
    may have torch loaded already)."""
    import quant

    quant.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


def _pause_hook(output: Path) -> None:
    seconds, folder = os.environ.get(PAUSE_ENV), os.environ.get(PAUSE_DIR_ENV)
    if not seconds or not folder or not os.path.isdir(folder):
        return
    marker = Path(folder) / f"{output.name}.pid"
    if marker.exists():
        return  # a retry: run through
    import builder.output_dir as output_dir

    def paused():
        output_dir._before_publish = before
        marker.write_text(str(os.getpid()))
        end = time.monotonic() + float(seconds)
        while time.monotonic() < end and os.path.isdir(folder):  # a test ends the pause by removing it
            time.sleep(0.1)

    before, output_dir._before_publish = output_dir._before_publish, paused


def remove_staging(output: Path) -> None:
    """Every staging folder of `output` whatever pid it names, for when its job is over for good; but
    not one a live process holds: that is another build of the same folder (a `python -m builder -o`
    the job was refused for), whose folder went from under it, and a removal that met its rename
    into place emptied the published output."""
    for staging, _pid in staging_folders(output):
        if not held_by_a_live_build(staging):
            shutil.rmtree(staging, ignore_errors=True)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # each stops a batch cleanly


START_GRACE_S = 10.0  # how long a batch stopped while its executor starts waits for that start


class Stop:
    """SIGINT/SIGTERM/SIGHUP while jobs run: remember the first signal and wake the executor.

    SIGHUP is the terminal or SSH session going away: the batch stops as for SIGTERM
    (builds stopped, staging removed, summary written) rather than dying mid-job.

    The handler only records; the executor stops its jobs from its own loop, so
    no exception lands in the middle of bookkeeping. While the executor starts (`starting`:
    ray.init, its node probe) a signal is also said, and if the start has not ended
    START_GRACE_S after Python sees the signal, the process exits: raising inside ray.init or
    ray.get crashed ray.shutdown, and waiting alone kept a batch whose cluster never answered
    running for good. (Python sees a signal only between Ray's blocking calls, so a second
    one could not cut it shorter.)
    """

    def __init__(self):
        self.signum: int | None = None
        self._started = threading.Event()
        self._started.set()
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self._previous = {}

    @property
    def starting(self) -> bool:
        return not self._started.is_set()

    @starting.setter
    def starting(self, value: bool) -> None:
        if value:
            self._started.clear()
        else:
            self._started.set()

    def fileno(self) -> int:
        return self._read

    def __enter__(self) -> Stop:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._started.set()
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        os.close(self._read)
        os.close(self._write)

    def request(self, signum: int) -> None:
        """Stop the batch as signal `signum` would, from the batch's own code: the reader of its
        stdout went away (SIGPIPE, `batch ... | head`)."""
        self._handle(signum, None)

    def _handle(self, signum, frame) -> None:
        if self.starting and self.signum is None:
            print(
                f"{signal.Signals(signum).name}: stopping once the executor has started "
                f"(quitting if that takes over {START_GRACE_S:g} s more)",
                file=sys.stderr,
                flush=True,
            )
            threading.Thread(target=self._quit_unless_started, args=(signum,), daemon=True).start()
        if self.signum is None:
            self.signum = signum
        try:
            os.write(self._write, b"x")
        except BlockingIOError:
            pass

    def _quit_unless_started(self, signum: int) -> None:
        if not self._started.wait(START_GRACE_S):
            print("error: interrupted while the executor was starting; nothing was built", file=sys.stderr, flush=True)
            os._exit(128 + signum)

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)


OnEvent = Callable[[Any], None]
OnStep = Callable[[Any, int, int, str], None]  # (job, done, total, what): a running job's progress step


class Executor(ABC):
    """Runs jobs; each job's result lands in job.result before on_end(job)."""

    name = "?"

    def check(self, jobs: list, output_root: Path) -> None:
        """Refuse, before anything runs, what this executor cannot run (raise BuilderError)."""

    @abstractmethod
    def run(self, jobs: list, on_start: OnEvent, on_end: OnEvent, stop: Stop, on_step: OnStep | None = None) -> None:
        """Run every job; after a signal, stop the running ones (outputs stay complete or
        absent), mark them and the unstarted ones interrupted, and return. An executor that
        can, tells on_step of a running job's progress steps (between its on_start and on_end)."""

    def close(self) -> None:
        pass


# ---- local processes -------------------------------------------------------------------


class LocalExecutor(Executor):
    """Each job in a fresh spawned process, at most `parallel` at once.

    Hand-rolled rather than ProcessPoolExecutor: there one OOM-killed worker
    breaks the pool and fails every queued job, and workers are reused, which
    would mix the jobs' peak RSS.
    """

    name = "local"
    GRACE_S = 30  # a stopped child removes its staging folder well within this

    def __init__(self, parallel: int):
        self.parallel = parallel
        self.threads = max(1, len(os.sched_getaffinity(0)) // parallel)

    def run(self, jobs, on_start, on_end, stop, on_step=None) -> None:
        import multiprocessing
        from multiprocessing import resource_tracker

        ctx = multiprocessing.get_context("spawn")
        resource_tracker.ensure_running()  # its first start unblocks SIGINT/SIGTERM: get it over with
        queue, running = list(jobs), {}
        steps: dict = {}  # a running job's steps pipe (read end) -> the job; the result pipe carries only the result
        while (queue or running) and stop.signum is None:
            while queue and len(running) < self.parallel:
                job = queue.pop(0)
                receive, send = ctx.Pipe(duplex=False)
                step_receive, step_send = ctx.Pipe(duplex=False)
                process = ctx.Process(
                    target=_child,
                    name=f"build {job.name}",
                    args=(send, job.options.to_dict(), self.threads, os.getpid(), step_send),
                )
                # Blocked here, the child inherits SIGINT, SIGTERM and SIGHUP blocked until its own
                # handlers are in place; a Ctrl-C meant for the batch never lands in the child's imports.
                old = signal.pthread_sigmask(signal.SIG_BLOCK, set(STOP_SIGNALS))
                try:
                    process.start()
                finally:
                    signal.pthread_sigmask(signal.SIG_SETMASK, old)
                send.close()  # ours closed, a child that dies without answering reads as EOF
                step_send.close()
                running[receive] = (job, process, time.perf_counter())
                steps[step_receive] = job
                on_start(job)
            for receive in wait([*running, *steps, stop]):
                if receive in steps:
                    _read_steps(receive, steps, on_step)
                if receive not in running:  # stop, a steps pipe, or one its job's end closed in this round
                    continue
                job, process, started = running.pop(receive)
                self._collect(job, receive, process, started)
                _stop_reading_steps(job, steps)
                on_end(job)
        if stop.signum is None:
            return
        for _job, process, _ in running.values():
            if process.is_alive():
                process.terminate()  # the child turns SIGTERM into a clean stop: staging removed
        deadline = time.monotonic() + self.GRACE_S
        for receive, (job, process, started) in running.items():
            process.join(max(0.0, deadline - time.monotonic()))
            killed = process.is_alive()
            if killed:
                process.kill()
                process.join()
            self._collect(job, receive, process, started, interrupted=True, killed=killed)
            _stop_reading_steps(job, steps)
            on_end(job)
        for job in queue:
            job.result.update(status="interrupted", error="not started: the batch was interrupted")

    @staticmethod
    def _collect(job, receive, process, started, interrupted: bool = False, killed: bool = False) -> None:
        """killed: the batch killed the process after its grace (its SIGKILL is no sign of memory)."""
        try:
            if receive.poll():
                job.result.update(receive.recv())
            else:
                raise EOFError
        except (EOFError, OSError):
            process.join()
            if killed:
                error = f"interrupted (it had not stopped {LocalExecutor.GRACE_S:g} s after SIGTERM, and was killed)"
                job.result.update(status="interrupted", error=error)
            elif interrupted:
                job.result.update(status="interrupted", error=f"interrupted ({_died(process.exitcode)})")
            else:
                job.result.update(status="failed", error=_died(process.exitcode))
        process.join()
        receive.close()
        remove_stale_staging(Path(job.options.output))
        job.result["seconds"] = time.perf_counter() - started


def _read_steps(receive, steps: dict, on_step: OnStep | None) -> None:
    """Every step a job's build has sent so far; the latest is the one on_step hears. At its end
    (EOF: the build process is over) or on anything unreadable the pipe is dropped: a display
    never fails a job, whose result comes by its own pipe."""
    job, latest = steps[receive], None
    try:
        while receive.poll():
            message = receive.recv()
            if isinstance(message, tuple) and len(message) == 3:
                latest = message
    except Exception:  # EOFError, OSError, or a message cut short
        del steps[receive]
        receive.close()
    if latest is not None and on_step is not None:
        on_step(job, *latest)


def _stop_reading_steps(job, steps: dict) -> None:
    for receive, owner in list(steps.items()):
        if owner is job:
            del steps[receive]
            receive.close()


class _StepSender:
    """The build's progress steps to the batch as (done, total, what), over a pipe of their own.

    Its write end is non-blocking and a message is a single write well under PIPE_BUF, which a
    pipe takes whole or not at all: a batch that is not reading (it is stopping its jobs) loses
    steps, and the build never waits on it. A build has a step per layer and a few more, so no
    throttle is needed; the batch keeps the latest of those waiting."""

    def __init__(self, conn):
        self.conn = conn
        try:
            os.set_blocking(conn.fileno(), False)
        except (OSError, ValueError):
            self.conn = None  # a blocking pipe could stall the build: send nothing

    def __call__(self, done: int, total: int, what: str) -> None:
        if self.conn is None:
            return
        try:
            self.conn.send((int(done), int(total), str(what)[:200]))
        except (OSError, ValueError):  # BlockingIOError (pipe full), BrokenPipeError (batch gone), closed
            pass


def _died(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        hint = " (out of memory?)" if -exitcode == 9 else ""
        return f"the build process was killed by signal {-exitcode}{hint}"
    return f"the build process exited with code {exitcode} without a result"


def _child(conn, options: dict, threads: int, parent: int, steps=None) -> None:
    """Body of a job's spawned process. Started with SIGINT, SIGTERM and SIGHUP blocked (see run).
    conn carries its result, steps (if given) its build's progress steps."""

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the parent-death signal can come again
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    interruptible.threaded = True  # ended with exit_now below after an interrupted load
    # Ctrl-C and a closed terminal's SIGHUP reach the whole process group; the batch
    # decides and sends SIGTERM. SIGHUP stays blocked for the job's whole life (the
    # threads the build starts inherit that): ignoring it is not enough, since a build
    # handles SIGHUP itself (output_dir), and a SIGHUP arriving together with the batch's
    # SIGTERM can land the SIGTERM on a worker thread, where it does not wake the main
    # thread's wait.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        _die_with(parent)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})  # a pending one lands here
        result = run_job(options, threads, _StepSender(steps) if steps is not None else None)
    except KeyboardInterrupt:  # SIGTERM between the job's own handlers
        result = {"status": "interrupted", "error": "interrupted before it built anything"}
    result.pop(STOPPED_BY, None)  # only this batch stops its children
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the answer is on its way: let it arrive
    try:
        conn.send(result)
        conn.close()
    except OSError:
        pass  # the batch is gone; nothing to tell
    sys.stdout.flush()
    if calls_interrupted():
        exit_now(0)


def _die_with(parent: int) -> None:
    """SIGTERM this process when the batch process dies, even by SIGKILL (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
