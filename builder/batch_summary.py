"""A batch's results: the table printed at the end, and the summary files (JSON and Markdown)
written whole or not at all."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from builder.batch_jobs import Job
from builder.batch_outputs import output_root_source, unwritable
from builder.batch_schema import Batch
from builder.kit.errors import BuilderError
from builder.output_dir import sync_file, sync_folder_quietly
from builder.version import __version__

STATUSES = ("built", "skipped", "failed", "interrupted")


def size_text(n: int | None) -> str:
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
        size_text(r.get("peak_rss_bytes")),
        size_text(r.get("size_bytes")),
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
    warned = [(job.name, w) for job in batch.jobs for w in job.result.get("warnings") or []]
    if warned:
        lines += ["", "Warnings:", ""] + [f"- {name}: {cell(w)}" for name, w in warned]
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


# A --summary ending in one of these means a file, not the folder it would be made into.
FILE_SUFFIXES = {".md", ".markdown", ".txt", ".csv", ".tsv", ".html", ".htm", ".log", ".yaml", ".yml", ".jsonl"}


def summary_paths(given: str | None, batch: Batch) -> tuple[Path, Path]:
    """Where the summary goes, checked before any build runs.

    A folder gets <stem>-summary.json and .md; a name ending in .json is the JSON
    file, with the .md next to it. An earlier batch summary there is replaced;
    any other existing file is refused, as is a place that cannot be written
    (tried: the folder is made if need be and a file written there, then both removed).
    """
    stem = batch.path.stem
    if given is None:
        folder, json_path = batch.output_root, batch.output_root / f"{stem}-summary.json"
    else:
        path = Path(given).expanduser().absolute()
        if path.suffix.lower() == ".json" and not path.is_dir():
            folder, json_path = path.parent, path
        elif path.exists() and not path.is_dir():
            raise BuilderError(
                f"--summary {given}: is a file; give a folder (for <stem>-summary.json and "
                ".md) or a new or earlier summary's name ending in .json"
            )
        elif not path.exists() and path.suffix.lower() in FILE_SUFFIXES:
            raise BuilderError(
                f"--summary {given}: reads as a file name, and --summary takes a folder (for "
                f"<stem>-summary.json and .md) or a name ending in .json: pass "
                f"{Path(given).with_suffix('.json')} or a folder (nothing was built)"
            )
        else:
            folder, json_path = path, path / f"{stem}-summary.json"
    md_path = json_path.with_suffix(".md")
    # A rebuild refuses an output folder holding files its build did not write.
    real = Path(os.path.realpath(json_path))
    for job in batch.jobs:
        if real.is_relative_to(os.path.realpath(job.options.output)):
            raise BuilderError(
                f"{batch.path}:{job.output_line}: {job.label}.output: {job.options.output} would hold "
                f"the batch summary {json_path}; give the job another output, or pass --summary "
                "with a folder outside it (nothing was built)"
            )
    for path in (json_path, md_path):
        if path.is_dir() or (path.exists() and not _is_summary(path)):
            raise BuilderError(
                f"--summary: {path} exists and is not a batch summary; refusing to "
                "overwrite it: choose another --summary (nothing was built)"
            )
    problem = unwritable(folder)
    if problem:
        if given is not None:
            where, fix = f"--summary {given}", "pass --summary with a writable folder"
        else:
            where, fix = output_root_source(batch, summary=True)
        raise BuilderError(f"{where}: cannot write the summary there ({problem}); {fix} (nothing was built)")
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


def write_summary(files: dict[Path, str]) -> None:
    """Write the summary files whole or not at all: each through a temporary file that is
    renamed into place (a reader never sees half a summary). When writing fails, the
    temporary files go, and so does an earlier summary there (it would pass for this
    run's); BuilderError names the file and the OS error."""
    # This process's own temporary names: two batches writing one summary must not take
    # each other's half-written file, nor delete it when their own write fails.
    tmps = {path: path.with_name(f".{path.name}.{os.getpid()}.tmp") for path in files}
    try:
        for path, text in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            # backslashreplace: a path with bytes that are no UTF-8 (--output-root $'out\\xff') ended the
            # batch, its builds done, in a UnicodeEncodeError traceback; in the JSON, which escapes them
            # itself, nothing changes
            with open(tmps[path], "w", errors="backslashreplace") as f:
                f.write(text)
            # Synced before the rename: after a power loss an empty summary (ext4 and xfs write a
            # file's data after its rename) would read as someone else's file, which the next batch
            # refuses to overwrite.
            sync_file(tmps[path])
        for path, tmp in tmps.items():
            os.replace(tmp, path)
        for folder in {path.parent for path in files}:
            sync_folder_quietly(folder)
    except OSError as e:
        for path in [*tmps.values(), *files]:
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass
        target = next((p for p, t in tmps.items() if str(t) == e.filename), None) or next(iter(files))
        raise BuilderError(
            f"writing the batch summary {target} failed ({e.strerror or e}); the table above is all "
            "there is of it: free space there or pass --summary with another folder"
        ) from None
