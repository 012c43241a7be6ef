"""Where a batch writes, checked before any build runs: the output root, each job's output
folder, and whether a folder takes files at all."""

from __future__ import annotations

import os
from pathlib import Path

from builder.batch_jobs import Job
from builder.batch_schema import Batch
from builder.kit.errors import BuilderError


def check_output_root(batch: Batch, jobs: list[Job]) -> None:
    """Refuse, before any build runs, an output root that the jobs to build cannot write, and
    the folder of any output elsewhere (each such job failed at its turn before)."""
    if any(Path(j.options.output).is_relative_to(batch.output_root) for j in jobs):
        problem = unwritable(batch.output_root)
        if problem:
            where, fix = output_root_source(batch)
            raise BuilderError(f"{where}: cannot write the outputs there ({problem}); {fix} (nothing was built)")
    problems, tried = [], set()
    for job in jobs:
        parent = Path(job.options.output).parent
        if parent == batch.output_root or parent in tried:
            continue
        tried.add(parent)
        problem = unwritable(parent)
        if problem:
            problems.append(
                f"{where_written(batch, job)}: cannot write {job.options.output} in {parent} ({problem}); "
                "give the job another output:"
            )
    if problems:
        raise BuilderError("\n  ".join(["outputs the builds cannot write (nothing was built):", *problems]))


def check_outputs(batch: Batch, jobs: list[Job]) -> None:
    """Refuse, before any build runs, outputs their builds would refuse: a file, a folder this
    builder did not make, or one holding files it did not write. Found at each job's turn,
    they failed the batch after the jobs before them had run."""
    from builder.output_dir import check_output_free, output_folder

    problems = []
    for job in jobs:
        try:
            # output_folder: where the build writes, as staged_output checks it (a link's target; a loop of
            # links is refused there, which had failed only at the job's turn)
            check_output_free(output_folder(Path(job.options.output), in_batch=True), overwrite=True, in_batch=True)
        except BuilderError as e:
            problems.append(f"{where_written(batch, job)}: {e}")
    if problems:
        raise BuilderError("\n  ".join(["outputs the builds would refuse (nothing was built):", *problems]))


def where_written(batch: Batch, job: Job) -> str:
    """Where a message about a job's output points: the file, the line of its output: (else of
    the job) and the job, as the file's other problems are named (the output's name alone left
    a matrix job, or one whose output a template made, to be found by hand)."""
    return f"{batch.path}:{job.output_line}: {job.label}.output"


def check_hub_models(jobs: list[Job]) -> None:
    """Refuse, before any build runs, jobs that would build a hub id which is not in the Hugging
    Face cache while HF_HUB_OFFLINE is set: each failed at its turn, after the jobs before it
    (and --dry-run called them builds). Jobs skipped as up to date need no checkpoint."""
    from builder.kit.model_source import cached_hub_snapshot, hub_download_command, hub_offline, is_hub_id

    if not hub_offline():
        return
    missing = dict.fromkeys(
        j.options.model for j in jobs if is_hub_id(j.options.model) and cached_hub_snapshot(j.options.model) is None
    )
    if missing:
        lines = [f"{m}: download it where you have network ({hub_download_command(m)})" for m in missing]
        raise BuilderError(
            "\n  ".join(
                [
                    "hub ids not in the Hugging Face cache, and HF_HUB_OFFLINE is set (nothing was built; "
                    "or use local folders):",
                    *lines,
                ]
            )
        )


def output_root_source(batch: Batch, summary: bool = False) -> tuple[str, str]:
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
