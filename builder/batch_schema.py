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
the YAML file's folder, so a file means the same from any working directory;
--output-root on the command line is relative to the cwd. A model that is not a
folder there and reads like org/name is a Hugging Face hub id. An output is a
template: {model_name} (the model's last path part) and any option ({precision},
{ep}, {block_size}, ...); without one a job gets the CLI's default name.

The whole file is checked before anything is built. A job is skipped when its
output holds a build report made by this builder version from the same
checkpoint (fingerprint), options and target ONNX Runtime; --force rebuilds.
Since the batch rebuilds its own outputs, overwrite is always on (an overwrite:
key is refused); the builder still refuses to replace a folder that it did not
make, so no output may lie inside another, hold a checkpoint or the summary.
YAML merge keys work as YAML says (a key the job writes wins over a merged one);
top-level keys starting with x- hold anchors and are otherwise ignored.
"""

from __future__ import annotations

import codecs
import dataclasses
import itertools
import os
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from builder.kit.errors import BuilderError
from builder.kit.options import BuildOptions

MERGE = "tag:yaml.org,2002:merge"
TOP_KEYS = ("defaults", "matrix", "jobs", "verify", "output_root", "executor", "ray_address")
EXECUTORS = ("local", "ray")
# Options that do not change the built files. The model is identified by its
# checkpoint fingerprint, not by how its path is spelled; how it is read (read-ahead,
# page cache) leaves the bytes as they are.
NON_BUILD_OPTIONS = {"model", "output", "overwrite", "verify", "read_ahead_mb", "page_cache"}


@dataclass
class Job:
    label: str  # jobs[2] or matrix[5], as errors name it
    line: int
    options: BuildOptions
    name: str = ""  # output folder, relative to the output root when inside it
    output_line: int = 0  # where its output: is written (else the job's line)
    action: str = "build"  # build | skip
    reason: str = ""
    result: dict = field(default_factory=dict)


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


@dataclass
class _Entry:
    key: str  # as written, for messages
    value: Any
    line: int
    where: str  # defaults, matrix, jobs[2]


class _Problems:
    """Every problem in the file, reported together as one error."""

    def __init__(self, path: Path):
        self.path, self.items = path, {}

    def add(self, line: int, message: str) -> None:
        # keyed by text: a bad default would otherwise repeat once per job
        self.items.setdefault(f"{self.path}:{line}: {message}", line)

    def raise_if_any(self) -> None:
        items = sorted(self.items, key=self.items.get)
        if len(items) == 1:
            raise BuilderError(f"{items[0]}\nnothing was built")
        if items:
            raise BuilderError(f"{self.path}: {len(items)} problems, nothing was built:\n  " + "\n  ".join(items))


_YAML = yaml.SafeLoader("")  # constructs values from composed nodes, which keep line numbers


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


class _FloatText(str):
    """A YAML float kept as written: still a number, for the options that must be text."""

    def __repr__(self) -> str:  # as the file wrote it, in messages
        return str(self)


def _value(node: yaml.Node) -> Any:
    # A YAML float forgets how it was written (target-ort: 1.30 would read 1.3), and no
    # option is a float: keep the text.
    if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:float":
        return _FloatText(node.value)
    return _YAML.construct_object(node, deep=True)


_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def read_text(path: Path) -> str:
    """The file's text: UTF-8, or UTF-8/16/32 with a byte-order mark (PowerShell's
    `>` and Out-File write UTF-16 with one); anything else is one clear error."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BuilderError(f"cannot read batch file {path}: {e.strerror or e}") from None
    encoding = next((name for bom, name in _BOMS if data.startswith(bom)), "utf-8")
    if encoding == "utf-8" and len(data) >= 2 and b"\0" in data[:2]:
        encoding = "utf-16-le" if data[1:2] == b"\0" else "utf-16-be"  # UTF-16 without a mark
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        raise BuilderError(
            f"{path}: not {encoding.upper().removesuffix('-SIG')} text (byte {e.object[e.start]:#04x} "
            f"at offset {e.start}); save it as UTF-8 (PowerShell: Set-Content -Encoding utf8) "
            "and run again"
        ) from None


def _compose(path: Path) -> yaml.Node | None:
    text = read_text(path)
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise BuilderError(f"{where}: not valid YAML: {getattr(e, 'problem', None) or e}") from None


def _pairs(
    node: yaml.Node | None, where: str, problems: _Problems, merging: tuple = ()
) -> list[tuple[str, int, yaml.Node]]:
    if node is None or node.tag == "tag:yaml.org,2002:null":
        return []
    if not isinstance(node, yaml.MappingNode):
        problems.add(_line(node), f"{where}: must be a mapping of key: value")
        return []
    pairs, seen, merged = [], {}, []
    for key_node, value_node in node.value:
        if key_node.tag == MERGE:
            merged += _merged(value_node, where, problems, (*merging, id(node)))
            continue
        key = str(_value(key_node))
        norm = key.replace("-", "_")
        if norm in seen:  # plain YAML would silently keep the last one
            problems.add(_line(key_node), f"{where}.{key}: given twice (also on line {seen[norm]})")
        seen[norm] = _line(key_node)
        pairs.append((key, _line(key_node), value_node))
    # YAML's merge keys (<<: *anchor): a key written in the mapping overrides a merged one,
    # and of several merged mappings the first one given wins.
    kept = []
    for key, line, value in merged:
        norm = key.replace("-", "_")
        if norm not in seen:
            seen[norm] = line
            kept.append((key, line, value))
    return kept + pairs


def _merged(node: yaml.Node, where: str, problems: _Problems, merging: tuple) -> list[tuple[str, int, yaml.Node]]:
    """The pairs a merge key brings in, each merged mapping's own merges applied; the YAML
    nodes are left as they are, since an anchored mapping is also read where it was written."""
    pairs = []
    for sub in node.value if isinstance(node, yaml.SequenceNode) else [node]:
        if id(sub) in merging:
            problems.add(_line(sub), f"{where}.<<: merges the mapping it is in; merge another one")
            continue
        if not isinstance(sub, yaml.MappingNode):
            problems.add(
                _line(sub),
                f"{where}.<<: merges mappings: <<: *name or <<: [*a, *b], where &name marks a mapping "
                "(x-name: &name {...})",
            )
            continue
        pairs += _pairs(sub, where, problems, merging)
    return pairs


def _entries(node, where: str, problems: _Problems) -> dict[str, _Entry]:
    return {
        key.replace("-", "_"): _Entry(key, _value(value), line, where)
        for key, line, value in _pairs(node, where, problems)
    }


def _matrix(line: int, node, problems: _Problems):
    """List values are axes; scalars (e.g. the output template) apply to every job; exclude:
    lists the combinations to leave out, each by some of its axes' values."""
    axes, lists, exclude = [], [], None
    for key, key_line, value in _pairs(node, "matrix", problems):
        norm = key.replace("-", "_")
        if norm == "exclude":
            exclude = (key_line, value)
        elif isinstance(value, yaml.SequenceNode):
            if not value.value:
                problems.add(key_line, f"matrix.{key}: empty list, so the matrix has no jobs")
            axes.append([(norm, _Entry(key, _value(item), _line(item), "matrix")) for item in value.value])
            lists.append(norm)
        else:
            axes.append([(norm, _Entry(key, _value(value), key_line, "matrix"))])
    excluded = _matrix_exclude(exclude, lists, problems) if exclude else []
    used = [False] * len(excluded)
    for i, combination in enumerate(itertools.product(*axes) if axes else []):
        values = dict(combination)
        hits = [j for j, (_, wanted) in enumerate(excluded) if all(values[k].value == v for k, v in wanted.items())]
        for j in hits:
            used[j] = True
        if not hits:  # the label errors give a matrix job names its combination
            named = ", ".join(f"{values[k].key} {values[k].value}" for k in lists)
            yield f"matrix[{i}]", line, values, f"matrix[{i}] ({named})" if named else f"matrix[{i}]"
    for (entry_line, wanted), hit in zip(excluded, used):
        if not hit:
            shown = ", ".join(f"{k.replace('_', '-')}: {v}" for k, v in wanted.items())
            problems.add(entry_line, f"matrix.exclude: {{{shown}}} matches no combination of the matrix's values")


def _matrix_exclude(exclude: tuple[int, yaml.Node], lists: list[str], problems: _Problems) -> list:
    """matrix.exclude -> [(line, {axis: value})]; each entry names matrix axes only."""
    line, node = exclude
    if not isinstance(node, yaml.SequenceNode):
        problems.add(line, "matrix.exclude: must be a list of combinations to leave out (- ep: cuda)")
        return []
    entries = []
    for i, item in enumerate(node.value):
        pairs = _pairs(item, f"matrix.exclude[{i}]", problems)
        wanted = {}
        for key, key_line, value in pairs:
            norm = key.replace("-", "_")
            if norm not in lists:
                axes = ", ".join(k.replace("_", "-") for k in lists) or "none"
                problems.add(key_line, f"matrix.exclude[{i}].{key}: not a list in the matrix (its lists: {axes})")
            wanted[norm] = _value(value)
        if pairs and len(wanted) == len(pairs) and all(k in lists for k in wanted):
            entries.append((_line(item), wanted))
    return entries


def _resolve_model(model: str, base: Path) -> str:
    local = base / os.path.expanduser(model)
    if local.exists() or model.startswith((".", "/", "~")) or model.count("/") != 1:
        return os.path.abspath(local)
    return model  # org/name and no such folder: a hub id


def _plan_refusal(options: BuildOptions) -> str | None:
    """What the build's plan refuses for a job whose checkpoint is a readable folder here (its
    family, layout and context against the target), or None. Hub ids and folders that only the
    nodes see are planned when built; an unreadable checkpoint fails its own job then."""
    from architectures.registry import builder_class_for
    from builder.kit.checkpoint import Checkpoint

    folder = Path(options.model)
    if not (folder / "config.json").is_file():
        return None
    try:
        checkpoint = Checkpoint(folder)
    except (BuilderError, OSError):
        return None
    try:
        builder_class_for(checkpoint.config)(checkpoint, options).plan  # noqa: B018 (planning is the check)
    except BuilderError as err:
        return str(err)
    return None


def _model_not_found(given: str, resolved: str) -> str | None:
    """Why a job's model names no local folder here, or None (a hub id is looked up when built)."""
    if not os.path.isabs(resolved) or os.path.isdir(resolved):
        return None
    if given.startswith("~") and os.path.expanduser(given) == given:
        return f"no home folder for {given.split('/')[0]!r}; write the folder's full path"
    if os.path.isabs(os.path.expanduser(given)):
        return f"no folder {resolved}"
    hub = "" if given.startswith(".") else " (nor a hub id: those are owner/name)"
    return (
        f"no folder {resolved}{hub}; a relative path is read from the batch file's folder, "
        "whatever folder the batch runs from"
    )


def _model_ambiguous(given: str, base: Path) -> str | None:
    """An owner/name that reads as a hub id (no such folder beside the file) while the current
    folder has one of that name, which the build would have taken: the same file would build
    another checkpoint, or fail, by where it ran."""
    if given.startswith((".", "/", "~")) or given.count("/") != 1 or (base / given).exists():
        return None
    if not os.path.isdir(given):
        return None
    return (
        f"{given!r} is no folder beside the batch file ({base}), so it reads as a hub id, but the "
        f"current folder has a folder of that name; write the folder's path from the batch file's "
        f"folder or in full ({os.path.abspath(given)}), or run where no such folder is"
    )


def _make_job(
    label: str,
    line: int,
    entries: dict[str, _Entry],
    base: Path,
    output_root: Path,
    problems: _Problems,
    named: str | None = None,
    local: bool = True,
) -> tuple[Job, int] | None:
    """The job `entries` describe, checked; None after adding its problems. named: how errors
    name it (a matrix job with its combination), else its label. local: the builds run on this
    machine, so its model folders are theirs (on Ray the nodes check them)."""
    named = named or label
    from builder.kit.targets import Target
    from builder.pipeline import default_output

    values, ok = {}, True
    for name, e in entries.items():  # one key at a time, so each error names its own line
        wrong = _wrong_type(name, e)
        if wrong:
            problems.add(e.line, _with_key(wrong, e))
            ok = False
            continue
        try:
            values[name] = getattr(BuildOptions.from_mapping({e.key: e.value}, f"{e.where}"), name)
            BuildOptions(**{"model": "-", name: values[name]}).validated()
        except BuilderError as err:
            problems.add(e.line, _with_key(str(err), e))
            ok = False
    if not ok:
        return None
    if not values.get("model"):
        problems.add(line, f"{named}: no model; every job needs model: (a local folder or a hub id)")
        return None
    given = values["model"]
    values["model"] = _resolve_model(given, base)
    ambiguous = _model_ambiguous(given, base) if local else None
    if ambiguous:
        problems.add(entries["model"].line, _with_key(ambiguous, entries["model"]))
        return None
    unfound = _model_not_found(given, values["model"]) if local else None
    if unfound:  # with the file's other problems: each failed only at its turn, once the rest had run
        problems.add(entries["model"].line, _with_key(unfound, entries["model"]))
    options = BuildOptions(**values)
    options.overwrite = True
    try:  # what no single key shows: combinations such as -p fp32 -e cuda
        options.validated()
        Target.from_options(options)
    except BuilderError as err:
        problems.add(line, f"{named}: {err}")
        return None
    refused = _plan_refusal(options)
    if refused:  # what the model's family refuses: Qwen3.5 for cuda, fused-norm without q/k norms
        problems.add(line, f"{named}: {refused}")
        return None

    output_line = entries["output"].line if "output" in entries else line
    if options.output:
        fields = {
            "model_name": Path(options.model.rstrip("/")).name,
            **{k: v for k, v in options.to_dict().items() if k not in NON_BUILD_OPTIONS},
        }
        try:
            # A list has no folder name that is both safe and unambiguous: its patterns are
            # globs ('*.v_proj'), and joined they could read as another list. Refused by name,
            # rather than joined into a name that works for some values and not others.
            listed = [f for f in _template_fields(options.output) if isinstance(fields.get(f), list)]
            if listed:
                problems.add(
                    output_line,
                    f"{entries['output'].where}.output: template {options.output!r} uses "
                    f"{{{listed[0]}}}, a list of patterns, which makes no folder name; "
                    "leave it out and give such jobs their own output: under jobs:",
                )
                return None
            relative = options.output.format(**fields)
        except (KeyError, IndexError, ValueError) as err:
            problems.add(
                output_line,
                f"{entries['output'].where}.output: template {options.output!r} "
                f"has a bad field ({err}); fields: {', '.join(fields)}",
            )
            return None
    else:
        relative = default_output(options).name
    options.output = os.path.abspath(output_root / os.path.expanduser(relative))
    return Job(label, line, options), output_line


def _own_output_hint(job: Job, other: Job, varying: list[str]) -> str:
    """How to give two jobs their own outputs. Matrix jobs share one output: template, so
    'give each job its own output' could not be followed there; name what tells the matrix's
    jobs apart (varying: the option names whose values differ across them, for one hint that
    fixes every collision, not one a pair)."""
    if not (job.label.startswith("matrix") and other.label.startswith("matrix")):
        return "give each job its own output"
    a, b = job.options.to_dict(), other.options.to_dict()
    if Path(a["model"]).name == Path(b["model"]).name and all(a[k] == b.get(k) for k in varying if k != "model"):
        return "give these jobs their own output: under jobs:, out of the matrix"  # same-named folders
    fields = [
        "model_name" if k == "model" else k for k in varying if k not in ("output", "int8_layers", "float_layers")
    ]
    named = "-".join(f"{{{k}}}" for k in dict.fromkeys(("model_name", "precision", "ep", *fields)))
    return f'give the matrix an output: template that names what differs, such as output: "{named}"'


def _template_fields(template: str) -> list[str]:
    """The option names a template uses: 'int8_layers' for {int8_layers[0]} too."""
    names = (name for _, name, _, _ in string.Formatter().parse(template) if name)
    return [re.split(r"[.\[]", name)[0] for name in names]


_FIELDS = {f.name: f for f in dataclasses.fields(BuildOptions)}


def _wrong_type(name: str, e: _Entry) -> str | None:
    """What BuildOptions would take in silently, turned into text: model: [a, b] named a
    folder "['a', 'b']", int8-layers: 5 a pattern '5'."""
    if name == "overwrite":
        return (
            "batch always replaces the outputs it built and skips those up to date; "
            "drop overwrite: (--force rebuilds every job)"
        )
    f, value = _FIELDS.get(name), e.value
    if f is None:
        return None  # unknown keys: BuildOptions says so
    if value is None:
        if "None" in str(f.type):  # accuracy-level: null is the option's own default (auto)
            return None
        # `precision:` with nothing after it replaced defaults: with the builder's default.
        return "has no value; give one, or leave the key out"
    if f.type.startswith("list"):
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(item, str) and not isinstance(item, _FloatText) for item in items):
            return f"must be a pattern or a list of patterns, got {value!r}; quote each pattern"
    elif f.type.startswith("str") and isinstance(value, (list, dict)):
        axis = "" if e.where == "matrix" else "; to build each value, make it a matrix: axis"
        return f"must be one value, got {value!r}{axis}"
    elif (
        f.type.startswith("str")
        and not f.metadata["choices"]
        and (not isinstance(value, str) or isinstance(value, _FloatText))
    ):
        if name != "target_ort":  # target-ort: 1 means a version, as 1.30 does
            return f"must be text, got {value!r}; quote it if that is the name you mean"
    return None


def _with_key(message: str, e: _Entry) -> str:
    """Put 'defaults.block-size:' in front, dropping the CLI flag the schema's message starts with."""
    name = e.key.replace("_", "-")
    message = message.removeprefix(f"{e.where}: ").removeprefix(f"--{name}: ").removeprefix(f"{name} ")
    where = e.key if e.where == "top level" else f"{e.where}.{e.key}"
    return f"{where}: {message}"


def load_batch(path: str | Path, output_root: str | Path | None = None, executor: str | None = None) -> Batch:
    """Read and check a batch file; raise one BuilderError listing every problem. executor: the
    command line's --executor, over the file's; with the local one (the default) model folders
    are checked here too, on Ray the nodes check them."""
    path = Path(path)
    problems = _Problems(path)
    _YAML.constructed_objects.clear()  # it caches by node; nothing from an earlier file is wanted
    base = path.parent.absolute()
    top = {key: (line, node) for key, line, node in _pairs(_compose(path), "top level", problems)}
    for key, (line, _) in top.items():
        # x- keys hold YAML anchors for jobs to merge (<<: *name), as in Docker Compose:
        # an anchor under defaults: would apply to every job.
        if key not in TOP_KEYS and not key.startswith("x-"):
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
        value = _value(node)
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
        executor = _value(node)
        if executor not in EXECUTORS:
            problems.add(line, f"executor: {executor!r} is not valid; choose one of {', '.join(EXECUTORS)}")
    local = (run_on or executor or "local") == "local"
    if "ray_address" in top:
        line, node = top["ray_address"]
        ray_address = _value(node)
        if not isinstance(ray_address, str) or not ray_address:
            problems.add(line, "ray_address: must be an address like HOST:6379 or ray://HOST:10001")

    defaults = _entries(top["defaults"][1], "defaults", problems) if "defaults" in top else {}
    if "verify" in top:
        line, node = top["verify"]
        if "verify" in defaults:  # which one wins would be a guess
            problems.add(
                line,
                f"verify: given at the top level and as defaults.verify (line {defaults['verify'].line}); "
                "keep one (a job's own verify: wins over either)",
            )
        else:
            defaults["verify"] = _Entry("verify", _value(node), line, "top level")

    specs = list(_matrix(*top["matrix"], problems)) if "matrix" in top else []
    if "jobs" in top:
        line, node = top["jobs"]
        if isinstance(node, yaml.SequenceNode):
            specs += [
                (f"jobs[{i}]", _line(item), _entries(item, f"jobs[{i}]", problems), f"jobs[{i}]")
                for i, item in enumerate(node.value)
            ]
        elif node.tag != "tag:yaml.org,2002:null":
            problems.add(line, "jobs: must be a list of jobs (- model: ...)")
    if not specs and not problems.items:
        problems.add(1, "no jobs: add a jobs: list or a matrix:")

    in_matrix = [entries for label, _, entries, _ in specs if label.startswith("matrix")]
    varying = [  # options whose values differ across the matrix's jobs, in the file's order
        k
        for k in dict.fromkeys(k for entries in in_matrix for k in entries)
        if len({repr(entries[k].value) if k in entries else None for entries in in_matrix}) > 1
    ]
    jobs, outputs, around = [], {}, {}  # around: each folder that holds an output -> its job
    for label, line, entries, named in specs:
        made = _make_job(label, line, {**defaults, **entries}, base, root, problems, named, local)
        if made is None:
            continue
        job, job.output_line = made
        # Symlinks resolved, as the build resolves them; a build replaces its whole output
        # folder, so one inside another is refused by whichever build runs second.
        real = Path(os.path.realpath(job.options.output))
        other = outputs.get(real)
        if other:
            problems.add(
                job.output_line,
                f"{label}.output: {job.options.output} is also the output of "
                f"{other.label} (line {other.line}); {_own_output_hint(job, other, varying)}",
            )
            continue
        outer = next((outputs[p] for p in real.parents if p in outputs), None)
        inner = around.get(real)
        if outer or inner:
            how = f"lies inside {outer.options.output}" if outer else f"contains {inner.options.output}"
            other = outer or inner
            problems.add(
                job.output_line,
                f"{label}.output: {job.options.output} {how}, the output of {other.label} "
                f"(line {other.output_line}); a build replaces its whole folder, so give each "
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
