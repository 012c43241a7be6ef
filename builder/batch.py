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
import shutil
import signal
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from builder.arg_parser import ArgumentParser
from builder.batch_exec import Executor, LocalExecutor, Stop, report_fields
from builder.batch_schema import NON_BUILD_OPTIONS, Batch, Job, load_batch
from builder.kit.errors import BuilderError
from builder.kit.options import BuildOptions
from builder.kit.progress import Progress, end_line
from builder.output_dir import CONFIG_FILES, REPORT_NAME
from builder.version import __version__

MEMORY_NOTE = (
    "Memory per job, measured on a 2-core machine: tiny-qwen3 0.06 GB (0.45 GB with verify, which loads torch). "
    "Weights stream in 64 MB chunks, int4 embeddings included, so int4 Qwen3-0.6B/1.7B/4B jobs peak at "
    "0.35-0.46 GB and an untied Qwen3-8B-shaped one at 0.59 GB; fp16/fp32 Qwen3-0.6B (tied) at 0.51/0.53 GB. "
    "A float lm_head of its own is transposed whole, at about twice its float32 size: an fp16 build of the "
    "untied 8B shape peaked at 5.0 GB. --jobs N needs the N largest jobs' sum plus ~0.4 GB for the batch "
    "process; verify (cpu jobs) also loads the model in float32 via transformers. "
    "With --executor ray each job requests Ray memory by an estimate from these figures (docs/cluster.md)."
)


# ---- resume ----------------------------------------------------------------------------


def rebuild_reason(options: BuildOptions, fingerprints: dict | None = None) -> str | None:
    """Why this job's output must be (re)built, or None when it is up to date. fingerprints:
    those taken so far in this batch run, by checkpoint folder, so that jobs of one checkpoint
    hash it once (checkpoint-hash: true reads every weight byte)."""
    from architectures.registry import builder_class_for
    from builder.kit.checkpoint import Checkpoint, cached_hub_snapshot, is_hub_id
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
    damaged = damaged_file(output, report)
    if damaged:
        return damaged
    old, new = report.get("options") or {}, options.to_dict()
    inert = set(options.inert_options()) if old.get("precision") == options.precision else set()
    changed = {k for k in set(old) | set(new) if k not in NON_BUILD_OPTIONS | inert and old.get(k) != new.get(k)}
    if changed - RESOLVED_BY_PLAN:
        return "options changed: " + ", ".join(k.replace("_", "-") for k in sorted(changed - RESOLVED_BY_PLAN))
    old_ort, ort = (report.get("target") or {}).get("ort_version"), Target.from_options(options).version_text
    if old_ort != ort:
        return f"target ONNX Runtime {old_ort} -> {ort}"
    recorded = report.get("checkpoint") or {}
    try:
        if is_hub_id(options.model):
            snapshot = cached_hub_snapshot(options.model)
            if snapshot is None:  # no config to plan with: the options as written
                if changed:
                    return "options changed: " + ", ".join(k.replace("_", "-") for k in sorted(changed))
                return _uncached_hub_reason(options, report)
            checkpoint = Checkpoint(snapshot)
        else:
            checkpoint = Checkpoint.open(options.model)
        key = (str(checkpoint.directory.resolve()), options.checkpoint_hash)
        fingerprint = (fingerprints or {}).get(key)
        if fingerprint is None:
            if options.checkpoint_hash:
                print(f"hashing the weights of {options.model} (checkpoint-hash: true)", flush=True)
            fingerprint = checkpoint.fingerprint(options.checkpoint_hash)
            if fingerprints is not None:
                fingerprints[key] = fingerprint
    except (BuilderError, OSError):
        return "checkpoint unreadable"  # the build itself says why
    if fingerprint != recorded.get("fingerprint"):
        return "checkpoint changed"
    if recorded.get("family"):  # reports from before it was recorded: as they were
        try:
            family = builder_class_for(checkpoint.config)
        except BuilderError:
            return "architecture unsupported"  # the build itself says why
        name = f"{family.__module__}.{family.__qualname__}"
        if name != recorded["family"]:
            return f"builder family {recorded['family']} -> {name}"
    if changed:
        differs = _resolved_differently(options, checkpoint, report)
        if differs:
            return differs
    if options.verify and "verify" not in report:
        return "verify asked for, and the existing build was not verified"
    return None


# Options whose written value may differ while the build stays the same (auto, or a default left
# unwritten, against its value written out): what they resolve to is compared instead.
RESOLVED_BY_PLAN = {
    "target_ort",
    "io_dtype",
    "accuracy_level",
    "graph_capture",
    "logits",
    "int32_inputs",
    "qkv_packing",
    "mlp_packing",
    "silu",
    "head_norm",
    "context_length",
    "max_length",
    "intra_op_threads",
}


def _resolved_differently(options: BuildOptions, checkpoint, report: dict) -> str | None:
    """What the job's options resolve to, where it differs from what its output was built with."""
    from architectures.registry import builder_class_for
    from builder.kit.genai_config import resolved_intra_op_threads, resolved_max_length
    from builder.pipeline import target_record

    try:
        plan = builder_class_for(checkpoint.config)(checkpoint, options).plan
    except BuilderError:
        return "options changed (the build refuses them; it says why)"
    now = {
        **{f"target.{k}": v for k, v in target_record(plan).items()},
        **{f"layout.{k}": v for k, v in plan.layout.describe().items() if k != "notes"},
        "context_length": plan.context_length,
    }
    then = {
        **{f"target.{k}": v for k, v in (report.get("target") or {}).items()},
        **{f"layout.{k}": v for k, v in (report.get("layout") or {}).items() if k != "notes"},
        "context_length": (report.get("model") or {}).get("context_length"),
    }
    old = report.get("options") or {}
    now["max_length"] = resolved_max_length(options.max_length, plan.context_length)
    then["max_length"] = resolved_max_length(old.get("max_length"), then["context_length"] or plan.context_length)
    now["intra_op_threads"] = resolved_intra_op_threads(options.intra_op_threads, plan.target)
    then["intra_op_threads"] = resolved_intra_op_threads(old.get("intra_op_threads"), plan.target)
    differ = [
        f"{k if '.' in k else k.replace('_', '-')} {then.get(k)} -> {v}" for k, v in now.items() if then.get(k) != v
    ]
    return "options changed: " + ", ".join(differ) if differ else None


def _uncached_hub_reason(options: BuildOptions, report: dict) -> str | None:
    """A hub id whose files this machine's cache lacks (pruned, or a Ray driver that never had
    them): its output was built from the snapshot its report names, and a hub snapshot is one
    commit, so the output is up to date while the hub still serves that commit. Offline, the
    last build is the best knowledge there is (a build could not download it either)."""
    from builder.kit.checkpoint import hub_revision

    built_from = Path((report.get("checkpoint") or {}).get("path") or "")
    if built_from.parent.name != "snapshots":
        return "checkpoint not in the Hugging Face cache here, and its build did not come from the hub"
    current = hub_revision(options.model)
    if current is not None and current != built_from.name:
        return f"hub revision {built_from.name[:12]} -> {current[:12]}"
    if options.verify and "verify" not in report:
        return "verify asked for, and the existing build was not verified"
    return None


def damaged_file(output: Path, report: dict) -> str | None:
    """What is wrong with the files of a finished output, or None when they are as its
    report recorded them: the model and its external data files at the sizes in the
    report's sizes, the config the runtime reads (complete JSON), the tokenizer files."""
    files = report.get("files") or {}
    model = files.get("model") or "model.onnx"
    data = files.get("data") or []
    sizes = report.get("sizes") or {}
    weights = [model, *data]
    for name in weights:
        path = output / name
        if not path.is_file():
            return f"{name} is missing"
        recorded = sizes.get(f"{Path(name).name}_bytes")
        size = path.stat().st_size
        if recorded is not None and size != recorded:
            return f"{name} has {size} bytes, {REPORT_NAME} records {recorded}"
    total = sizes.get("total_bytes")
    if total is not None and sum((output / name).stat().st_size for name in weights) != total:
        return f"the model files do not add up to the {total} bytes {REPORT_NAME} records"
    config = CONFIG_FILES.get((report.get("format") or {}).get("name", "genai"))
    if config:
        try:
            written = json.loads((output / config).read_text())
        except FileNotFoundError:
            return f"{config} is missing"
        except (OSError, ValueError, RecursionError):
            return f"{config} is unreadable or cut short"
        # Hand edits (search options, provider options) are kept; a config the runtime cannot
        # read at all is not an output that is up to date.
        model = written.get("model") if isinstance(written, dict) else None
        if not isinstance(written, dict) or (config == "genai_config.json" and not isinstance(model, dict)):
            return f"{config} is not a {'genai config' if config == 'genai_config.json' else 'JSON object'}"
        if config == "genai_config.json" and not isinstance(model.get("decoder"), dict):
            return f"{config} has no model.decoder"
    for name in report.get("tokenizer_files") or []:
        if not (output / name).is_file():
            return f"{name} is missing"
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
        if path.suffix == ".json" and not path.is_dir():
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
            where, fix = _output_root_source(batch, summary=True)
        raise BuilderError(f"{where}: cannot write the summary there ({problem}); {fix} (nothing was built)")
    return json_path, md_path


def check_output_root(batch: Batch, jobs: list[Job]) -> None:
    """Refuse, before any build runs, an output root that the jobs to build cannot write, and
    the folder of any output elsewhere (each such job failed at its turn before)."""
    if any(Path(j.options.output).is_relative_to(batch.output_root) for j in jobs):
        problem = unwritable(batch.output_root)
        if problem:
            where, fix = _output_root_source(batch)
            raise BuilderError(f"{where}: cannot write the outputs there ({problem}); {fix} (nothing was built)")
    problems, tried = [], set()
    for job in jobs:
        parent = Path(job.options.output).parent
        if parent == batch.output_root or parent in tried:
            continue
        tried.add(parent)
        problem = unwritable(parent)
        if problem:
            problems.append(f"{job.name}: cannot write its output in {parent} ({problem}); give it another output:")
    if problems:
        raise BuilderError("\n  ".join(["outputs the builds cannot write (nothing was built):", *problems]))


def check_outputs(jobs: list[Job]) -> None:
    """Refuse, before any build runs, outputs their builds would refuse: a file, a folder this
    builder did not make, or one holding files it did not write. Found at each job's turn,
    they failed the batch after the jobs before them had run."""
    from builder.output_dir import check_output_free

    problems = []
    for job in jobs:
        try:
            check_output_free(Path(job.options.output), overwrite=True, in_batch=True)
        except BuilderError as e:
            problems.append(f"{job.name}: {e}")
    if problems:
        raise BuilderError("\n  ".join(["outputs the builds would refuse (nothing was built):", *problems]))


def _output_root_source(batch: Batch, summary: bool = False) -> tuple[str, str]:
    """How a message names the output root (the option or key it came from) and what to do;
    for the summary, --summary is a way out too."""
    root, source = batch.output_root, batch.output_root_from
    options = "--output-root or --summary" if summary else "--output-root"
    if source == "--output-root":
        return f"--output-root {root}", f"pass {options} with a writable folder"
    if source:
        return f"{source} {root}", f"set output_root: to a writable folder, or pass {options}"
    return f"output root {root} (the batch file's folder)", f"set output_root: in the file, or pass {options}"


def unwritable(folder: Path) -> str | None:
    """Why files cannot be written in `folder`, or None. Tried for real: os.access says yes
    to root everywhere, /proc included. What this makes is removed again."""
    made = []
    try:
        missing = []
        while not folder.exists() and folder != folder.parent:
            missing.append(folder)
            folder = folder.parent
        for path in reversed(missing):
            path.mkdir()
            made.append(path)
        probe = (missing[0] if missing else folder) / f".batch-probe-{os.getpid()}"
        try:
            with open(probe, "x") as f:
                f.write("probe\n")
        finally:
            probe.unlink(missing_ok=True)
    except OSError as e:
        return _os_error(e)
    finally:
        for path in reversed(made):
            try:
                path.rmdir()
            except OSError:
                pass
    return None


def _os_error(e: OSError) -> str:
    where = e.filename if isinstance(e.filename, str) else None
    if isinstance(e, (FileExistsError, NotADirectoryError)) and where:
        return f"{Path(where).parent if isinstance(e, NotADirectoryError) else where} is a file, not a folder"
    return f"{e.strerror or e}{': ' + where if where else ''}"


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
            with open(tmps[path], "w") as f:
                f.write(text)
        for path, tmp in tmps.items():
            os.replace(tmp, path)
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


# ---- command line ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m builder batch",
        description="Run the builds a YAML file lists (jobs: and/or a matrix:), skipping those whose "
        "output is up to date (its files as its build_report.json recorded them, same builder, "
        "options, target and checkpoint). Relative paths in the file resolve against its folder. "
        "Prints one line per job and a summary table, and writes the summary as "
        "<file>-summary.json and .md. While builds run, a status line (in a log: a line "
        "every 30 s) names them with their time so far. Exit code 1 if any job failed or "
        "the summary could not be written, 2 if the file is invalid or an output or summary "
        "folder cannot be written (then nothing is built), 130/143/129 after "
        "SIGINT/SIGTERM/SIGHUP (running builds are stopped, their partial outputs removed, "
        "and the summary marks them interrupted).",
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
        "is not joined) and print what would be built or skipped; build nothing.",
    )
    parser.add_argument("--debug", action="store_true", help="Print tracebacks of failed jobs.")
    return parser


def make_executor(args: argparse.Namespace, batch: Batch) -> Executor:
    kind = args.executor or batch.executor or "local"
    address = args.ray_address or batch.ray_address
    if kind == "ray":
        from builder.batch_ray import RayExecutor

        return RayExecutor(address, args.jobs)
    return LocalExecutor(args.jobs)


class Console:
    """The batch's lines on stdout, and while jobs run, which ones and for how long.

    On a terminal that is one status line, builder.kit.progress's, redrawn about once a
    second and cleared before the next job line; in a log (not a terminal) a
    '[running] a 34 s, b 12 s' line every LOG_EVERY_S seconds, so a long job shows it is
    alive without flooding the log. A terminal that has gone away (SIGHUP: writes fail
    with EIO) silences the lines instead of stopping the batch, whose builds still have
    to be stopped and whose summary still has to be written.
    """

    TTY_EVERY_S = 1.0
    LOG_EVERY_S = 30.0

    def __init__(self, stop: Stop | None = None):
        self.progress = Progress(1, "running", stream=sys.stdout)
        self.every = self.TTY_EVERY_S if self.progress.tty else self.LOG_EVERY_S
        self.stop = stop
        self.running: dict[str, float] = {}  # job name -> start (perf_counter)
        self.lock = threading.Lock()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._gone: set = set()  # streams that failed: written no more

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

    def started(self, name: str) -> None:
        with self.lock:
            self.running[name] = time.perf_counter()

    def ended(self, name: str) -> None:
        with self.lock:
            self.running.pop(name, None)

    def _tick(self) -> None:
        while not self._done.wait(self.every):
            with self.lock:
                if self.running:
                    self._write(sys.stdout, self._draw)

    def _draw(self) -> None:
        now = time.perf_counter()
        line = "[running] " + ", ".join(f"{name} {now - t:.0f} s" for name, t in self.running.items())
        if self.progress.tty:  # one terminal row, or clearing it would leave the wrapped rest
            width = shutil.get_terminal_size().columns - 1
            line = line if len(line) <= width else line[: max(width - 3, 0)] + "..."
        self.progress.show(line)

    def _write(self, stream, write) -> None:
        if stream in self._gone:
            return
        try:
            write()
        except OSError as e:
            if isinstance(e, BrokenPipeError) and threading.current_thread() is threading.main_thread():
                if self.stop is None or self.stop.signum is None:
                    raise  # `batch ... | head`: stop as a Unix tool does (cli.broken_pipe)
            self._gone.add(stream)
            _to_devnull(stream)


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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
    check_outputs(to_build)  # --dry-run shows them too
    check_output_root(batch, to_build)
    if args.dry_run:  # all but the executor's own check (a Ray cluster is not joined for it)
        for job in batch.jobs:
            o = job.options
            print(f"{tag[id(job)]} {job.action:5} {job.name}  ({o.model}, {o.precision}, {o.ep}; {job.reason})")
        return 0

    # From here a signal stops the builds and the summary is still written. Also while a Ray
    # executor starts and probes its nodes: a KeyboardInterrupt inside ray.init or ray.get
    # ended in a segfault at ray.shutdown and left Ray's agents running; now the signal is
    # noted, the setup finishes, and no job starts (or the batch quits if it hangs: Stop).
    with Stop() as stop:
        stop.starting = True
        # Nothing to build: no executor to start (a Ray one takes seconds to join).
        executor = make_executor(args, batch) if to_build else LocalExecutor(1)
        try:
            executor.check(to_build, batch.output_root)
        except BaseException:
            executor.close()
            raise
        stop.starting = False
        for job in batch.jobs:
            if job.action == "skip":
                job.result = skipped_result(job.options)
                print(f"{tag[id(job)]} skipped {job.name}: up to date", flush=True)
        console = Console(stop)

        def on_start(job: Job) -> None:
            o = job.options
            console.started(job.name)
            console.say(f"{tag[id(job)]} start   {job.name}: {o.precision} {o.ep} ({job.reason})")

        def on_end(job: Job) -> None:
            r = job.result
            console.ended(job.name)
            if r["status"] == "built":
                line = (
                    f"{tag[id(job)]} built   {job.name} in {r['seconds']:.1f} s (peak RSS "
                    f"{_size(r['peak_rss_bytes'])}, {_size(r['size_bytes'])}, {r['nodes']} nodes)"
                )
            else:
                line = f"{tag[id(job)]} {r['status']:7} {job.name} after {r['seconds']:.1f} s: {r['error']}"
            console.say(line, err=r.get("traceback") if args.debug else None)

        try:
            with console:
                if stop.signum is None:
                    executor.run(to_build, on_start, on_end, stop)
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
    if stop.signum:
        return stop.exit_code
    return 1 if counts["failed"] or unwritten else 0
