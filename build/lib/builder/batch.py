"""`python -m builder batch FILE.yaml`: run the builds a YAML file lists.

The file format and its checks are in builder.batch_schema. Here: skip what is
up to date, run the rest, and summarize.

Each build runs in a fresh spawned process, so a crash or an out-of-memory
kill fails only its own job, and the peak RSS measured there is that job's
alone.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
import traceback
from datetime import datetime, timezone
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from builder.batch_schema import NON_BUILD_OPTIONS, Batch, Job, load_batch
from builder.kit.errors import BuilderError
from builder.kit.options import BuildOptions
from builder.output_dir import REPORT_NAME, remove_stale_staging
from builder.pipeline import peak_rss_bytes
from builder.version import __version__

MEMORY_NOTE = (
    "Memory per job, measured on a 2-core machine: tiny-qwen3 0.25 GB (0.4 GB with verify). "
    "Quantized weights stream in 64 MB chunks, so int4 Qwen3-0.6B/1.7B/4B jobs peak at "
    "0.35-0.46 GB. A tensor kept in float is read whole, at about twice its float32 size: int4 "
    "Qwen3-8B and 14B/32B keep their untied 151936 x 4096/5120 embedding in float and peak at "
    "5.3/6.6 GB for cpu, 4.1/5.0 GB for cuda/webgpu; fp16/fp32 builds alike (Qwen3-0.6B fp16 "
    "1.2 GB, fp32 1.5 GB; 4B fp16 2.6 GB). --jobs N needs the N largest jobs' sum plus ~0.4 GB "
    "for the batch process; verify (cpu jobs) also loads the model in float32 via transformers."
)


# ---- resume ----------------------------------------------------------------------------

def rebuild_reason(options: BuildOptions) -> str | None:
    """Why this job's output must be (re)built, or None when it is up to date."""
    from builder.kit.checkpoint import Checkpoint
    from builder.kit.targets import Target

    output = Path(options.output)
    if not (output / REPORT_NAME).is_file():
        return "no build_report.json in the existing folder" if output.exists() else "new"
    try:
        report = json.loads((output / REPORT_NAME).read_text())
    except (OSError, ValueError):
        return f"{REPORT_NAME} unreadable"
    if report.get("builder_version") != __version__:
        return f"builder {report.get('builder_version')} -> {__version__}"
    old, new = report.get("options") or {}, options.to_dict()
    changed = sorted(k for k in set(old) | set(new) if k not in NON_BUILD_OPTIONS and old.get(k) != new.get(k))
    if changed:
        return "options changed: " + ", ".join(k.replace("_", "-") for k in changed)
    old_ort, ort = (report.get("target") or {}).get("ort_version"), Target.from_options(options).version_text
    if old_ort != ort:
        return f"target ONNX Runtime {old_ort} -> {ort}"
    try:
        fingerprint = Checkpoint.open(options.model).fingerprint()
    except BuilderError:
        return "checkpoint unreadable"  # the build itself says why
    if fingerprint != (report.get("checkpoint") or {}).get("fingerprint"):
        return "checkpoint changed"
    return None


def _report_fields(report: dict) -> dict:
    return {"size_bytes": report["sizes"]["total_bytes"], "nodes": report["nodes"]["total"],
            "build_seconds": report["timings"]["total_s"]}


# ---- running ---------------------------------------------------------------------------

def _job_process(conn, options: dict, threads: int) -> None:
    """Body of a job's own spawned process: build (and verify, if asked), send the result."""
    result: dict[str, Any] = {"status": "failed"}
    try:
        import quant
        from builder.pipeline import build

        # Parallel jobs share the cores instead of fighting for them: the quantizer's
        # threads, and torch's in a verify run (only then is torch loaded at all).
        quant.set_num_threads(threads)
        if options.get("verify"):
            import torch
            torch.set_num_threads(threads)
        report = build(BuildOptions(**options), show_progress=False).report
        result.update(_report_fields(report))
        if "verify" in report:
            result["verify"] = report["verify"]
        result["status"] = "built"
    except BuilderError as e:
        result["error"] = str(e)
    except Exception as e:  # a builder bug: keep the traceback for the JSON summary
        result["error"] = f"{type(e).__name__}: {e}"
        result["traceback"] = traceback.format_exc()
    result["peak_rss_bytes"] = peak_rss_bytes()
    conn.send(result)


def _died(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        hint = " (out of memory?)" if -exitcode == 9 else ""
        return f"the build process was killed by signal {-exitcode}{hint}"
    return f"the build process exited with code {exitcode} without a result"


def run_jobs(jobs: list[Job], parallel: int, on_start, on_end) -> None:
    """Each job in a fresh spawned process, at most `parallel` at once.

    Hand-rolled rather than ProcessPoolExecutor: there one OOM-killed worker
    breaks the pool and fails every queued job, and workers are reused, which
    would mix the jobs' peak RSS.
    """
    ctx = multiprocessing.get_context("spawn")
    threads = max(1, len(os.sched_getaffinity(0)) // parallel)
    queue, running = list(jobs), {}
    try:
        while queue or running:
            while queue and len(running) < parallel:
                job = queue.pop(0)
                receive, send = ctx.Pipe(duplex=False)
                process = ctx.Process(target=_job_process, name=f"build {job.name}",
                                      args=(send, job.options.to_dict(), threads))
                process.start()
                send.close()  # ours closed, a child that dies without answering reads as EOF
                running[receive] = (job, process, time.perf_counter())
                on_start(job)
            for receive in wait(list(running)):
                job, process, started = running.pop(receive)
                try:
                    job.result.update(receive.recv())
                except EOFError:
                    process.join()
                    job.result.update(status="failed", error=_died(process.exitcode))
                    remove_stale_staging(Path(job.options.output))
                process.join()
                receive.close()
                job.result["seconds"] = time.perf_counter() - started
                on_end(job)
    except KeyboardInterrupt:
        for job, process, _ in running.values():
            process.join(timeout=60)  # it got the same Ctrl-C and removes its staging folder
            if process.is_alive():
                process.terminate()
            job.result.update(status="failed", error="interrupted")
        for job in queue:
            job.result.update(status="failed", error="interrupted before it started")
        raise


# ---- summary ---------------------------------------------------------------------------

def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _verify_text(v) -> str:
    if isinstance(v, dict):
        if v.get("status") == "not run":
            return f"not run: {v['reason'].split(',')[0].split(';')[0]}"
        return f"{v['status']}: max_abs {v['max_abs']:.2e}, nmse {v['nmse']:.2e}"
    return v or "-"


COLUMNS = ("job", "status", "time", "peak RSS", "size", "nodes", "verify", "note")


def _row(job: Job) -> list[str]:
    r = job.result
    seconds = r.get("seconds")
    note = r.get("error") or job.reason
    return [job.name, r.get("status", "?"), f"{seconds:.1f} s" if seconds is not None else "-",
            _size(r.get("peak_rss_bytes")), _size(r.get("size_bytes")), str(r.get("nodes", "-")),
            _verify_text(r.get("verify")), note.splitlines()[0] if note else ""]


def table(jobs: list[Job]) -> str:
    rows = [list(COLUMNS[:-1])] + [_row(j)[:-1] for j in jobs]  # errors go below: they can be long
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines += [f"{j.name}: {j.result['error']}" for j in jobs if j.result.get("error")]
    return "\n".join(lines)


def markdown(batch: Batch) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")
    lines = [f"# Batch {batch.path.name}", "", f"builder {__version__}, outputs under `{batch.output_root}`", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for job in batch.jobs:
        row = _row(job)
        row[-1] = job.result.get("error") or job.reason
        lines.append("| " + " | ".join(cell(c) for c in row) + " |")
    return "\n".join(lines) + "\n"


def summary(batch: Batch) -> dict:
    counts = {s: sum(j.result.get("status") == s for j in batch.jobs) for s in ("built", "skipped", "failed")}
    return {
        "file": str(batch.path.absolute()), "builder_version": __version__,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "output_root": str(batch.output_root), "counts": counts,
        "jobs": [{"name": j.name, "label": j.label, "line": j.line, "output": j.options.output,
                  "model": j.options.model, "precision": j.options.precision, "ep": j.options.ep,
                  "reason": j.reason, **j.result, "options": j.options.to_dict()} for j in batch.jobs],
    }


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # a reader never sees half a summary


# ---- command line ----------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m builder batch",
        description="Run the builds a YAML file lists (jobs: and/or a matrix:), skipping those whose "
                    "output is up to date. Relative paths in the file resolve against its folder. "
                    "Prints one line per job and a summary table, and writes the summary as "
                    "<file>-summary.json and .md. Exit code 1 if any job failed, 2 if the file is "
                    "invalid (then nothing is built).",
        epilog=MEMORY_NOTE + " Example: python -m builder batch configs/qwen3-family-int4.yaml --jobs 2",
    )
    parser.add_argument("file", metavar="FILE.yaml", help="Batch file (see configs/ for examples).")
    parser.add_argument("--force", action="store_true", help="Rebuild every job, even up-to-date ones.")
    parser.add_argument("-j", "--jobs", type=int, default=1, metavar="N",
                        help="Builds run at once, each in its own process (default: 1). See memory below.")
    parser.add_argument("--output-root", metavar="DIR",
                        help="Folder for relative outputs, instead of the file's output_root.")
    parser.add_argument("--summary", metavar="DIR",
                        help="Folder for the summary files (default: the output root).")
    parser.add_argument("--dry-run", action="store_true",
                        help="Check the file and print what would be built or skipped; build nothing.")
    parser.add_argument("--debug", action="store_true", help="Print tracebacks of failed jobs.")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.jobs < 1:
        raise BuilderError(f"--jobs: {args.jobs} must be at least 1")
    batch = load_batch(args.file, args.output_root)
    total = len(batch.jobs)
    tag = {id(j): f"[{i}/{total}]" for i, j in enumerate(batch.jobs, 1)}

    for job in batch.jobs:
        reason = "--force" if args.force else rebuild_reason(job.options)
        job.action, job.reason = ("build", reason) if reason else ("skip", "up to date")
    if args.dry_run:
        for job in batch.jobs:
            o = job.options
            print(f"{tag[id(job)]} {job.action:5} {job.name}  ({o.model}, {o.precision}, {o.ep}; {job.reason})")
        return 0

    for job in batch.jobs:
        if job.action == "skip":
            report = json.loads((Path(job.options.output) / REPORT_NAME).read_text())
            job.result = {"status": "skipped", **_report_fields(report)}
            if job.options.verify:
                job.result["verify"] = "not run: skipped (up to date; --force rebuilds and verifies)"
            print(f"{tag[id(job)]} skipped {job.name}: up to date", flush=True)

    def on_start(job: Job) -> None:
        o = job.options
        print(f"{tag[id(job)]} start   {job.name}: {o.precision} {o.ep} ({job.reason})", flush=True)

    def on_end(job: Job) -> None:
        r = job.result
        if r["status"] == "built":
            print(f"{tag[id(job)]} built   {job.name} in {r['seconds']:.1f} s (peak RSS "
                  f"{_size(r['peak_rss_bytes'])}, {_size(r['size_bytes'])}, {r['nodes']} nodes)", flush=True)
        else:
            print(f"{tag[id(job)]} failed  {job.name} after {r['seconds']:.1f} s: {r['error']}", flush=True)
        if args.debug and r.get("traceback"):
            print(r["traceback"], file=sys.stderr)

    interrupted = False
    try:
        run_jobs([j for j in batch.jobs if j.action == "build"], args.jobs, on_start, on_end)
    except KeyboardInterrupt:
        interrupted = True

    folder = Path(args.summary).absolute() if args.summary else batch.output_root
    stem = batch.path.stem
    result = summary(batch)
    _write(folder / f"{stem}-summary.json", json.dumps(result, indent=2) + "\n")
    _write(folder / f"{stem}-summary.md", markdown(batch))
    counts = result["counts"]
    print()
    print(table(batch.jobs))
    print(f"\n{counts['built']} built, {counts['skipped']} skipped, {counts['failed']} failed; "
          f"summary: {folder / (stem + '-summary.json')} and .md")
    if interrupted:
        return 130
    return 1 if counts["failed"] else 0
