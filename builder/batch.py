"""`python -m builder batch FILE.yaml`: run the builds a YAML file lists.

The file format and its checks are in builder.batch_schema. Here: skip what is
up to date, run the rest, and summarize.

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
from datetime import datetime, timezone
from pathlib import Path

from builder.batch_exec import Executor, LocalExecutor, Stop, report_fields
from builder.batch_schema import NON_BUILD_OPTIONS, Batch, Job, load_batch
from builder.kit.errors import BuilderError
from builder.kit.options import BuildOptions
from builder.output_dir import REPORT_NAME
from builder.version import __version__

MEMORY_NOTE = (
    "Memory per job, measured on a 2-core machine: tiny-qwen3 0.06 GB (0.45 GB with verify, which loads torch). "
    "Quantized weights stream in 64 MB chunks, so int4 Qwen3-0.6B/1.7B/4B jobs peak at "
    "0.35-0.46 GB. A tensor kept in float is read whole, at about twice its float32 size: int4 "
    "Qwen3-8B and 14B/32B keep their untied 151936 x 4096/5120 embedding in float and peak at "
    "5.3/6.6 GB for cpu, 4.1/5.0 GB for cuda/webgpu; fp16/fp32 builds alike (Qwen3-0.6B fp16 "
    "1.2 GB, fp32 1.5 GB; 4B fp16 2.6 GB). --jobs N needs the N largest jobs' sum plus ~0.4 GB "
    "for the batch process; verify (cpu jobs) also loads the model in float32 via transformers. "
    "With --executor ray each job requests Ray memory by an estimate from these figures (docs/cluster.md)."
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
        fingerprint = Checkpoint.open(options.model).fingerprint(options.checkpoint_hash)
    except (BuilderError, OSError):
        return "checkpoint unreadable"  # the build itself says why
    if fingerprint != (report.get("checkpoint") or {}).get("fingerprint"):
        return "checkpoint changed"
    if options.verify and "verify" not in report:
        return "verify asked for, and the existing build was not verified"
    return None


def skipped_result(options: BuildOptions) -> dict:
    """What the up-to-date output's own report says, verify included: a rerun keeps it."""
    path = Path(options.output) / REPORT_NAME
    report = json.loads(path.read_text())
    built_at = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")
    result = {"status": "skipped", **report_fields(report), "built_at": built_at}
    if "peak_rss_bytes" in report:
        result["peak_rss_bytes"] = report["peak_rss_bytes"]
    if isinstance(result.get("verify"), dict):
        result["verify"] = {**result["verify"], "from": f"{options.output}/{REPORT_NAME} (earlier build)"}
    return result


# ---- summary ---------------------------------------------------------------------------

STATUSES = ("built", "skipped", "failed", "interrupted")


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _verify_text(v) -> str:
    if isinstance(v, dict):
        if v.get("status") == "not run":
            return f"not run: {v['reason'].split(',')[0].split(';')[0]}"
        earlier = " (earlier build)" if v.get("from") else ""
        return f"{v['status']}{earlier}: max_abs {v['max_abs']:.2e}, nmse {v['nmse']:.2e}"
    return v or "-"


COLUMNS = ("job", "status", "time", "peak RSS", "size", "nodes", "verify", "note")


def _columns(with_node: bool) -> tuple[str, ...]:
    return COLUMNS[:-1] + ("node",) + COLUMNS[-1:] if with_node else COLUMNS


def _row(job: Job, with_node: bool = False) -> list[str]:
    r = job.result
    seconds = r.get("seconds")
    note = r.get("error") or job.reason
    if r.get("attempts", 1) > 1:
        note = f"{note}; ran {r['attempts']} times (workers died)"
    row = [
        job.name,
        r.get("status", "?"),
        f"{seconds:.1f} s" if seconds is not None else "-",
        _size(r.get("peak_rss_bytes")),
        _size(r.get("size_bytes")),
        str(r.get("nodes", "-")),
        _verify_text(r.get("verify")),
        note.splitlines()[0] if note else "",
    ]
    if with_node:
        row.insert(-1, r.get("node", "-"))
    return row


def table(jobs: list[Job], with_node: bool = False) -> str:
    rows = [list(_columns(with_node)[:-1])] + [_row(j, with_node)[:-1] for j in jobs]  # errors go below
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines += [f"{j.name}: {j.result['error']}" for j in jobs if j.result.get("error")]
    return "\n".join(lines)


def markdown(batch: Batch, with_node: bool = False) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    columns = _columns(with_node)
    lines = [
        f"# Batch {batch.path.name}",
        "",
        f"builder {__version__}, outputs under `{batch.output_root}`",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for job in batch.jobs:
        row = _row(job, with_node)
        row[-1] = job.result.get("error") or job.reason
        lines.append("| " + " | ".join(cell(c) for c in row) + " |")
    return "\n".join(lines) + "\n"


def summary(batch: Batch, interrupted_by: str | None = None, executor: str = "local") -> dict:
    counts = {s: sum(j.result.get("status") == s for j in batch.jobs) for s in STATUSES}
    return {
        "file": str(batch.path.absolute()),
        "builder_version": __version__,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "executor": executor,
        "interrupted_by": interrupted_by,
        "output_root": str(batch.output_root),
        "counts": counts,
        "jobs": [
            {
                "name": j.name,
                "label": j.label,
                "line": j.line,
                "output": j.options.output,
                "model": j.options.model,
                "precision": j.options.precision,
                "ep": j.options.ep,
                "reason": j.reason,
                **j.result,
                "options": j.options.to_dict(),
            }
            for j in batch.jobs
        ],
    }


def summary_paths(given: str | None, batch: Batch) -> tuple[Path, Path]:
    """Where the summary goes, checked before any build runs.

    A folder gets <stem>-summary.json and .md; a name ending in .json is the JSON
    file, with the .md next to it. An earlier batch summary there is replaced;
    any other existing file is refused, as is a place that cannot be written.
    """
    stem = batch.path.stem
    if given is None:
        folder, json_path = batch.output_root, batch.output_root / f"{stem}-summary.json"
    else:
        path = Path(given).expanduser().absolute()
        if path.suffix == ".json" and not path.is_dir():
            folder, json_path = path.parent, path
        elif path.exists() and not path.is_dir():
            raise BuilderError(
                f"--summary {given}: is a file; give a folder (for <stem>-summary.json and "
                ".md) or a new or earlier summary's name ending in .json"
            )
        else:
            folder, json_path = path, path / f"{stem}-summary.json"
    md_path = json_path.with_suffix(".md")
    for path in (json_path, md_path):
        if path.is_dir() or (path.exists() and not _is_summary(path)):
            raise BuilderError(
                f"--summary: {path} exists and is not a batch summary; refusing to "
                "overwrite it: choose another --summary (nothing was built)"
            )
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise BuilderError(
            f"summary folder {folder}: cannot write there ({existing} is not a writable "
            "folder); pass --summary with a writable folder (nothing was built)"
        )
    return json_path, md_path


def _is_summary(path: Path) -> bool:
    try:
        text = path.read_text()
        if path.suffix == ".md":
            return text.startswith("# Batch ")
        data = json.loads(text)
        return isinstance(data, dict) and {"builder_version", "jobs", "counts"} <= data.keys()
    except (OSError, ValueError):
        return False


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
        "invalid (then nothing is built), 130/143 after SIGINT/SIGTERM (running builds "
        "are stopped, their partial outputs removed, and the summary marks them "
        "interrupted).",
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
        "--output-root", metavar="DIR", help="Folder for relative outputs, instead of the file's output_root."
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
        "else a local Ray instance; needs pip install 'builder[ray]'). Overrides the "
        "file's executor:. See docs/cluster.md.",
    )
    parser.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="Ray cluster to join with --executor ray, e.g. HOST:6379 (overrides the file's "
        "ray_address: and $RAY_ADDRESS).",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="Check the file and print what would be built or skipped; build nothing."
    )
    parser.add_argument("--debug", action="store_true", help="Print tracebacks of failed jobs.")
    return parser


def make_executor(args: argparse.Namespace, batch: Batch) -> Executor:
    kind = args.executor or batch.executor or "local"
    address = args.ray_address or batch.ray_address
    if kind == "ray":
        from builder.batch_ray import RayExecutor

        return RayExecutor(address, args.jobs)
    if args.ray_address:
        raise BuilderError("--ray-address needs --executor ray (or executor: ray in the batch file)")
    return LocalExecutor(args.jobs)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.jobs < 1:
        raise BuilderError(f"--jobs: {args.jobs} must be at least 1")
    batch = load_batch(args.file, args.output_root)
    summary_json, summary_md = summary_paths(args.summary, batch)
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

    to_build = [j for j in batch.jobs if j.action == "build"]
    # Nothing to build: no executor to start (a Ray one takes seconds to join).
    executor = make_executor(args, batch) if to_build else LocalExecutor(1)
    try:
        executor.check(to_build, batch.output_root)
    except BaseException:
        executor.close()
        raise
    for job in batch.jobs:
        if job.action == "skip":
            job.result = skipped_result(job.options)
            print(f"{tag[id(job)]} skipped {job.name}: up to date", flush=True)

    def on_start(job: Job) -> None:
        o = job.options
        print(f"{tag[id(job)]} start   {job.name}: {o.precision} {o.ep} ({job.reason})", flush=True)

    def on_end(job: Job) -> None:
        r = job.result
        if r["status"] == "built":
            print(
                f"{tag[id(job)]} built   {job.name} in {r['seconds']:.1f} s (peak RSS "
                f"{_size(r['peak_rss_bytes'])}, {_size(r['size_bytes'])}, {r['nodes']} nodes)",
                flush=True,
            )
        else:
            print(f"{tag[id(job)]} {r['status']:7} {job.name} after {r['seconds']:.1f} s: {r['error']}", flush=True)
        if args.debug and r.get("traceback"):
            print(r["traceback"], file=sys.stderr)

    with Stop() as stop:  # from here a signal stops the builds, and the summary is still written
        try:
            executor.run(to_build, on_start, on_end, stop)
        finally:
            executor.close()
        by = signal.Signals(stop.signum).name if stop.signum else None
        result = summary(batch, by, executor.name)
        _write(summary_json, json.dumps(result, indent=2) + "\n")
        _write(summary_md, markdown(batch, with_node=executor.name == "ray"))
        counts = result["counts"]
        print()
        print(table(batch.jobs, with_node=executor.name == "ray"))
        print(
            f"\n{counts['built']} built, {counts['skipped']} skipped, {counts['failed']} failed"
            + (f", {counts['interrupted']} interrupted by {by}" if by else "")
            + f"; summary: {summary_json} and .md",
            flush=True,
        )
    if stop.signum:
        return stop.exit_code
    return 1 if counts["failed"] else 0
