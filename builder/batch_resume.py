"""Whether a batch job's output is up to date: its files as its report recorded them, built by
this builder from the same checkpoint with options that resolve the same way."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timezone
from pathlib import Path

from builder.batch_exec import report_fields
from builder.family_source import builder_source_digest, family_name, family_source_digest, plugin_faults_named
from builder.kit.errors import BuilderError
from builder.kit.genai_config import CONFIG_NAME
from builder.kit.options import NOT_IN_OUTPUT, RESOLVED_BY_PLAN, BuildOptions
from builder.output_dir import CONFIG_FILES, REPORT_NAME
from builder.version import __version__


def rebuild_reason(options: BuildOptions, fingerprints: dict | None = None) -> str | None:
    """Why this job's output must be (re)built, or None when it is up to date. fingerprints:
    those taken so far in this batch run, by checkpoint folder, so that jobs of one checkpoint
    hash it once (checkpoint-hash: true reads every weight byte)."""
    from architectures.registry import family_for
    from builder.kit.checkpoint import Checkpoint
    from builder.kit.model_source import cached_hub_snapshot, is_hub_id
    from builder.kit.targets import Target

    output = Path(options.output)
    if not (output / REPORT_NAME).is_file():
        return "no build_report.json in the existing folder" if output.exists() else "new"
    try:
        report = json.loads((output / REPORT_NAME).read_text())
    except (OSError, ValueError):
        return f"{REPORT_NAME} unreadable"
    malformed = _malformed(report)
    if malformed:
        return f"{REPORT_NAME} {malformed}"
    if report.get("builder_version") != __version__:
        return f"builder {report.get('builder_version')} -> {__version__}"
    code = builder_source_digest()
    if code is not None and report.get("builder_source") != code:
        return "the builder's code changed" if "builder_source" in report else "no record of the builder's code"
    damaged = damaged_file(output, report)
    if damaged:
        return damaged
    # An option newer than the report is compared at its default, what the build then did (where a
    # family's default now resolves otherwise, _resolved_differently and _stream_predated say so).
    old, new = {**BuildOptions().to_dict(), **(report.get("options") or {})}, options.to_dict()
    inert = set(options.inert_options()) if old.get("precision") == options.precision else set()
    changed = {k for k in set(old) | set(new) if k not in NOT_IN_OUTPUT | inert and old.get(k) != new.get(k)}
    resolved = RESOLVED_BY_PLAN | resolved_family(report)
    if changed - resolved:
        return "options changed: " + ", ".join(k.replace("_", "-") for k in sorted(changed - resolved))
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
                return _stream_predated(report) or _padding_predated(report) or _uncached_hub_reason(options, report)
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
            family = family_for(options, checkpoint.config, alone=True)
        except BuilderError:
            return "architecture unsupported"  # the build itself says why
        name = family_name(family)
        if name != recorded["family"]:
            return f"builder family {recorded['family']} -> {name}"
        digest = family_source_digest(family)
        if recorded.get("family_source") != digest:
            return f"the source of {name} changed" if "family_source" in recorded else f"no record of {name}'s source"
    # Also with the options as they were: what auto resolves to can change with the builder
    # (Gemma 3's webgpu activations became fp32), and the output must follow.
    differs = _resolved_differently(options, checkpoint, report, bool(changed))
    if differs:
        return differs
    return _unverified(options, report)


def _unverified(options: BuildOptions, report: dict) -> str | None:
    """The reason to rebuild an output for a verify: true job whose build did not verify, where a
    verify would run: on webgpu it records only "not run", so the rebuild gained nothing."""
    from builder.verify import verify_not_run

    if options.verify and "verify" not in report and not verify_not_run(options.ep):
        return "verify asked for, and the existing build was not verified"
    return None


def resolved_family(report: dict) -> set[str]:
    """{"family"} where the report records the class that built it, which the check below compares
    with the class the job's family: resolves to: `family: Qwen3ForCausalLM` (or
    architectures.qwen3:Qwen3Builder) written out for a checkpoint whose config.json names that family
    builds the same bytes, and was rebuilt as "options changed". A report from before the class was
    recorded has only the option as written to go by."""
    return {"family"} if (report.get("checkpoint") or {}).get("family") else set()


def _resolved_differently(options: BuildOptions, checkpoint, report: dict, changed: bool = True) -> str | None:
    """What the job's options resolve to, where it differs from what its output was built with.
    changed: whether the options as written differ (else the builder resolves them otherwise now)."""
    from architectures.registry import family_for
    from builder.kit.genai_config import resolved_intra_op_threads, resolved_max_length
    from builder.pipeline import target_record

    try:
        family = family_for(options, checkpoint.config, alone=True)
        with plugin_faults_named(family):  # a user's family that raises is a refusal, not a crash
            plan = family(checkpoint, options).plan
    except BuilderError:
        return "options changed (the build refuses them; it says why)" if changed else "the build now refuses them"
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
    # Reports from before --residual-dtype: the stream was the activations' dtype.
    then.setdefault("target.residual_dtype", then.get("target.io_dtype"))
    # Reports from before target.padding: every graph read a batch's pads on the right, which
    # transformers.js folders now do not (left-padded rows came out wrong).
    then.setdefault("target.padding", "right")
    # Reports from before target.recurrent_padding: recurrent layers took in a right-padded batch's pads.
    then.setdefault("target.recurrent_padding", None if now["target.recurrent_padding"] is None else "absorbed")
    old = report.get("options") or {}
    now["max_length"] = resolved_max_length(options.max_length, plan.context_length)
    then["max_length"] = resolved_max_length(old.get("max_length"), then["context_length"] or plan.context_length)
    now["intra_op_threads"] = resolved_intra_op_threads(options.intra_op_threads, plan.target)
    then["intra_op_threads"] = resolved_intra_op_threads(old.get("intra_op_threads"), plan.target)
    inert = set(options.inert_options())  # accuracy level of a float build, max length of a transformers.js one
    reselected = _reselected(options, checkpoint, family, plan, old)
    if reselected:
        return ("options changed: " if changed else "this builder resolves the options differently now: ") + reselected
    differ = [
        f"{k if '.' in k else k.replace('_', '-')} {then.get(k)} -> {v}"
        for k, v in now.items()
        if then.get(k) != v and k.split(".")[-1] not in inert
    ]
    if not differ:
        return None
    return ("options changed: " if changed else "this builder resolves the options differently now: ") + ", ".join(
        differ
    )


def _reselected(options: BuildOptions, checkpoint, family, plan, old: dict) -> str | None:
    """Which projections get another weight format under the job's int8-layers/float-layers than
    under its output's (old: the report's options), or None. The patterns are compared by what they
    select: [lm_head, "*.v_proj"] in another order, or "*.v_proj" written out as
    model.layers.*.self_attn.v_proj, builds the same bytes, and was rebuilt as "options changed"."""
    then_lists = {k: old.get(k) or [] for k in ("int8_layers", "float_layers")}
    if then_lists == {k: getattr(options, k) for k in then_lists}:
        return None
    try:
        with plugin_faults_named(family):
            then = family(checkpoint, dataclasses.replace(options, **then_lists)).plan.formats
    except BuilderError:  # the lists it was built with are refused now: not provably the same
        return "int8-layers/float-layers"
    moved = [m for m, scheme in plan.formats.items() if then.get(m) != scheme]
    if not moved and set(then) == set(plan.formats):
        return None
    if not moved:
        return "int8-layers/float-layers"
    more = f" and {len(moved) - 1} more" if len(moved) > 1 else ""
    return (
        f"int8-layers/float-layers: {moved[0]} {_format_text(then.get(moved[0]))} -> "
        f"{_format_text(plan.formats[moved[0]])}{more}"
    )


def _format_text(scheme) -> str:
    if scheme is None:
        return "absent"
    return f"int{scheme.bits}" if scheme.quantized else "float"


def _stream_predated(report: dict) -> str | None:
    """A report from before --residual-dtype, of a family whose `auto` now widens the stream (Gemma 3:
    fp16 activations with an fp32 stream, where its builds had an fp16 stream or, on webgpu, fp32
    activations): without the checkpoint to plan with, which of its builds changed cannot be told,
    so each of them is rebuilt. Other families' `auto` is what their builds did."""
    import importlib

    if "residual_dtype" in (report.get("target") or {}):
        return None
    module, _, name = ((report.get("checkpoint") or {}).get("family") or "").rpartition(".")
    try:
        family = getattr(importlib.import_module(module), name) if module else None
    except (ImportError, AttributeError):
        return None  # a plugin no longer installed: the build itself says so
    if getattr(family, "fp16_overflow", None) and (report.get("options") or {}).get("residual_dtype", "auto") == "auto":
        return f"built before --residual-dtype, whose auto keeps {name}'s residual stream in fp32 now"
    return None


def _padding_predated(report: dict) -> str | None:
    """A folder from before the graph read a batch's pads as its format pads them: transformers.js
    folders took a left-padded batch as right-padded, and a hybrid's genai folder let the right pads
    into its recurrent state where --padded-batches auto now keeps them out (uncaptured graphs). The
    shorter rows came out wrong, so it is rebuilt, checkpoint cached or not."""
    target, options = report.get("target") or {}, report.get("options") or {}
    if options.get("format") == "transformers.js":
        return (
            None if "padding" in target else "built before transformers.js folders read a batch's padding on the left"
        )
    recurrent = "LinearAttention" in ((report.get("nodes") or {}).get("by_op_type") or {})
    if "recurrent_padding" in target or not recurrent or target.get("graph_capture"):
        return None
    return "built before genai folders kept a padded batch's pads out of the recurrent state (--padded-batches)"


def _uncached_hub_reason(options: BuildOptions, report: dict) -> str | None:
    """A hub id whose files this machine's cache lacks (pruned, or a Ray driver that never had
    them): its output was built from the snapshot its report names, and a hub snapshot is one
    commit, so the output is up to date while the hub still serves that commit. Offline, the
    last build is the best knowledge there is (a build could not download it either)."""
    from builder.kit.model_source import hub_revision

    built_from = Path((report.get("checkpoint") or {}).get("path") or "")
    if built_from.parent.name != "snapshots":
        return "checkpoint not in the Hugging Face cache here, and its build did not come from the hub"
    current = hub_revision(options.model)
    if current is not None and current != built_from.name:
        return f"hub revision {built_from.name[:12]} -> {current[:12]}"
    return _unverified(options, report)


# Sections of a report that are objects, and the figures a skipped job's summary takes from it.
REPORT_SECTIONS = ("options", "target", "checkpoint", "model", "format", "files", "layout", "nodes", "sizes", "timings")
SUMMARY_FIGURES = (("sizes", "total_bytes"), ("nodes", "total"), ("timings", "total_s"))


def _malformed(report) -> str | None:
    """What keeps a report that parses from being one a build wrote (a hand edit, other JSON put in
    its place), or None. Read as it was, such a report ended the batch with a traceback (a list
    has no .get, a skipped job's summary line found no nodes.total); rebuilt, it is whole again."""
    if not isinstance(report, dict):
        return "is not a JSON object"
    for key in REPORT_SECTIONS:
        if report.get(key) is not None and not isinstance(report[key], dict):
            return f"has a {key!r} that is not an object"
    for section, key in SUMMARY_FIGURES:
        value = (report.get(section) or {}).get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"has no number at {section}.{key}"
    files = report.get("files") or {}
    if not isinstance(files.get("model", ""), str) or not all(_strings(files.get(k, [])) for k in ("data", "configs")):
        return "names its model files otherwise than a build does"
    if not _strings(report.get("tokenizer_files") or []):
        return "names its tokenizer files otherwise than a build does"
    return None


def _strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def damaged_file(output: Path, report: dict) -> str | None:
    """What is wrong with the files of a finished output, or None when they are as its
    report recorded them: the model and its external data files at the sizes in the
    report's sizes and (reports that record them) modification times, the config the runtime
    reads (complete JSON), the tokenizer files."""
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
    times = files.get("mtime_ns") if isinstance(files.get("mtime_ns"), dict) else {}
    for name in weights:
        recorded = times.get(name)
        if recorded is not None and (output / name).stat().st_mtime_ns != recorded:
            return f"{name} was written after its build (its modification time is not the one {REPORT_NAME} records)"
    total = sizes.get("total_bytes")
    if total is not None and sum((output / name).stat().st_size for name in weights) != total:
        return f"the model files do not add up to the {total} bytes {REPORT_NAME} records"
    # Reports from before files.configs: the format's own config (a transformers.js folder's
    # generation_config.json made from config.json went unchecked, and its loss was "up to date").
    config = CONFIG_FILES.get((report.get("format") or {}).get("name", "genai"))
    for name in files.get("configs", [config] if config else []):
        damaged = _damaged_config(output, name)
        if damaged:
            return damaged
    for name in report.get("tokenizer_files") or []:
        path = output / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size == 0:
            return f"{name} is empty"
        if name.endswith(".json"):  # cut short, it does not parse; hand edits (a chat template) do
            try:
                json.loads(path.read_bytes())
            except (OSError, ValueError, RecursionError):
                return f"{name} is unreadable or cut short"
    return None


def _damaged_config(output: Path, config: str) -> str | None:
    """What keeps a config the build wrote from being one its reader can take, or None. Hand edits
    (search options, provider options) are kept; a config the runtime cannot read at all is not an
    output that is up to date."""
    try:
        written = json.loads((output / config).read_text())
    except FileNotFoundError:
        return f"{config} is missing"
    except (OSError, ValueError, RecursionError):
        return f"{config} is unreadable or cut short"
    model = written.get("model") if isinstance(written, dict) else None
    if not isinstance(written, dict) or (config == CONFIG_NAME and not isinstance(model, dict)):
        return f"{config} is not a {'genai config' if config == CONFIG_NAME else 'JSON object'}"
    if config == CONFIG_NAME and not isinstance(model.get("decoder"), dict):
        return f"{config} has no model.decoder"
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
    elif options.verify and "verify" not in report:
        # Asked for over a build that did not verify, where none would run (_unverified): what a
        # rebuild would have recorded.
        from builder.verify import verify_not_run

        not_run = verify_not_run(options.ep)
        if not_run:
            result["verify"] = {"status": "not run", "reason": not_run}
    return result
