"""`python -m builder batch FILE.yaml`: run the builds a YAML file lists.

The file format and its checks are in builder.batch_schema (with batch_yaml and
batch_jobs), whether an output is up to date in builder.batch_resume, where
outputs may go in builder.batch_outputs, and the results table and summary files
in builder.batch_summary. Here: the command line, the console, and the run from
plan to summary.

Where the builds run is an Executor's business (builder.batch_exec): local
spawned processes by default, so a crash or an out-of-memory kill fails only
its own job and the peak RSS measured there is that job's alone.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from builder.arg_parser import ArgumentParser
from builder.batch_exec import STOP_SIGNALS, Executor, LocalExecutor, Stop
from builder.batch_jobs import Job
from builder.batch_lock import SummaryLock
from builder.batch_outputs import check_hub_models, check_output_root, check_outputs
from builder.batch_resume import rebuild_reason, skipped_result
from builder.batch_schema import Batch, load_batch
from builder.batch_summary import markdown, size_text, summary, summary_paths, table, write_summary
from builder.cli import StdoutUnwritable, write_stdout
from builder.kit.errors import BuilderError
from builder.kit.progress import Progress, end_line
from builder.output_dir import remove_stale_staging

MEMORY_NOTE = (
    "Memory per job, measured on a 2-core machine: tiny-qwen3 0.08 GB (0.45 GB with verify, which loads torch). "
    "Weights stream in 64 MB chunks, int4 embeddings included, so int4 Qwen3-0.6B/1.7B/4B jobs peak at "
    "0.35-0.46 GB and an untied Qwen3-8B-shaped one at 0.59 GB; fp16/fp32 Qwen3-0.6B (tied) at 0.57/0.56 GB. "
    "A float lm_head of its own is transposed whole, at about twice its float32 size: an fp16 build of the "
    "untied 8B shape peaked at 5.0 GB. --jobs N needs the N largest jobs' sum plus ~0.4 GB for the batch "
    "process; verify (cpu jobs) also loads the model in float32 via transformers. "
    "With --executor ray each job requests Ray memory by an estimate from these figures (docs/cluster.md)."
)


# ---- command line ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m builder batch",
        description="Run the builds a YAML file lists (jobs: and/or a matrix:), skipping those whose "
        "output is up to date (its files as its build_report.json recorded them, same builder, "
        "options, target and checkpoint). Relative paths in the file resolve against its folder. "
        "Prints one line per job and a summary table, and writes the summary as "
        "<file>-summary.json and .md. While builds run, a status line (in a log: a line "
        "every 30 s) names them with their step and time so far, e.g. '[running] q06-int4 12/33 layer 11/28 "
        "17 s'. Exit code 1 if any job failed or the summary or stdout (`> log` on a full disk) "
        "could not be written, 2 if the file is invalid or an output or summary "
        "folder cannot be written (then nothing is built), 130/143/129 after "
        "SIGINT/SIGTERM/SIGHUP, 141 when stdout is closed (`| head`) (running builds are stopped, "
        "their partial outputs removed, and the summary marks them interrupted; while the file and "
        "jobs are still being checked, nothing is written). A second run with the same summary file while one runs is "
        "refused (exit 2).",
        epilog=MEMORY_NOTE + " Example: python -m builder batch configs/qwen3-family-int4.yaml --jobs 2",
    )
    parser.add_argument("file", metavar="FILE.yaml", help="Batch file (see configs/ for examples).")
    parser.add_argument("--force", action="store_true", help="Rebuild every job, even up-to-date ones.")
    parser.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="Builds run at once, each in its own process (default: 1); each gets its share "
        "of the CPUs (with Ray: of the cluster's). See memory below.",
    )
    parser.add_argument(
        "--output-root",
        metavar="DIR",
        help="Folder for relative outputs (relative to the current folder), instead of the file's output_root: "
        "(relative to the file's folder; without one, the file's folder itself).",
    )
    parser.add_argument(
        "--summary",
        metavar="PATH",
        help="Where the summary goes: a folder (gets <file>-summary.json and .md) or a "
        "name ending in .json (the .md goes next to it). Default: the output root. "
        "An earlier summary there is replaced (a skipped job keeps the verify result "
        "its build recorded); any other existing file is refused before anything "
        "is built.",
    )
    parser.add_argument(
        "--executor",
        choices=("local", "ray"),
        help="Where the builds run: local (default; spawned processes on this machine) or "
        "ray (one Ray task per job, on the cluster of --ray-address, else $RAY_ADDRESS, "
        "else a local Ray instance; needs pip install '.[ray]' from this repository). Overrides the "
        "file's executor:. See docs/cluster.md.",
    )
    parser.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="Ray cluster to join with --executor ray, e.g. HOST:6379 (overrides the file's "
        "ray_address: and $RAY_ADDRESS).",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="Check the file, the model folders and the outputs as a run does (not a Ray cluster's nodes: it "
        "is not joined) and print what would be built or skipped, each job with its output folder; build nothing.",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="Print the traceback of a job that failed on an unexpected exception (a builder bug; the JSON "
        "summary keeps it either way). A job refused with a one-line error has none: rerun it as a single "
        "build with --debug.",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="No status line while builds run (the lines per job and the summary stay)."
    )
    return parser


def make_executor(args: argparse.Namespace, batch: Batch) -> Executor:
    kind = args.executor or batch.executor or "local"
    address = args.ray_address or batch.ray_address
    if kind == "ray":
        from builder.batch_ray import RayExecutor

        return RayExecutor(address, args.jobs)
    return LocalExecutor(args.jobs)


class Console:
    """The batch's lines on stdout, and while jobs run, which ones, how far and for how long.

    On a terminal that is one status line, builder.kit.progress's, redrawn about once a
    second and cleared before the next job line; in a log (not a terminal) a
    '[running] a 12/33 layer 11/28 34 s, b 3/33 layer 2/28 12 s' line every LOG_EVERY_S
    seconds, so a long job shows it is alive, and whether it is converting weights or
    verifying, without flooding the log. A job's step (its count of the build's steps and
    the step's name, as a single build's progress line shows them) comes from the executor
    (the local one over a pipe, Ray's through a file on the shared storage). Where the names do not
    fit a terminal's row, the counts stay and the step names go. A terminal that has gone away (SIGHUP: writes fail
    with EIO) silences the lines instead of stopping the batch, whose builds still have
    to be stopped and whose summary still has to be written.
    """

    TTY_EVERY_S = 1.0
    LOG_EVERY_S = 30.0

    def __init__(self, stop: Stop | None = None, quiet: bool = False):
        self.progress = Progress(1, "running", stream=sys.stdout)
        self.quiet = quiet
        self.every = self.TTY_EVERY_S if self.progress.tty else self.LOG_EVERY_S
        self.stop = stop
        self.running: dict[str, float] = {}  # job name -> start (perf_counter)
        self.steps: dict[str, tuple[int, int, str]] = {}  # job name -> its latest step: (done, total, what)
        self.lock = threading.Lock()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._gone: set = set()  # streams that failed: written no more
        self.stdout_error: OSError | None = None  # why stdout failed, if it did (a full disk under `> log`)

    def __enter__(self) -> Console:
        self._thread = threading.Thread(target=self._tick, name="batch progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
        with self.lock:
            self._write(sys.stdout, end_line)  # a line left open if the executor raised

    def say(self, text: str | None = "", err: str | None = None) -> None:
        """One line on stdout (after clearing the status line), and `err` on stderr."""
        with self.lock:
            if text is not None:
                self._write(sys.stdout, lambda: self.progress.finish(text))
            if err:
                self._write(sys.stderr, lambda: print(err, file=sys.stderr, flush=True))

    def warn(self, job: str, message: str) -> None:
        """A build's warning on stderr, named by its job, after clearing the status line (the
        warning was printed onto it)."""
        with self.lock:
            if self.progress.tty:
                self._write(sys.stdout, lambda: (sys.stdout.write("\r\033[K"), sys.stdout.flush()))
            self._write(sys.stderr, lambda: print(f"warning: {job}: {message}", file=sys.stderr, flush=True))

    def started(self, name: str) -> None:
        with self.lock:
            self.running[name] = time.perf_counter()

    def ended(self, name: str) -> None:
        with self.lock:
            self.running.pop(name, None)
            self.steps.pop(name, None)

    def stepped(self, name: str, done: int, total: int, what: str) -> None:
        """A running job's build began step `done` of `total`, `what` (shown from the next redraw)."""
        with self.lock:
            if name in self.running:
                self.steps[name] = (done, total, what)

    def _tick(self) -> None:
        while not self._done.wait(self.every):
            with self.lock:
                if self.running and not self.quiet:
                    self._write(sys.stdout, self._draw)

    def _draw(self) -> None:
        now = time.perf_counter()

        def line(named: bool) -> str:
            jobs = []
            for name, t in self.running.items():
                done, total, what = self.steps.get(name, (0, 0, ""))
                step = (f" {done}/{total}" + (f" {what}" if named else "")) if total else ""
                jobs.append(f"{name}{step} {now - t:.0f} s")
            return "[running] " + ", ".join(jobs)

        text = line(named=True)
        if self.progress.tty and len(text) > self.progress.columns():
            text = line(named=False)  # several jobs: each one's count before one job's step name
        self.progress.show(text)  # cut to one terminal row there

    def _write(self, stream, write) -> None:
        if stream in self._gone:
            return
        try:
            write()
        except OSError as e:
            self._gone.add(stream)
            if stream is sys.stdout:
                self.stdout_error = e
            _to_devnull(stream)
            if isinstance(e, BrokenPipeError) and stream is sys.stdout and self.stop is not None:
                # `batch ... | head`: a Unix tool stops when its reader goes. Raising here left the
                # running builds to finish unseen and wrote no summary; stopping as for a signal
                # removes their partial outputs and records the run.
                self.stop.request(signal.SIGPIPE)


def _to_devnull(stream) -> None:
    """Point a stream that cannot be written any more (a terminal that is gone, a full disk)
    at /dev/null, so neither later lines nor the interpreter's final flush fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, stream.fileno())
        finally:
            os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass  # not a real file (captured output): nothing to flush at exit


class _Checking:
    """While the batch reads its file and checks its jobs (which can mean hashing weights or asking
    the hub), SIGINT, SIGTERM and SIGHUP end it at once, with one line and 128 + the signal:
    nothing has been built or written yet, so there is nothing to stop and no summary to write."""

    class Interrupted(BaseException):  # as KeyboardInterrupt: no `except Exception` on the way takes it
        def __init__(self, signum: int):
            self.signum = signum

    def __enter__(self) -> _Checking:
        self._previous = {sig: signal.signal(sig, self._raise) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)

    @staticmethod
    def _raise(signum, frame) -> None:
        raise _Checking.Interrupted(signum)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with _Checking():
            plan = _check(args)
    except _Checking.Interrupted as e:
        end_line()
        print(
            f"error: interrupted ({signal.Signals(e.signum).name}) while checking the jobs; nothing was built "
            "and no summary written",
            file=sys.stderr,
        )
        return 128 + e.signum
    if plan is None:  # --dry-run
        return 0
    return _run(args, *plan)


def _check(args: argparse.Namespace):
    """The file, the outputs and what each job would do; None for --dry-run, which stops here."""
    if args.jobs < 1:
        raise BuilderError(f"--jobs: {args.jobs} must be at least 1")
    batch = load_batch(args.file, args.output_root, args.executor)
    if args.ray_address and (args.executor or batch.executor or "local") != "ray":  # --dry-run too
        raise BuilderError("--ray-address needs --executor ray (or executor: ray in the batch file)")
    summary_json, summary_md = summary_paths(args.summary, batch)
    total = len(batch.jobs)
    tag = {id(j): f"[{i}/{total}]" for i, j in enumerate(batch.jobs, 1)}

    fingerprints = {}
    for job in batch.jobs:
        reason = "--force" if args.force else rebuild_reason(job.options, fingerprints)
        job.action, job.reason = ("build", reason) if reason else ("skip", "up to date")
    to_build = [j for j in batch.jobs if j.action == "build"]
    check_outputs(batch, to_build)  # --dry-run shows them too
    if (args.executor or batch.executor or "local") == "local":  # Ray's nodes have caches of their own
        check_hub_models(to_build)
    check_output_root(batch, to_build)
    if args.dry_run:  # all but the executor's own check (a Ray cluster is not joined for it)
        from builder.kit.model_source import cached_hub_snapshot, is_hub_id

        downloads = {m for m in {j.options.model for j in to_build} if is_hub_id(m) and cached_hub_snapshot(m) is None}
        for job in batch.jobs:
            o = job.options
            reason = job.reason + ("; downloads it: not in the Hugging Face cache" if o.model in downloads else "")
            # The folder in full: a name is relative to the output root, which a file without output_root:
            # puts beside itself, whatever folder the batch runs from.
            line = f"{tag[id(job)]} {job.action:5} {job.name}  ({o.model}, {o.precision}, {o.ep}; {reason})"
            write_stdout(f"{line}  -> {o.output}\n")
        return None
    return batch, to_build, tag, summary_json, summary_md


def _run(
    args: argparse.Namespace, batch: Batch, to_build: list, tag: dict, summary_json: Path, summary_md: Path
) -> int:
    # From here a signal stops the builds and the summary is still written. Also while a Ray
    # executor starts and probes its nodes: a KeyboardInterrupt inside ray.init or ray.get
    # ended in a segfault at ray.shutdown and left Ray's agents running; now the signal is
    # noted, the setup finishes, and no job starts (or the batch quits if it hangs: Stop).
    with SummaryLock(summary_json), Stop() as stop:
        stop.starting = True
        # Nothing to build: no executor to start (a Ray one takes seconds to join).
        executor = make_executor(args, batch) if to_build else LocalExecutor(1)
        try:
            executor.check(to_build, batch.output_root)
        except BaseException:
            executor.close()
            raise
        stop.starting = False
        console = Console(stop, quiet=args.quiet)
        for job in batch.jobs:
            if job.action == "skip":
                job.result = skipped_result(job.options)
                if isinstance(executor, LocalExecutor):  # a build killed (SIGKILL) left it, and none comes next
                    remove_stale_staging(Path(job.options.output))
                console.say(f"{tag[id(job)]} skipped {job.name}: up to date")

        def on_start(job: Job) -> None:
            o = job.options
            console.started(job.name)
            console.say(f"{tag[id(job)]} start   {job.name}: {o.precision} {o.ep} ({job.reason})")

        def on_step(job: Job, done: int, total: int, what: str) -> None:
            console.stepped(job.name, done, total, what)

        def on_end(job: Job) -> None:
            r = job.result
            console.ended(job.name)
            if r["status"] == "built":
                line = (
                    f"{tag[id(job)]} built   {job.name} in {r['seconds']:.1f} s (peak RSS "
                    f"{size_text(r['peak_rss_bytes'])}, {size_text(r['size_bytes'])}, {r['nodes']} nodes)"
                )
            else:
                line = f"{tag[id(job)]} {r['status']:7} {job.name} after {r['seconds']:.1f} s: {r['error']}"
            for warning in r.get("warnings") or []:
                console.warn(job.name, warning)
            console.say(line, err=r.get("traceback") if args.debug else None)

        try:
            with console:
                if stop.signum is None:
                    executor.run(to_build, on_start, on_end, stop, on_step=on_step)
                else:
                    for job in to_build:
                        job.result.update(status="interrupted", error="not started: the batch was interrupted")
        finally:
            executor.close()
        by = signal.Signals(stop.signum).name if stop.signum else None
        result = summary(batch, by, executor.name)
        unwritten = None
        try:
            write_summary(
                {
                    summary_json: json.dumps(result, indent=2) + "\n",
                    summary_md: markdown(batch, with_node=executor.name == "ray"),
                }
            )
        except BuilderError as e:
            unwritten = str(e)
        counts = result["counts"]
        console.say()
        console.say(table(batch.jobs, with_node=executor.name == "ray"))
        console.say(
            f"\n{counts['built']} built, {counts['skipped']} skipped, {counts['failed']} failed"
            + (f", {counts['interrupted']} interrupted by {by}" if by else "")
            + (f"; summary: {summary_json} and .md" if not unwritten else "")
        )
        if unwritten:
            console.say(None, err=f"error: {unwritten}")
        elif stop.signum == signal.SIGPIPE:  # the lines above went nowhere
            console.say(
                None,
                err=f"error: stdout was closed, so the batch stopped as for a signal: {counts['built']} built, "
                f"{counts['interrupted']} interrupted (partial outputs removed); summary: {summary_json}",
            )
        elif console.stdout_error is not None and not stop.signum:  # a full disk under `> log`: lines lost
            console.say(None, err=f"error: {StdoutUnwritable(console.stdout_error)}; the summary: {summary_json}")
    if stop.signum:
        return stop.exit_code
    return 1 if counts["failed"] or unwritten or console.stdout_error else 0
