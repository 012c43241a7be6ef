"""One build: checkpoint -> staged output folder -> report.

Order matters for "complete or absent": the graph and its data are written
and flushed first, then genai_config.json and the tokenizer, and the build
report last, so a folder with a report is a finished build.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import onnx

from architectures.base import DecoderBuilder
from architectures.registry import architecture_names, family_for, family_named, registered_for
from builder.family_source import builder_source_digest, family_name, family_source_digest, plugin_faults_named
from builder.formats import folder_format
from builder.kit.checkpoint import Checkpoint
from builder.kit.data_file import ExternalDataFile
from builder.kit.errors import BuilderError, write_failed
from builder.kit.genai_config import CONFIG_NAME, token_ids_past_the_vocabulary, turn_end_warning
from builder.kit.graph import Graph
from builder.kit.model_source import model_name
from builder.kit.option_names import python_option_names
from builder.kit.options import BuildOptions, options_one_way
from builder.kit.plan import split_block_note, wrong_on_webgpu
from builder.kit.progress import Phases, Progress, SilentProgress
from builder.kit.readahead import Forecast, reading_ahead, record_reads
from builder.kit.targets import NEWEST_KNOWN_ORT
from builder.kit.tokenizer_files import (
    check_tokenizer_files,
    copy_tokenizer_files,
    named_templates_warning,
    tokenizer_eos,
)
from builder.load_check import load_check
from builder.output_dir import REPORT_NAME, check_output_free, output_folder, staged_output
from builder.preflight import check_disk_space
from builder.version import __version__

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"


@dataclass
class BuildResult:
    output: Path
    report: dict

    @property
    def model_path(self) -> Path:
        return self.output / self.report.get("files", {}).get("model", MODEL_FILE)

    @property
    def data_path(self) -> Path:
        return self.output / self.report.get("files", {}).get("data", [DATA_FILE])[0]

    @property
    def genai_config_path(self) -> Path | None:
        """genai_config.json, or None for a format that writes none (transformers.js)."""
        if (self.report.get("options") or {}).get("format", "genai") != "genai":
            return None
        return self.output / CONFIG_NAME

    @property
    def report_path(self) -> Path:
        return self.output / REPORT_NAME


def default_output(options: BuildOptions) -> Path:
    name = model_name(options.model) or "model"
    suffix = "-transformers-js" if options.format == "transformers.js" else ""
    return Path("out") / f"{name}-{options.precision}-{options.ep}{suffix}".lower()


def _tokenizer_advice(copied: list[str], checkpoint: Path, output: Path) -> str:
    """What to do about missing tokenizer files: a checkpoint with only a slow tokenizer's files
    (vocab.json + merges.txt, tokenizer.model), or a tokenizer.json without its tokenizer_config.json,
    has none to copy, but transformers can write them."""
    if any(name in copied for name in ("tokenizer.json", "vocab.json", "tokenizer.model")):
        # Without it transformers 5 fails on tokenizer.model with "`tiktoken` is required to read a
        # `tiktoken` file", which points away from the fix.
        sentencepiece = "tokenizer.model" in copied and "tokenizer.json" not in copied
        needs = " (tokenizer.model needs the sentencepiece package: pip install sentencepiece)" if sentencepiece else ""
        return (
            f"transformers makes them from the checkpoint's vocabulary files{needs}: "
            f"AutoTokenizer.from_pretrained('{checkpoint}').save_pretrained('{output}')"
        )
    return f"copy them from the model's original repository into {output}"


def reset_peak_rss() -> None:
    """Start this process's peak resident memory (VmHWM) over from what it holds now, so that
    peak_rss_bytes is the build's: a Python session that held more before (a model loaded, an
    earlier build's verify) recorded that peak in every later build's report. Linux only; elsewhere
    the peak stays the process's."""
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # 5: reset the peak RSS only (proc(5)); the page flags stay as they are


def peak_rss_bytes() -> int:
    """This process's peak resident memory since the build started (reset_peak_rss).

    VmHWM, not getrusage: a spawned process's ru_maxrss starts at its parent's
    RSS at fork time, so batch jobs would all seem to need what the batch holds.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def build(
    options: BuildOptions | None = None,
    *,
    family: type | str | None = None,
    show_progress: bool = True,
    **option_values,
) -> BuildResult:
    """Build one model. Options come as a BuildOptions or as keyword arguments.

    family: a builder class (e.g. a subclass of architectures.Qwen3Builder), or the HF
    architecture name one is registered under, to use instead of the one registered for
    the checkpoint's `architectures`. A BuilderError names options as these keywords.
    """
    with python_option_names():
        options = options_one_way(options, option_values, "build", "build(model=..., precision=...)")
        return build_from_flags(options, family=family, show_progress=show_progress)


def build_from_flags(
    options: BuildOptions, *, family: type | str | None = None, show_progress: bool = True, on_step=None
):
    """build() for the command line and batch files: errors name options by their flags, which
    batch files spell the same way. on_step(done, total, what) hears of each progress step, also
    with show_progress off (a batch job reports its step to the batch: kit.progress.Progress)."""
    if family is not None and options.family:
        raise BuilderError(
            f"build(): family given both as BuildOptions(family={options.family!r}) and as build(family=...); keep one"
        )
    if isinstance(family, str):
        family = family_named(family, where="build(family=...)")
    elif family is not None and not (isinstance(family, type) and issubclass(family, DecoderBuilder)):
        raise BuilderError(
            f"build(family={family!r}): pass a builder class (a subclass of architectures.DecoderBuilder) "
            "or the HF architecture name it is registered under"
        )
    options = options.validated()
    # A hub id of an architecture no family builds is refused before its weights download.
    checkpoint = Checkpoint.open(options.model, None if family else functools.partial(family_for, options))
    cls = family or family_for(options, checkpoint.config, where=str(checkpoint.directory / "config.json"))
    with plugin_faults_named(cls):
        arch = cls(checkpoint, options)
    return run(arch, show_progress=show_progress, on_step=on_step)


def run(arch, show_progress: bool = True, on_step=None) -> BuildResult:
    """Write the model of an architecture builder (a family object, such as
    Qwen3Builder.from_pretrained(...) returns) into its output folder."""
    # from_pretrained() marks what it made: a Python caller, whose errors name keywords
    names = python_option_names() if getattr(arch, "python_caller", False) else contextlib.nullcontext()
    with names, plugin_faults_named(type(arch)):
        return _run(arch, show_progress, on_step)


def _run(arch, show_progress: bool, on_step=None) -> BuildResult:
    plan = arch.plan
    options, spec = plan.options, plan.spec
    if options.verify and plan.target.ep == "cpu":  # the only EP verify runs on
        from builder.kit.plan import available_memory_bytes
        from builder.verify import check_verify_memory, reference_params, require_verify_extras

        require_verify_extras()
        check_verify_memory(reference_params(arch), available_memory_bytes())
    # expanduser: a quoted '~/x' would otherwise become a folder named '~' here.
    output = Path(options.output).expanduser() if options.output else default_output(options)
    _check_output_outside_checkpoint(output, arch.checkpoint.directory)
    reset_peak_rss()
    started = time.perf_counter()
    timings: dict[str, float] = {}
    hashing = 1 if options.checkpoint_hash else 0
    steps = spec.num_layers + 4 + (1 if options.verify else 0) + hashing
    progress = Progress(steps, label=output.name, on_step=on_step) if show_progress else SilentProgress(steps, on_step)

    if hashing:  # before it reads every weight byte: a refused output costs no minutes
        check_output_free(output_folder(output), options.overwrite)
    check_disk_space(arch, output)
    phases = Phases()
    with phases.timed("forecast"):
        forecast = check_reads(arch)
    # Taken before any weight is read, so weights re-saved during the build make the
    # report's fingerprint stale, and the next batch run rebuilds.
    if hashing:
        with progress.ticking("hashing the checkpoint's weights (--checkpoint-hash)"):
            arch.checkpoint.fingerprint(True)
    else:
        arch.checkpoint.fingerprint(False)
    genai = options.format == "genai"
    tokenizer_warnings = check_tokenizer_files(arch.checkpoint.directory, plan.spec.vocab_size, genai)
    generation = arch.checkpoint.read_json("generation_config.json")
    arch.warnings.extend(token_ids_past_the_vocabulary(arch.config, generation, plan.spec.vocab_size, genai))
    arch.warnings.extend(tokenizer_warnings)
    if genai:
        turn_end = turn_end_warning(
            arch.config, generation, tokenizer_eos(arch.checkpoint.directory), plan.spec.vocab_size
        )
        templates = named_templates_warning(arch.checkpoint.directory)
        arch.warnings.extend(w for w in (turn_end, templates) if w)
    layout = folder_format(arch)
    for message in arch.warnings:
        progress.warn(message)
    with staged_output(output, options.overwrite) as staging:
        (staging / layout.model_file).parent.mkdir(parents=True, exist_ok=True)
        data = ExternalDataFile(staging / layout.data_file, phases)
        graph = Graph(data)
        arch.checkpoint.phases = phases
        arch.checkpoint.page_cache = options.page_cache
        try:
            schedule = forecast.reads if options.read_ahead_mb else []
            with reading_ahead(arch.checkpoint, schedule, options.read_ahead_mb << 20, phases) as ahead:
                arch.build_graph(graph, progress)
            if hasattr(arch, "check_graph"):
                arch.check_graph()
            graph.check_wiring()
        except BaseException:
            data.abort()  # the staged output goes anyway: no need to finish writing it
            raise
        data.close()
        refuse_unused_tensors(arch)
        if ahead is not None:
            timings["read_ahead"] = ahead.describe()
        timings["graph_and_weights_s"] = time.perf_counter() - started
        timings["phases"] = phases.report()
        nonfinite = getattr(getattr(arch, "proj", None), "nonfinite", [])
        if nonfinite:
            shown = ", ".join(nonfinite[:5]) + (f" and {len(nonfinite) - 5} more" if len(nonfinite) > 5 else "")
            message = (
                f"tensor(s) {shown} hold NaN or Inf values (or values beyond the float16 range); the "
                "model was built as they are, and its outputs will likely be NaN: check the checkpoint"
            )
            arch.warnings.append(message)
            progress.warn(message)

        progress.step(f"saving {layout.model_file}")
        t = time.perf_counter()
        model = graph.to_model()
        layout.finish_model(model, staging)
        # A target newer than any this builder knows gets the newest one's graph, which that runtime can judge.
        loaded = load_check(model, min(plan.target.ort_version, NEWEST_KNOWN_ORT))
        if loaded["status"] == "refused":
            raise BuilderError(
                f"onnxruntime {loaded['onnxruntime']} refuses the built graph ({loaded['reason']}); the output "
                f"was not written. {_who_to_check(arch, 'the graph it writes')}"
            )
        with _write_errors(output / layout.model_file):
            onnx.save_model(model, str(staging / layout.model_file))
        timings["save_s"] = time.perf_counter() - t

        progress.step("configs and tokenizer")
        with _write_errors(output, "writing the configs into "):
            configs = layout.write_configs(staging, generation)
        with _write_errors(output, "copying the tokenizer files into "):
            copied, missing = copy_tokenizer_files(
                arch.checkpoint.directory,
                staging,
                keep_named_templates=options.format != "genai",
                reads_template_file=options.format == "genai",
            )
        skipped = arch.skipped_note() if hasattr(arch, "skipped_note") else None
        notes = list(plan.notes) + ([skipped] if skipped else []) + arch.warnings
        split, warn = split_block_note(plan, split_block_nodes(arch))
        if split:
            notes.append(split)
            if warn:
                progress.warn(split)
        if missing:
            # transformers.js's AutoTokenizer fetches the same two files, and fails without either.
            reader = "onnxruntime-genai" if layout.name == "genai" else layout.name
            message = (
                f"tokenizer file(s) {', '.join(missing)} not found in {arch.checkpoint.directory}: "
                f"the model was built, but {reader} needs them to tokenize; "
                + _tokenizer_advice(copied, arch.checkpoint.directory, output)
            )
            progress.warn(message)
            notes.append(message)

        verified = None
        if options.verify:
            with progress.ticking("verifying against transformers"):
                verified = _verify(arch, staging / layout.model_file)
            if verified["status"] == "not run":
                progress.warn(f"--verify did not run: {verified['reason']}")
        # After verify, so the time and the peak memory a user plans with include it. The
        # report's own making and writing, and the publish, come after: the printed time has them.
        timings["total_s"] = time.perf_counter() - started
        report = make_report(arch, graph, staging, timings, copied, notes, layout, configs)
        report["load_check"] = loaded
        if verified is not None:
            report["verify"] = verified
        with _write_errors(output / REPORT_NAME):
            (staging / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
        progress.step("done")
    # Taken once the folder is published, as the progress line's clock is: the report's
    # total_s stops before the report is made, and 'built in 0.0s' followed '6/6 done (0.2s)'.
    elapsed = time.perf_counter() - started
    progress.finish(
        f"built {output} in {elapsed:.1f}s "
        f"({report['nodes']['total']} nodes, {report['sizes']['total_bytes'] / 1e6:.1f} MB)"
        + _verify_summary(report.get("verify"))
    )
    return BuildResult(output, report)


def check_reads(arch) -> Forecast:
    """The checkpoint reads the build will make (kit/readahead.py's forecast, milliseconds for a
    dense model), refusing now what would stop the build partway, after the weights before it were
    hashed and quantized: a tensor the family reads that the checkpoint lacks (or holds in another
    shape or dtype), and, where the forecast located every read, tensors the family never reads."""
    forecast = record_reads(arch, Graph, SilentProgress())
    if forecast.refusal is not None:
        raise forecast.refusal
    if forecast.complete:
        refuse_unused_tensors(arch)
    return forecast


def refuse_unused_tensors(arch) -> None:
    """Refuse a build that left checkpoint tensors unread (DecoderBuilder.unused_tensors)."""
    unused = arch.unused_tensors() if hasattr(arch, "unused_tensors") else []
    if unused:
        checkpoint = arch.checkpoint

        def named(name: str) -> str:  # a tensor read in part (RowSlices that miss rows) says which
            if name not in checkpoint.located:
                return name
            gaps = ", ".join(f"{a}-{b}" for a, b in checkpoint.unread_rows(name)[:3])
            return f"{name} (rows {gaps} of {checkpoint.rows_total(name)} never read)"

        shown = ", ".join(map(named, unused[:4])) + (f" and {len(unused) - 4} more" if len(unused) > 4 else "")
        raise BuilderError(
            f"the checkpoint in {arch.checkpoint.directory} holds {len(unused)} tensor(s) that "
            f"{type(arch).__name__} does not build: {shown}; without them the model would compute "
            f"something else, so nothing was written. {_unused_tensors_fix(arch)}"
        )


def _unused_tensors_fix(arch) -> str:
    """What to do about tensors the family left unread. Under another of the builder's families than
    config.json's (--family LlamaForCausalLM on a Qwen2 checkpoint: its q/k/v biases) they are the
    checkpoint's own model, so removing them, as the general advice says, would publish a wrong one."""
    if _family_overridden(arch):
        named = ", ".join(map(str, architecture_names(arch.checkpoint.config)))
        given = arch.build_options.family
        family = f"--family {given}" if given else type(arch).__name__
        if registered_for(arch.checkpoint.config) is None:  # no family here builds it as config.json names it
            fix = "build with a family that reads them"
        else:
            fix = "drop --family" if given else f"build with the family registered for {named}"
        return f"{family} builds another model than {named}, one without them: {fix}"
    return (
        "If config.json turns them on (e.g. mlp_bias), this family does not support that; if they are "
        "not part of the model, remove them from the checkpoint"
    )


def _check_output_outside_checkpoint(output: Path, checkpoint: Path) -> None:
    """`-o` naming the checkpoint (or a folder holding it) was met with 'pass --overwrite', which
    then refused a folder the builder did not make; batch refuses it up front, so does a build."""
    real, source = Path(os.path.realpath(output)), Path(os.path.realpath(checkpoint))
    if Path(output).name in ("", ".", ".."):  # '/' or '.': output_folder says what is wrong with it
        return
    if source.is_relative_to(real):
        how = "is the checkpoint folder" if source == real else f"contains the checkpoint {checkpoint}"
        raise BuilderError(
            f"-o/--output {output} {how}; a build replaces its whole output folder, so choose an "
            "output outside the checkpoint"
        )


@contextlib.contextmanager
def _write_errors(target: Path, doing: str = "writing "):
    """A full disk or a file size limit while writing `target`: one line, and the staged
    output is removed by staged_output as for any other error."""
    try:
        yield
    except OSError as e:
        raise write_failed(target, e, doing) from None


def _verify(arch, model_file: Path) -> dict:
    """Parity against transformers before the folder is published; a failure is a failed build."""
    from builder.verify import verify_output

    t = time.perf_counter()
    plan = arch.plan
    try:
        result = verify_output(
            model_file,
            arch.checkpoint.directory,
            plan.selection or plan.options,
            plan.target.ep,
            fp32_io=plan.io_dtype == "float32",
            family=type(arch),
            context_length=plan.context_length,
            formats=plan.formats,
        )
    except Exception as e:
        if type(e).__module__ != "onnxruntime.capi.onnxruntime_pybind11_state":
            raise
        # onnxruntime's error at run time (the load check took the graph's types; a plugin's Reshape that
        # the prompt's shape cannot take is left): it names the node, which the one-line fault report of a
        # plugin cut off, under a hint about blocks.
        raise BuilderError(
            f"--verify: onnxruntime could not run the built model ({' '.join(str(e).split())}); the output was "
            f"not written. {_who_to_check(arch, 'the graph it writes')}"
        ) from e
    result["seconds"] = round(time.perf_counter() - t, 3)
    if result["status"] == "failed":
        if getattr(getattr(arch, "proj", None), "nonfinite", []):  # transformers' logits carry them too
            who = (
                "The checkpoint's weights hold NaN or Inf values (the warning above names them), so neither "
                "model's logits can be trusted: check the checkpoint."
            )
        elif _family_overridden(arch):
            named = ", ".join(map(str, architecture_names(arch.checkpoint.config)))
            given = arch.build_options.family
            # where none is registered for it, transformers still runs the checkpoint (by its model_type)
            own = registered_for(arch.checkpoint.config) is not None
            instead = f"the family registered for {named}" if own else "a family that builds it as transformers does"
            family, fix = type(arch).__name__, f"build with {instead}, or without --verify"
            if given:
                # dropping --family fails where config.json's architecture has no family here
                family, fix = f"--family {given}", "drop --family, or --verify" if own else fix
            who = (
                f"{family} builds the checkpoint as another model than {named}, which verify compares with "
                f"(the warnings above may say how they differ): {fix}."
            )
        else:
            who = _who_to_check(arch, "what it builds differently from transformers' model")
        median = f", median position nmse {result['median_nmse']:.3g}" if "median" in result["bound"] else ""
        raise BuilderError(
            f"--verify failed: logits differ from transformers ({result['bound']} not met: "
            f"max_abs {result['max_abs']:.3g}, nmse {result['nmse']:.3g}{median}; {_where_they_differ(result)}); "
            f"the output was not written. {who}"
        )
    return result


def _where_they_differ(result: dict) -> str:
    """Where a failed verify's logits differ, for the error line (the report that holds the numbers is
    not written): the prompt's pass or only the decode steps through the cache, and how often the top
    token still agrees."""
    return (
        f"max_abs {result['max_abs_prefill']:.3g} over the prompt, {result['max_abs_decode']:.3g} over "
        f"{result['steps'] - 1} decode step(s); top token agrees at {result['argmax_agree']:.0%} of positions"
    )


def _family_overridden(arch) -> bool:
    """The build ran one of the builder's own families other than the one registered for config.json's
    architectures (--family LlamaForCausalLM, or family=LlamaBuilder in Python). A family of one's
    own is _who_to_check's."""
    config = arch.checkpoint.config
    if type(arch).__module__.split(".")[0] != "architectures" or not architecture_names(config):
        return False
    return type(arch) is not (registered_for(config) or (None, None))[1]


def _who_to_check(arch, what: str) -> str:
    family = type(arch)
    if family.__module__.split(".")[0] == "architectures":
        return "Please report this with the build options."
    # a plugin's family: its author is the one to look
    return (
        f"It was built by {family.__module__}.{family.__qualname__}, which is not one of the "
        f"builder's own families: check {what}."
    )


def _verify_summary(verified: dict | None) -> str:
    if not verified or verified["status"] != "passed":
        return ""
    level = " at accuracy_level 0" if "checked_at_accuracy_level" in verified else ""
    return (
        f"; verified against transformers{level}: max_abs {verified['max_abs']:.2g}, "
        f"nmse {verified['nmse']:.2g} ({verified['bound']})"
    )


def split_block_nodes(arch) -> list[str]:
    """The MatMulNBits in blocks of 256 whose in-width is no multiple of it (Projections.split_block_nodes)."""
    return getattr(getattr(arch, "proj", None), "split_block_nodes", [])


def target_record(plan) -> dict:
    """What the options resolved to for the target, as the report records it (batch compares
    a job's with its output's, so an option written out at its default is no change)."""
    target = plan.target
    return {
        "ep": target.ep,
        "precision": target.precision,
        "ort_version": target.version_text,
        "runtime": target.runtime,
        "graph_capture": target.graph_capture,
        "logits": "last" if plan.last_logits else "num_logits_to_keep" if plan.logits_to_keep else "all",
        "int32_inputs": plan.int32_inputs,
        "padding": "left" if plan.left_padding else "right",  # which side of a batch the graph reads pads on
        # Whether recurrent layers keep a right-padded batch's pads out of their state (null: none to keep)
        "recurrent_padding": None if plan.right_padding is None else ("kept_out" if plan.right_padding else "absorbed"),
        "io_dtype": str(plan.io_dtype),
        "residual_dtype": str(plan.residual_dtype),
        "accuracy_level": plan.accuracy_level,
    }


def make_report(
    arch,
    graph: Graph,
    folder: Path,
    timings: dict,
    tokenizer_files: list[str],
    notes: list[str],
    layout,
    configs: list[str] | None = None,
) -> dict:
    plan = arch.plan
    spec = plan.spec
    files = [layout.model_file, *layout.data_files(folder)]
    sizes = {Path(name).name: (folder / name).stat().st_size for name in files}
    counts = graph.op_counts()
    return {
        "builder_version": __version__,
        # The code itself: a fix between versions changes what the same options build.
        "builder_source": builder_source_digest(),
        "options": plan.options.to_dict(),
        "target": target_record(plan),
        # MatMulNBits that the WebGPU EP computes wrong, where a folder for another EP kept their level 4:
        # examples/web refuses WebGPU for a transformers.js folder that has any.
        "wrong_on_webgpu": wrong_on_webgpu(plan, split_block_nodes(arch)),
        "checkpoint": {
            # absolute: the rebuild hints built from it (generate.py, the web page) work from any folder
            "path": os.path.abspath(arch.checkpoint.directory),
            "fingerprint": arch.checkpoint.fingerprint(plan.options.checkpoint_hash),
            "architecture": plan.architecture,
            # The class that built it: a plugin can replace a built-in family (batch rebuilds then).
            "family": family_name(type(arch)),
            # A plugin's changes come with its source, not the builder's version.
            "family_source": family_source_digest(type(arch)),
        },
        "model": {
            "layers": spec.num_layers,
            "hidden_size": spec.hidden_size,
            "num_heads": spec.num_heads,
            "num_kv_heads": spec.num_kv_heads,
            "head_dim": spec.head_dim,
            "vocab_size": spec.vocab_size,
            "tied_embeddings": spec.tie_word_embeddings,
            "context_length": plan.context_length,
        },
        "format": layout.describe(),
        # The model files' modification times: a batch rerun tells a file rewritten in place at the
        # same size (a copy cut short and padded, an edit) from the one this build wrote.
        "files": {
            "model": layout.model_file,
            "data": layout.data_files(folder),
            "mtime_ns": {name: (folder / name).stat().st_mtime_ns for name in files},
            # The configs the format wrote (a transformers.js folder's generation_config.json, made
            # from config.json where the checkpoint has none): a batch rerun checks each is there.
            "configs": list(configs if configs is not None else [layout.config_file]),
        },
        "layout": plan.layout.describe(),
        "nodes": {"total": sum(counts.values()), "by_op_type": counts},
        "sizes": {**{f"{k}_bytes": v for k, v in sizes.items()}, "total_bytes": sum(sizes.values())},
        "timings": {k: round(v, 3) if isinstance(v, float) else v for k, v in timings.items()},
        "peak_rss_bytes": peak_rss_bytes(),
        "tokenizer_files": tokenizer_files,
        "notes": notes,
    }
