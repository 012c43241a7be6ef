"""The batch file: YAML -> checked jobs, for `python -m builder batch FILE.yaml`.

    output_root: ../out          # where relative outputs go (default: the YAML file's folder)
    executor: ray                # where builds run: local processes (default) or a Ray cluster
    ray_address: head:6379       # the cluster to join (default: $RAY_ADDRESS, else a local one)
    verify: true                 # shorthand for defaults.verify (not with it)
    defaults:                    # options every job starts from
      block-size: 32
    matrix:                      # one job per combination of the list values
      model: [Qwen/Qwen3-0.6B, Qwen/Qwen3-4B]
      precision: [int4]
      ep: [cpu, webgpu]
      output: "{model_name}-{precision}-{ep}"
      exclude:                   # combinations left out, each named by some of its lists' values
        - {model: Qwen/Qwen3-4B, ep: webgpu}
    jobs:                        # explicit jobs, in addition to the matrix
      - model: ../examples/tiny-qwen3
        precision: fp32
        output: tiny-fp32-cpu

Every key under defaults, matrix and a job is a build option, named as the CLI's
long flag ('-' or '_'), and read by the same BuildOptions schema as the CLI.
Relative paths in the file (model folders, output_root, output) resolve against
the YAML file's folder, so a file means the same from any working directory
(a family given as module:Class is imported from the cwd or PYTHONPATH, as --family is);
--output-root on the command line is relative to the cwd. A model that is not a
folder there and reads like org/name is a Hugging Face hub id. An output is a
template: {model_name} (the model's last path part) and any option ({precision},
{ep}, {block_size}, ...); an option left unset reads as the build resolves it
({accuracy_level}, {target_ort}, and for a local checkpoint {family} and {context_length}; a
family set as module:Class reads as its Class),
and is refused where that is not known; without one a job gets the CLI's default name.

The whole file is checked before anything is built. A job is skipped when its
output holds a build report made by this builder version from the same
checkpoint (fingerprint), options and target ONNX Runtime; --force rebuilds.
Since the batch rebuilds its own outputs, overwrite is always on (an overwrite:
key is refused); the builder still refuses to replace a folder that it did not
make, so no output may lie inside another, hold a checkpoint or the summary.
YAML merge keys work as YAML says (a key the job writes wins over a merged one);
top-level keys starting with x- hold anchors and are otherwise ignored.

Reading the YAML with its line numbers is builder.batch_yaml's; making one job from its
entries, builder.batch_jobs'. Here: the top-level keys, and the checks across jobs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from builder.batch_jobs import Job, make_job, own_output_hint
from builder.batch_yaml import (
    Entry,
    Problems,
    compose,
    entries_of,
    line_of,
    mapping_pairs,
    matrix_specs,
    reset,
    value_of,
)

TOP_KEYS = ("defaults", "matrix", "jobs", "verify", "output_root", "executor", "ray_address")
EXECUTORS = ("local", "ray")


@dataclass
class Batch:
    path: Path
    output_root: Path
    jobs: list[Job]
    executor: str | None = None  # local | ray; the command line's --executor wins
    ray_address: str | None = None
    # Where output_root came from, for messages: "--output-root", "FILE:LINE: output_root:",
    # or "" (the batch file's folder).
    output_root_from: str = ""


def load_batch(path: str | Path, output_root: str | Path | None = None, executor: str | None = None) -> Batch:
    """Read and check a batch file; raise one BuilderError listing every problem. executor: the
    command line's --executor, over the file's; with the local one (the default) model folders
    are checked here too, on Ray the nodes check them."""
    path = Path(path)
    problems = Problems(path)
    reset()  # nothing from an earlier file is wanted
    base = path.parent.absolute()
    root_node = compose(path)
    if isinstance(root_node, yaml.SequenceNode):  # a list of jobs, as a new user writes one
        problems.add(
            line_of(root_node),
            "the file is a list; a batch file is a mapping of defaults:, matrix: and jobs: (configs/tiny.yaml "
            "is an example): to list jobs, put the list under jobs:",
        )
        problems.raise_if_any()
    top = {key: (line, node) for key, line, node in mapping_pairs(root_node, "top level", problems)}
    unknown = [(key, line) for key, (line, _) in top.items() if key not in TOP_KEYS and not key.startswith("x-")]
    if top and len(unknown) == len(top) and len(unknown) > 1:
        # Not a batch file at all (a config.json, a job list without jobs:): one problem, not one a key.
        problems.add(
            unknown[0][1],
            f"no top-level key of a batch file ({', '.join(k for k, _ in unknown[:3])}, ...); a batch file has "
            f"{', '.join(TOP_KEYS)} (configs/tiny.yaml is an example)",
        )
        unknown = []
    for key, line in unknown:
        # x- keys hold YAML anchors for jobs to merge (<<: *name), as in Docker Compose:
        # an anchor under defaults: would apply to every job.
        problems.add(
            line,
            f"{key}: unknown top-level key; expected {', '.join(TOP_KEYS)} "
            "(build options go under defaults:, matrix: or a job; a key starting with x- "
            "holds YAML anchors: x-base: &base {...})",
        )

    root, root_from = base, ""
    if output_root is not None:
        root, root_from = Path(os.path.abspath(output_root)), "--output-root"
    elif "output_root" in top:
        line, node = top["output_root"]
        value = value_of(node)
        if isinstance(value, str) and value:
            # Normalized as the outputs are, so that each is seen to lie under it (a `..` in it
            # hid them, and the up-front check of the output root was skipped).
            root = Path(os.path.abspath(base / os.path.expanduser(value)))
            root_from = f"{path}:{line}: output_root:"
        else:
            problems.add(line, "output_root: must be a folder path")

    run_on, executor, ray_address = executor, None, None
    if "executor" in top:
        line, node = top["executor"]
        executor = value_of(node)
        if executor not in EXECUTORS:
            problems.add(line, f"executor: {executor!r} is not valid; choose one of {', '.join(EXECUTORS)}")
    local = (run_on or executor or "local") == "local"
    if "ray_address" in top:
        line, node = top["ray_address"]
        ray_address = value_of(node)
        if not isinstance(ray_address, str) or not ray_address:
            problems.add(line, "ray_address: must be an address like HOST:6379 or ray://HOST:10001")

    defaults = entries_of(top["defaults"][1], "defaults", problems) if "defaults" in top else {}
    if "verify" in top:
        line, node = top["verify"]
        if "verify" in defaults:  # which one wins would be a guess
            problems.add(
                line,
                f"verify: given at the top level and as defaults.verify (line {defaults['verify'].line}); "
                "keep one (a job's own verify: wins over either)",
            )
        else:
            defaults["verify"] = Entry("verify", value_of(node), line, "top level")

    specs = list(matrix_specs(*top["matrix"], problems)) if "matrix" in top else []
    if "jobs" in top:
        line, node = top["jobs"]
        if isinstance(node, yaml.SequenceNode):
            specs += _job_specs(node, problems)
        elif node.tag != "tag:yaml.org,2002:null":
            problems.add(line, "jobs: must be a list of jobs (- model: ...)")
    if not specs and not problems.items:
        if "matrix" in top:  # a matrix whose exclude: leaves no combination
            problems.add(top["matrix"][0], "matrix: its exclude: leaves out every combination, so there are no jobs")
        else:
            problems.add(1, "no jobs: add a jobs: list or a matrix:")

    in_matrix = [entries for label, _, entries, _ in specs if label.startswith("matrix")]
    varying = [  # options whose values differ across the matrix's jobs, in the file's order
        k
        for k in dict.fromkeys(k for entries in in_matrix for k in entries)
        if len({repr(entries[k].value) if k in entries else None for entries in in_matrix}) > 1
    ]
    jobs, outputs, around = [], {}, {}  # around: each folder that holds an output -> its job
    # A matrix job's combination, as its other errors name it: matrix[7] alone left the user to count.
    combination = {label: named[len(label) + 2 : -1] if named != label else "" for label, _, _, named in specs}

    def output_of(job: Job, line: int) -> str:
        return (
            f"{job.label} ({combination[job.label]}; line {line})"
            if combination[job.label]
            else f"{job.label} (line {line})"
        )

    for label, line, entries, named in specs:
        made = make_job(label, line, {**defaults, **entries}, base, root, problems, named, local)
        if made is None:
            continue
        job, job.output_line = made
        own = f"{label}.output" + (f" ({combination[label]})" if combination[label] else "")
        # Symlinks resolved, as the build resolves them; a build replaces its whole output
        # folder, so one inside another is refused by whichever build runs second.
        real = Path(os.path.realpath(job.options.output))
        other = outputs.get(real)
        if other:
            problems.add(
                job.output_line,
                f"{own}: {job.options.output} is also the output of "
                f"{output_of(other, other.line)}; {own_output_hint(job, other, varying)}",
            )
            continue
        outer = next((outputs[p] for p in real.parents if p in outputs), None)
        inner = around.get(real)
        if outer or inner:
            how = f"lies inside {outer.options.output}" if outer else f"contains {inner.options.output}"
            other = outer or inner
            problems.add(
                job.output_line,
                f"{own}: {job.options.output} {how}, the output of {output_of(other, other.output_line)}; "
                "a build replaces its whole folder, so give each "
                "job a folder outside the others'",
            )
            continue
        outputs[real] = job
        around.update((p, job) for p in real.parents if p not in around)
        output = Path(job.options.output)
        job.name = str(output.relative_to(root)) if output.is_relative_to(root) else str(output)
        jobs.append(job)
    # The build would find its output taken by the checkpoint only once it ran.
    checkpoints = {Path(os.path.realpath(j.options.model)): j for j in jobs if os.path.isabs(j.options.model)}
    for job in jobs:
        real = Path(os.path.realpath(job.options.output))
        found = next(((c, o) for c, o in checkpoints.items() if c.is_relative_to(real)), None)
        if found:
            checkpoint, owner = found
            how = "is the checkpoint folder" if checkpoint == real else f"contains the checkpoint {owner.options.model}"
            problems.add(
                job.output_line,
                f"{job.label}.output: {job.options.output} {how} of {owner.label}; a build replaces "
                "its whole output folder, so choose an output outside the checkpoint",
            )
    problems.raise_if_any()
    # A build reads the bytes the page cache lacks with O_DIRECT, which leaves them uncached:
    # every job but the last of each checkpoint reads through the cache instead, so the
    # jobs after it find the checkpoint there rather than on the disk.
    last = {job.options.model: job for job in jobs}
    for job in jobs:
        if last[job.options.model] is not job:
            job.options.page_cache = True
    return Batch(path, root, jobs, executor, ray_address, root_from)


def _job_specs(node: yaml.SequenceNode, problems: Problems) -> list:
    """The jobs: list's items that are jobs, as matrix_specs gives them. An item that is no
    mapping is refused and made no job: it became one of defaults: alone, so a `- int4` also
    read as taking another job's output, and a `-` whose options were all commented out built
    the defaults in silence."""
    specs = []
    for i, item in enumerate(node.value):
        label = f"jobs[{i}]"
        if item.tag == "tag:yaml.org,2002:null":
            problems.add(
                line_of(item),
                f"{label}: an empty job (a - with nothing after it); give it its options, or remove the - "
                "(a job of the defaults alone is - {})",
            )
        elif isinstance(item, yaml.MappingNode):
            specs.append((label, line_of(item), entries_of(item, label, problems), label))
        else:
            mapping_pairs(item, label, problems)  # says it must be a mapping
    return specs
