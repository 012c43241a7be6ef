"""One batch job from its YAML entries: options checked by the BuildOptions schema, the model
resolved against the file's folder, the output from its template, and what the plan refuses."""

from __future__ import annotations

import dataclasses
import os
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

from builder.batch_yaml import Entry, FloatText, Problems
from builder.kit.errors import BuilderError, shown
from builder.kit.model_source import hub_id_in, hub_id_shaped, model_name
from builder.kit.options import NOT_IN_OUTPUT, BuildOptions


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


def _resolve_model(model: str, base: Path) -> str:
    local = base / os.path.expanduser(model)
    if local.exists() or not hub_id_shaped(model):
        return os.path.abspath(local)
    return model  # org/name and no such folder: a hub id


def _planned(options: BuildOptions):
    """(refusal, family object) for a job whose checkpoint is a readable folder here: what the
    build's plan refuses (its family, layout and context against the target) or the checkpoint's
    tensors do (one missing, one never read), or None, and the planned family object where the
    plan was made (None when refused). Hub ids and folders that only the nodes see are planned
    when built, (None, None) here; an unreadable checkpoint fails its own job then."""
    from architectures.registry import family_for
    from builder.family_source import plugin_faults_named
    from builder.kit.checkpoint import Checkpoint
    from builder.pipeline import check_reads

    folder = Path(options.model)
    if not (folder / "config.json").is_file():
        return None, None
    try:
        checkpoint = Checkpoint(folder)
    except (BuilderError, OSError):
        return None, None
    try:
        family = family_for(options, checkpoint.config, alone=True)
        with plugin_faults_named(family):
            arch = family(checkpoint, options)
            arch.plan  # noqa: B018 (planning is the check)
            check_reads(arch)  # tensors the checkpoint lacks or the family never reads, from headers alone
    except BuilderError as err:
        return str(err), None
    return None, arch


def _resolved_fields(options: BuildOptions, arch) -> dict:
    """What the build resolves options left unset or at auto to, for an output template, in the
    options' own spellings ({io_dtype} fp16, {graph_capture} on): they read 'auto' or the literal
    'None', so the folder named nothing the build decided. arch: the planned family object, or None
    where the checkpoint is not read here (a hub id, a folder only Ray's nodes see): what its config
    decides is then left out, and refused by _unresolved."""
    from builder.kit.genai_config import resolved_intra_op_threads, resolved_max_length
    from builder.kit.plan import wants_last_logits
    from builder.kit.targets import Target

    target = Target.from_options(options)
    resolved = {
        "accuracy_level": target.default_accuracy_level,
        "target_ort": target.version_text,
        "io_dtype": _dtype_text(target.io_dtype),
        "logits": _logits_text(wants_last_logits(options, target), options),
        "int32_inputs": _on_off(options.int32_inputs == "on"),
    }
    genai = options.format == "genai"  # max length and threads go into genai_config.json alone
    if genai:
        resolved["intra_op_threads"] = resolved_intra_op_threads(options.intra_op_threads, target)
    if arch is None:
        return resolved
    plan = arch.plan
    resolved |= {
        "family": (type(arch).architectures or (type(arch).__name__,))[0],
        "accuracy_level": plan.accuracy_level,
        "context_length": plan.context_length,
        "io_dtype": _dtype_text(plan.io_dtype),
        "residual_dtype": _dtype_text(plan.residual_dtype),
        "logits": _logits_text(plan.last_logits, options),
        "int32_inputs": _on_off(plan.int32_inputs),
        "graph_capture": _on_off(plan.target.graph_capture),  # off for sliding windows, beams, odd head sizes
        "padded_batches": "none" if plan.right_padding is None else _on_off(plan.right_padding),
        "qkv_packing": plan.layout.qkv,
        "mlp_packing": plan.layout.mlp,
        "silu": plan.layout.silu,  # none: the MLP has no SiLU
        "head_norm": plan.layout.head_norm,  # gqa: inside GroupQueryAttention (fused-norm); none: no Q/K norms
    }
    if genai:
        resolved["max_length"] = resolved_max_length(options.max_length, plan.context_length)
    return resolved


def _dtype_text(dtype) -> str:
    return {"float16": "fp16", "float32": "fp32"}.get(str(dtype), str(dtype))


def _on_off(value: bool) -> str:
    return "on" if value else "off"


def _logits_text(last: bool, options: BuildOptions) -> str:
    """--logits resolved, as the report's target.logits: a transformers.js build at auto gets a
    num_logits_to_keep input instead."""
    if last:
        return "last"
    return "num_logits_to_keep" if options.format == "transformers.js" and options.logits == "auto" else "all"


def _unresolved(name: str, options: BuildOptions, planned: bool) -> str:
    """Why a template field has no value before the build, worded to follow 'uses {name},'."""
    from builder.kit.options import GENAI_CONFIG_ONLY

    if name in GENAI_CONFIG_ONLY and options.format != "genai":
        return f"which a --format {options.format} build does not use (it goes into genai_config.json); use"
    if not planned:
        where = "a hub id" if not os.path.isabs(options.model) else "a folder this machine cannot read"
        return (
            f"which this job leaves to the build and the checkpoint's config.json decides, read only when it "
            f"builds ({options.model} is {where}); set it, or use"
        )
    return "which this job leaves unset; set it, or use"


def _model_not_found(given: str, resolved: str) -> str | None:
    """Why a job's model names no local folder here, or None (a hub id is looked up when built)."""
    if not os.path.isabs(resolved):  # owner/name: the hub's own rule, now rather than at its turn
        return _invalid_hub_id(resolved)
    if os.path.isdir(resolved):
        return None
    if given.startswith("~") and os.path.expanduser(given) == given:
        return f"no home folder for {given.split('/')[0]!r}; write the folder's full path"
    if os.path.isabs(os.path.expanduser(given)):
        return f"no folder {resolved}; check the path"
    hub = "" if given.startswith(".") else " (nor a hub id: those are owner/name)"
    if hub_id_in(given) is not None:
        hub = f" (nor a hub id: those are owner/name; for the hub's model write {hub_id_in(given)})"
    return (
        f"no folder {resolved}{hub}; a relative path is read from the batch file's folder, "
        "whatever folder the batch runs from"
    )


def _invalid_hub_id(repo_id: str) -> str | None:
    try:
        from huggingface_hub.utils import validate_repo_id
    except ImportError:  # the build says what to install
        return None
    try:
        validate_repo_id(repo_id)
    except Exception as e:  # HFValidationError
        return f"no folder of that name beside the batch file, and not a valid hub id ({str(e).rstrip('.')})"
    return None


def _model_ambiguous(given: str, base: Path) -> str | None:
    """An owner/name that reads as a hub id (no such folder beside the file) while the current
    folder has one of that name, which the build would have taken: the same file would build
    another checkpoint, or fail, by where it ran."""
    if not hub_id_shaped(given) or (base / given).exists():
        return None
    if not os.path.isdir(given):
        return None
    return (
        f"{given!r} is no folder beside the batch file ({base}), so it reads as a hub id, but the "
        f"current folder has a folder of that name; write the folder's path from the batch file's "
        f"folder or in full ({os.path.abspath(given)}), or run where no such folder is"
    )


def make_job(
    label: str,
    line: int,
    entries: dict[str, Entry],
    base: Path,
    output_root: Path,
    problems: Problems,
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
    if local:
        unfound = _model_not_found(given, values["model"])
    else:  # the nodes look for folders (batch_ray); a hub id is checked alike everywhere
        unfound = None if os.path.isabs(values["model"]) else _invalid_hub_id(values["model"])
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
    refused, arch = _planned(options)
    if refused:  # what the model's family refuses: Qwen3.5 for cuda, fused-norm without q/k norms
        problems.add(line, f"{named}: {refused}")
        return None
    if local and options.verify and options.ep == "cpu":  # the one EP verify runs on; Ray's nodes check their own
        from builder.verify import require_verify_extras

        try:
            require_verify_extras()
        except BuilderError as err:
            where = entries["verify"]
            problems.add(where.line, f"{named}: {err} (verify: at {where.where})")
            return None

    output_line = entries["output"].line if "output" in entries else line
    if options.output:
        fields = {
            "model_name": model_name(options.model),
            **{k: v for k, v in options.to_dict().items() if k not in NOT_IN_OUTPUT},
        }
        resolved = _resolved_fields(options, arch)
        fields = {k: resolved.get(k) if v is None or v == "auto" else v for k, v in fields.items()}
        if isinstance(fields.get("family"), str) and ":" in fields["family"]:
            # module:Class names a folder by its class: the module path's dots and the colon made
            # "out/my_fams.helium:Helium", a name Windows cannot hold
            fields["family"] = fields["family"].rsplit(":", 1)[1]
        try:
            used = _template_fields(options.output)
        except ValueError as err:
            usable = [f for f in fields if not isinstance(fields[f], list)]
            problems.add(
                output_line,
                f"{entries['output'].where}.output: template {options.output!r} {err}; fields: {', '.join(usable)}",
            )
            return None
        unset = [f for f in used if f in fields and fields[f] is None]
        if unset:  # it read 'None', and jobs that differ only there shared a folder
            usable = [f for f in fields if fields[f] is not None and not isinstance(fields[f], list)]
            problems.add(
                output_line,
                f"{entries['output'].where}.output: template {options.output!r} uses {{{unset[0]}}}, "
                f"{_unresolved(unset[0], options, arch is not None)} other fields: {', '.join(usable)}",
            )
            return None
        try:
            # A list has no folder name that is both safe and unambiguous: its patterns are
            # globs ('*.v_proj'), and joined they could read as another list. Refused by name,
            # rather than joined into a name that works for some values and not others.
            listed = [f for f in used if isinstance(fields.get(f), list)]
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
            usable = [f for f in fields if not isinstance(fields[f], list)]  # the lists are refused above
            problems.add(
                output_line,
                f"{entries['output'].where}.output: template {options.output!r} "
                f"has a bad field ({err}); fields: {', '.join(usable)}",
            )
            return None
    else:
        relative = default_output(options).name
    options.output = os.path.abspath(output_root / os.path.expanduser(relative))
    return Job(label, line, options), output_line


def own_output_hint(job: Job, other: Job, varying: list[str]) -> str:
    """How to give two jobs their own outputs. Matrix jobs share one output: template, so
    'give each job its own output' could not be followed there; name what tells the matrix's
    jobs apart (varying: the option names whose values differ across them, for one hint that
    fixes every collision, not one a pair)."""
    if not (job.label.startswith("matrix") and other.label.startswith("matrix")):
        return "give each job its own output"
    fields = [
        "model_name" if k == "model" else k for k in varying if k not in ("output", "int8_layers", "float_layers")
    ]
    named = list(dict.fromkeys(("model_name", "precision", "ep", *fields)))

    def told(options: dict) -> list:
        return [Path(options["model"]).name if k == "model_name" else options[k] for k in named]

    # Jobs that differ only where no template can name them (same-named model folders, lists of
    # patterns) share a folder whatever the template: the hint that named the other fields could
    # not be followed.
    if told(job.options.to_dict()) == told(other.options.to_dict()):
        return "give these jobs their own output: under jobs:, out of the matrix"
    template = "-".join(f"{{{k}}}" for k in named)
    return f'give the matrix an output: template that names what differs, such as output: "{template}"'


def _template_fields(template: str) -> list[str]:
    """The option names a template uses, each as a plain {name}. ValueError, worded to follow
    'template ...', for what makes no stable folder name: an unmatched brace, and reading into a
    field ({model_name.upper} named the folder after a bound method's address, new every run,
    so never up to date). Conversions and format specs are refused too: !r puts quotes in the
    name, and a spec such as :>10 pads it with spaces."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ValueError(
            f"has an unmatched brace ({err}); write each field as {{name}}, and a literal brace as {{{{ or }}}}"
        ) from None
    names = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        field_name = re.split(r"[.\[]", name)[0]
        if field_name != name:
            raise ValueError(f"reads into a field with {{{name}}}; use the field alone, as {{{field_name}}}")
        if conversion or spec:
            written = f"{{{name}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}"
            raise ValueError(f"formats a field with {written}; write it plain, as {{{name}}}")
        names.append(name)
    return names


_FIELDS = {f.name: f for f in dataclasses.fields(BuildOptions)}


def _wrong_type(name: str, e: Entry) -> str | None:
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
        if not all(isinstance(item, str) and not isinstance(item, FloatText) for item in items):
            return f"must be a pattern or a list of patterns, got {shown(value)}; quote each pattern"
    elif f.type.startswith("str") and isinstance(value, (list, dict)):
        axis = "" if e.where == "matrix" else "; to build each value, make it a matrix: axis"
        return f"must be one value, got {shown(value)}{axis}"
    elif (
        f.type.startswith("str")
        and not f.metadata["choices"]
        and (not isinstance(value, str) or isinstance(value, FloatText))
    ):
        if name != "target_ort":  # target-ort: 1 means a version, as 1.30 does
            return f"must be text, got {shown(value)}; quote it if that is the name you mean"
    return None


def _with_key(message: str, e: Entry) -> str:
    """Put 'defaults.block-size:' in front, dropping the CLI flag the schema's message starts with."""
    name = e.key.replace("_", "-")
    message = message.removeprefix(f"{e.where}: ").removeprefix(f"--{name}: ").removeprefix(f"{name} ")
    where = e.key if e.where == "top level" else f"{e.where}.{e.key}"
    if e.bool_word:  # the True or False in the message is YAML's reading of what the file says
        message += f" (YAML reads a bare {e.bool_word} as {str(e.value).lower()})"
    return f"{where}: {message}"
