"""Generate tokens from a built folder with onnxruntime-genai: greedy, or sampled with the folder's own
search options (--sample). --chat puts the prompt in the model's chat template, for instruct models.
The text is written as it comes; then the prompt's and the new tokens' ids, the whole text quoted,
and the timings.

    python scripts/generate.py out/tiny-qwen3-int4-cpu --prompt "Hello" --max-new-tokens 16
    python scripts/generate.py out/qwen3-4b-int4-cpu --chat --sample --prompt "What is ONNX?" --max-new-tokens 512

webgpu folders need a WebGPU runtime: pip install onnxruntime-genai onnxruntime-ep-webgpu
(and on Linux the Vulkan loader); the plugin EP is registered here when it is installed.
cuda folders need onnxruntime-genai-cuda and an NVIDIA GPU; dml folders need
onnxruntime-genai-directml on Windows. Folders built with --format transformers.js run
with examples/web/generate.mjs instead. --ngram N turns on onnxruntime-genai's n-gram
speculation (folders built with --logits all; README: genai's Engine and speculative decoding).
"""

import os
import signal
import sys


def _interrupted_while_starting(signum, frame) -> None:
    """Ctrl-C before main() catches KeyboardInterrupt: the imports below take a few tenths of a second
    (numpy, onnxruntime-genai's helpers), and a Ctrl-C then was a KeyboardInterrupt traceback. Nothing
    is written yet, so leave at once, as main() does: one line, exit 130."""
    print("error: interrupted", file=sys.stderr, flush=True)
    os._exit(130)


# Only where Ctrl-C raises KeyboardInterrupt (a background job ignores it), and only when run as a script.
if __name__ == "__main__" and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _interrupted_while_starting)

import argparse  # after the handler, as all below: these imports are what a Ctrl-C interrupted
import json
import shlex
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout, uninstalled

from builder.cli import StdoutUnwritable, broken_pipe, stdout_unwritable, write_stdout
from builder.ep_runtime import WEBGPU_INSTALL, folder_provider, genai_model, prepare_genai
from builder.interruptible import import_native
from builder.kit.errors import BuilderError
from builder.kit.model_source import built_from
from builder.kit.options import EPS
from builder.kit.tokenizer_files import REQUIRED as TOKENIZER_REQUIRED

# What onnxruntime-genai's RuntimeError says when its build lacks a provider's support,
# and what the user needs instead: {provider: (substrings, runtime, what to install)}.
_MISSING_RUNTIME = {
    "cuda": (
        ("Cuda interface not available", "libonnxruntime-genai-cuda"),
        "CUDA",
        "pip install onnxruntime-genai-cuda (in place of onnxruntime-genai) on a machine with an NVIDIA CUDA GPU",
    ),
    "dml": (
        ("not been built with DML support",),
        "DirectML",
        "pip install onnxruntime-genai-directml (in place of onnxruntime-genai) on Windows (DirectML is Windows-only)",
    ),
}


def _whole_number(text: str, low: int, high: int | None, unit: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of {unit}") from None
    if value < low or (high is not None and value > high):
        wanted = f"{low} to {high}" if high is not None else f"{low} or more"
        raise argparse.ArgumentTypeError(f"{value} is out of range; pass {wanted} {unit}")
    return value


def _positive_int(text: str) -> int:
    return _whole_number(text, 1, None, "tokens")


def _seed(text: str) -> int:
    """genai's random_seed: a 32-bit int, where -1 asks for a random one (what leaving --seed out does)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; pass a seed from 0 to 2147483647") from None
    if not 0 <= value < 2**31:
        raise argparse.ArgumentTypeError(f"{value} is out of range; pass a seed from 0 to 2147483647")
    return value


def _ngram_size(text: str) -> int:
    return _whole_number(text, 2, 16, "tokens (an n-gram's length)")  # genai 0.18's bounds for ngram_size


class TextStream:
    """The text of tokens as they come, with bytes that are no UTF-8 shown as U+FFFD (special tokens
    left out, as genai leaves them out): add(token) gives the text that token completes, end() the rest.

    onnxruntime-genai 0.18's decode ends the text at the first invalid byte (a random model's byte
    tokens, or a character cut by --max-new-tokens), and its stream (og.TokenizerStream) drops such
    bytes and text after them: the text went missing without a word. Here tokens are decoded a run
    at a time, held while the run's text ends in a character still to be completed. A character's
    bytes end at most 3 tokens after the token that began it; a run whose text has not grown for
    that long holds bytes that are no UTF-8: the text up to them, and a U+FFFD for them, is given,
    and the tokens after the one where the text last grew start a new run."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self._run: list[int] = []

    def add(self, token: int) -> str:
        self._run.append(token)
        return self._drain(final=False)

    def end(self) -> str:
        return self._drain(final=True)

    def _drain(self, final: bool) -> str:
        decode, text = self._tokenizer.decode, []
        while self._run:
            run = self._run
            piece = decode(run)
            if not piece.endswith("\ufffd"):
                text.append(piece)
                self._run = []
                break
            # Where the run's text last grew: a token may end one character and begin the next
            # (byte-level BPE merges across character boundaries), so a valid run can take more than 4 tokens.
            grown, longest = 0, -1
            for k in range(1, len(run) + 1):
                length = len(decode(run[:k]).removesuffix("\ufffd"))
                if length > longest:
                    grown, longest = k - 1, length
            if not final and len(run) - 1 - grown < 3:
                break  # the character begun at or after token `grown` may still end in the next ones
            text.append(decode(run[: grown + 1]))
            self._run = run[grown + 1 :]
        return "".join(text)


def decode_all(tokenizer, tokens: list[int]) -> str:
    """The text of `tokens`, as TextStream gives it a token at a time."""
    stream = TextStream(tokenizer)
    return "".join(stream.add(token) for token in tokens) + stream.end()


def _terminal_text(text: str) -> str:
    """`text` with control characters other than newline and tab escaped, as repr() writes them: a
    random-weight model's text holds them, and a terminal would act on them."""
    return "".join(c if c.isprintable() or c in "\n\t" else repr(c)[1:-1] for c in text)


def _write(text: str) -> None:
    """`text` to stdout now (a terminal sees the tokens come), control characters escaped."""
    if text:
        write_stdout(_terminal_text(text))


def _print(line: str) -> None:
    """A line of the report after the text, on stdout now: a stdout that fails fails in main's hands."""
    write_stdout(line + "\n")


def _non_empty(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("is empty; pass some text to continue, e.g. --prompt 'Hello'")
    return _utf8(text)


def _utf8(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # bytes the locale could not decode: the tokenizer's TypeError traceback
        byte = ord(text[e.start]) - 0xDC00 if 0xDC80 <= ord(text[e.start]) <= 0xDCFF else None
        shown = f"byte {byte:#04x}" if byte is not None else repr(text[e.start])
        raise argparse.ArgumentTypeError(f"is not UTF-8 text ({shown} at character {e.start}); pass UTF-8") from None
    return text


def _shown(path: Path) -> str:
    """`path` relative to the working directory when it lies under it, else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _is_transformers_js(folder: Path) -> bool:
    """A --format transformers.js build: config.json with a transformers.js_config entry."""
    try:
        return "transformers.js_config" in json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False


def _read_config(folder: Path) -> dict:
    """genai_config.json of a built folder, or a one-line BuilderError saying what is wrong with it."""
    path = folder / "genai_config.json"
    if path.is_file():
        try:
            config = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BuilderError(
                f"{path} is not valid JSON ({e}); rebuild the folder with python -m builder (--overwrite)"
            ) from None
        if not isinstance(config, dict):
            shown = json.dumps(config)
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            raise BuilderError(f"{folder} is damaged: {path.name} holds {shown}, not a JSON object; {_rebuild(folder)}")
        return config
    if not folder.is_dir():
        raise BuilderError(f"{folder} is not a folder; pass a folder built by python -m builder")
    if _is_transformers_js(folder):
        script = _shown(REPO / "examples" / "web" / "generate.mjs")
        raise BuilderError(
            f"{folder} was built with --format transformers.js, which onnxruntime-genai does not load: "
            f"run it with node {script} {folder} (README: Run it in the browser), "
            "or rebuild it without --format transformers.js for this script"
        )
    raise BuilderError(f"{folder} has no genai_config.json; pass a folder built by python -m builder")


def _build_report(folder: Path) -> dict:
    try:
        report = json.loads((folder / "build_report.json").read_text())
    except (OSError, ValueError):
        return {}
    return report if isinstance(report, dict) else {}


# The marks scripts/with_session_options.py and scripts/with_io_types.py leave in the copies they make
# (each holds the source folder's path).
VARIANT_MARKS = {".with_session_options": "with_session_options.py", ".with_io_types": "with_io_types.py"}


def _rebuild(folder: Path, extra: str = "") -> str:
    """What to run to rebuild `folder`: its checkpoint, precision and EP from build_report.json,
    then `extra` options. For a copy a variant script made, the builder refuses to write over it:
    rebuild its source, then make the copy again."""
    for mark, script in VARIANT_MARKS.items():
        try:
            source = Path((Path(folder) / mark).read_text().strip())
        except (OSError, UnicodeDecodeError):
            continue
        if str(source) in ("", "."):
            continue
        return (
            f"it is a copy scripts/{script} made of {source}: "
            + _rebuild(source, extra).replace("rebuild it with", "rebuild that folder with", 1)
            + f", then make the copy again with python scripts/{script} {_arg(source)} {_arg(folder)} "
            "(with the changes it was made with)"
        )
    if not (Path(folder) / "build_report.json").is_file():
        # --overwrite replaces only a folder that holds this builder's report, so `-o FOLDER --overwrite`
        # was advice the builder then refused ("not made by this builder").
        return (
            f"rebuild it with python -m builder -m CHECKPOINT{extra} -o NEW_FOLDER ({folder} has no "
            "build_report.json, so the builder will not replace it; remove it first to rebuild it there)"
        )
    report = _build_report(folder)
    options = report.get("options") or {}
    # The checkpoint's resolved path: options.model may be relative to where the build ran.
    model = built_from(report) or options.get("model")
    if not model:
        return f"rebuild it with python -m builder -m CHECKPOINT{extra} -o {_arg(folder)} --overwrite"
    family = f" --family {_arg(options['family'])}" if options.get("family") else ""  # a family of the user's own
    return (
        f"rebuild it with python -m builder -m {_arg(model)} -p {options.get('precision', 'int4')} "
        f"-e {options.get('ep', 'cpu')}{family}{extra} -o {_arg(folder)} --overwrite "
        "(build_report.json lists its other options)"
    )


def _arg(value) -> str:
    """A path or name as a shell word in a command to copy: a folder with a space in its name was
    split in two, and the command built into another folder or failed."""
    return shlex.quote(str(value))


def _tokenizer_source(folder: Path) -> str | None:
    """The checkpoint folder the build copied its tokenizer files from, when they are still
    byte for byte the same there, else None."""
    report = _build_report(folder)
    source = (report.get("checkpoint") or {}).get("path")
    names = report.get("tokenizer_files") or []
    if not isinstance(source, str) or not names:
        return None
    try:
        same = all((Path(source) / name).read_bytes() == (folder / name).read_bytes() for name in names)
    except (OSError, TypeError):
        return None
    return source if same else None


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0].strip()


# Graphs larger than this hold their weights inline; parsing one only to look for external
# data is not worth it (a damaged one still fails at load, and that failure is reported).
_PARSE_LIMIT = 256 << 20


def _named_files(node) -> list[str]:
    """Every "filename" in genai_config.json's model section (decoder, embedding, vision, ...)."""
    if isinstance(node, dict):
        names = [node["filename"]] if isinstance(node.get("filename"), str) else []
        return names + [name for value in node.values() for name in _named_files(value)]
    if isinstance(node, list):
        return [name for value in node for name in _named_files(value)]
    return []


def _tensors(graph):
    """The initializers and constant tensors of `graph` and its subgraphs."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            for sub in [attribute.g, *attribute.graphs] if attribute.HasField("g") else attribute.graphs:
                yield from _tensors(sub)


def _recorded_sizes(folder: Path) -> dict[str, int]:
    """{file: bytes} for the graph and external data files build_report.json says the build wrote."""
    report = _build_report(folder)
    files, sizes = report.get("files"), report.get("sizes")
    if not isinstance(files, dict) or not isinstance(sizes, dict):
        return {}
    names = [files.get("model"), *(files.get("data") or [])]
    recorded = {name: sizes.get(f"{Path(name).name}_bytes") for name in names if isinstance(name, str)}
    return {name: size for name, size in recorded.items() if isinstance(size, int)}


def _check_files(folder: Path, config: dict) -> None:
    """A BuilderError naming the first file onnxruntime-genai needs that is missing, cut short, or
    (where build_report.json says what the build wrote) from another build."""
    rebuild = _rebuild(folder)
    copied = _build_report(folder).get("tokenizer_files")
    for name in [*_named_files(config.get("model", {})), *TOKENIZER_REQUIRED]:  # genai reads both for every model
        if (folder / name).is_file():
            continue
        if name in TOKENIZER_REQUIRED and isinstance(copied, list) and name not in copied:
            # A rebuild would copy nothing again: the checkpoint had none (the build warned).
            raise BuilderError(
                f"{folder} has no {name}: its checkpoint had none to copy; copy the model's tokenizer "
                f"files ({', '.join(TOKENIZER_REQUIRED)}, from its hub repository) into {folder}"
            )
        raise BuilderError(f"{folder} is damaged: {name} is missing; {rebuild}")
    recorded = _recorded_sizes(folder)
    for name, size in recorded.items():
        path = folder / name
        # The graph itself may differ from the report: scripts/with_io_types.py rewrites it and keeps
        # the report; whether it still fits its data is checked below, once it is parsed.
        if name in _named_files(config.get("model", {})) or not path.is_file() or path.stat().st_size == size:
            continue
        actual = path.stat().st_size
        state = "truncated or from another build" if actual < size else "from another build"
        raise BuilderError(
            f"{folder} is damaged: {name} has {actual} bytes and build_report.json records {size}, "
            f"so it is {state}; {rebuild}"
        )
    for name in _named_files(config.get("model", {})):
        path = folder / name
        if path.suffix != ".onnx":
            continue
        if path.stat().st_size > _PARSE_LIMIT:
            # This builder's graphs keep their weights outside and stay far below the limit.
            if name in recorded and path.stat().st_size != recorded[name]:
                raise BuilderError(
                    f"{folder} is damaged: {name} has {path.stat().st_size} bytes and build_report.json "
                    f"records {recorded[name]}, so it is from another build; {rebuild}"
                )
            continue
        # Not `import onnx`: a Ctrl-C in its C extension's initialisation aborted the process (SIGABRT).
        onnx = import_native("onnx")
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # protobuf's DecodeError and friends: the bytes are not a model
            raise BuilderError(
                f"{folder} is damaged: {name} is not a readable ONNX model ({_first_line(e)}); {rebuild}"
            ) from None
        if not model.graph.output or not model.opset_import:  # protobuf parses a cut file as a smaller model
            raise BuilderError(f"{folder} is damaged: {name} is truncated (it holds no complete graph); {rebuild}")
        needed: dict[str, int] = {}  # external data file -> bytes the graph reads from it
        for tensor in _tensors(model.graph):
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                continue
            entry = {e.key: e.value for e in tensor.external_data}
            location = entry.get("location", "")
            end = int(entry.get("offset") or 0) + int(entry.get("length") or 0)
            needed[location] = max(needed.get(location, 0), end)
        for location, end in needed.items():
            data = folder / location
            if not data.is_file():
                raise BuilderError(
                    f"{folder} is damaged: {location}, which {name} keeps its weights in, is missing; {rebuild}"
                )
            size = data.stat().st_size
            # The builder cuts its data file where the last tensor ends, so a graph that stops short
            # of the end was written with another one (and would run, on the wrong weights).
            if size == end or (size > end and location not in recorded):
                continue
            reads = f"{name} reads {'up to byte' if size < end else 'only'} {end} of the {size} bytes of {location}"
            built = recorded.get(name)
            if location in recorded and built is not None and path.stat().st_size != built:
                raise BuilderError(
                    f"{folder} is damaged: {name} has {path.stat().st_size} bytes, build_report.json records "
                    f"{built}, and {reads}, so {name} is from another build; {rebuild}"
                )
            if size < end:
                raise BuilderError(f"{folder} is damaged: {reads}, so {location} is truncated; {rebuild}")
            raise BuilderError(f"{folder} is damaged: {reads}, so the two come from different builds; {rebuild}")


class _QuietGenai:
    """onnxruntime_genai, except that the Config it makes for genai_model keeps onnxruntime from
    logging the errors it returns: genai raises each as a RuntimeError, which this script reports
    as its one line, so the log only printed it twice (and in red)."""

    def __init__(self, og, config: dict):
        self._og = og
        model = config.get("model")
        sections = {
            name: {"session_options": {"log_severity_level": 4}}  # 4: fatal only
            for name, section in (model.items() if isinstance(model, dict) else ())
            if isinstance(section, dict)
            and isinstance(section.get("session_options"), dict)
            and "log_severity_level" not in section["session_options"]  # a level the user set is kept
        }
        self._overlay = json.dumps({"model": sections}) if sections else None

    def __getattr__(self, name):
        return getattr(self._og, name)

    def Config(self, path):  # noqa: N802 (og's name)
        config = self._og.Config(path)
        if self._overlay and hasattr(config, "overlay"):  # onnxruntime-genai before 0.6 has none
            config.overlay(self._overlay)
        return config


def _open_model(og, folder: Path, provider: str, overridden: bool):
    """og.Model on `provider`; a missing CUDA, DirectML or WebGPU runtime becomes a one-line BuilderError."""
    if provider == "webgpu":
        try:
            prepare_genai(og, provider)
        except BuilderError:  # its only refusal: no WebGPU runtime
            subject = (
                "--provider webgpu asks for WebGPU" if overridden else f"{folder} was built for WebGPU (-e webgpu)"
            )
            instead = "or pass another --provider" if overridden else "or rebuild it with -e cpu"
            raise BuilderError(f"{subject}, and no WebGPU runtime is installed: {WEBGPU_INSTALL}, {instead}") from None
    try:
        return genai_model(og, folder, provider)
    except RuntimeError as e:
        substrings, runtime, install = _MISSING_RUNTIME.get(provider, ((), "", ""))
        if not any(s in str(e) for s in substrings):
            raise
        if overridden:
            subject, instead = f"--provider {provider} asks for {runtime}", "or pass another --provider"
        else:
            subject, instead = (
                f"{folder} was built for {runtime} (-e {provider})",
                "or rebuild it with -e cpu or -e webgpu",
            )
        raise BuilderError(
            f"{subject}, and the installed onnxruntime-genai has no {runtime} support: {install}, {instead}"
        ) from None


# build_report.json's "model" entries and where genai_config.json's model section holds the same number.
_RECORDED_DIMS = {
    "vocab_size": ("vocab_size",),
    "hidden_size": ("decoder", "hidden_size"),
    "num_heads": ("decoder", "num_attention_heads"),
    "num_kv_heads": ("decoder", "num_key_value_heads"),
    "head_dim": ("decoder", "head_size"),
    "layers": ("decoder", "num_hidden_layers"),
    "context_length": ("context_length",),
}


def _edited_dim(folder: Path, config: dict) -> str | None:
    """A number in genai_config.json's model section that differs from what the build wrote there
    (build_report.json records it), e.g. "model.vocab_size is 10, and build_report.json records 480"."""
    recorded = _build_report(folder).get("model")
    if not isinstance(recorded, dict):
        return None
    for key, where in _RECORDED_DIMS.items():
        value = config.get("model")
        for step in where:
            value = value.get(step) if isinstance(value, dict) else None
        built = recorded.get(key)
        if value is None or built is None or value == built:
            continue
        if key == "context_length" and isinstance(value, int) and value < built:
            continue  # a shorter context only uses less of what the graph can do
        return f"model.{'.'.join(where)} is {json.dumps(value)}, and build_report.json records {built}"
    return None


def _cannot_run(
    folder: Path, config: dict, provider: str, built_for: str, overridden: bool, stage: str, error: Exception
):
    """The BuilderError for onnxruntime-genai's RuntimeError while it loads or runs `folder`."""
    why = _first_line(error)
    if overridden and provider != built_for:
        return BuilderError(
            f"{folder} was built for {built_for} (-e {built_for}), and --provider {provider} cannot {stage} its "
            f"graph ({why}); run it without --provider, or rebuild it with -e {provider}"
        )
    edited = _edited_dim(folder, config)
    if edited:
        verb = "does not load" if stage == "load" else "fails to run"
        return BuilderError(
            f"{folder} {verb} on {provider} ({why}): its genai_config.json was changed after the build "
            f"({edited}); set it back, or {_rebuild(folder)}"
        )
    if "Unsupported model_type" in str(error):
        # The folder is fine: genai older than the model family (0.8.0 refused qwen3), and a rebuild
        # writes the same model_type again.
        from builder.kit.targets import installed_genai_versions

        version = " ".join(installed_genai_versions()[:1]) or "(version unknown)"
        return BuilderError(
            f"{folder} does not load: the installed onnxruntime-genai {version} does not know its "
            f"model type ({why}); upgrade it (pip install -U onnxruntime-genai) to run it"
        )
    if "requires f16 but the device does not support it" in str(error):
        # A GPU (or SwiftShader) whose WebGPU adapter lacks shader-f16: the folder is fine, its
        # activations are not for this adapter.
        precision = (_build_report(folder).get("options") or {}).get("precision")
        if precision in ("int4", "int8", "fp16"):
            extra = " --io-dtype fp32" if precision != "fp16" else ""
            rebuild = _rebuild(folder, extra).replace(" -p fp16 ", " -p fp32 ")
        else:  # no build report to repeat: say what to change
            rebuild = "rebuild it with fp32 activations (-p int4 --io-dtype fp32, or -p fp32): " + _rebuild(
                folder
            ).removeprefix("rebuild it with ")
        return BuilderError(
            f"{folder} computes in fp16, and this machine's WebGPU adapter has no shader-f16 ({why}); {rebuild}"
        )
    target = (_build_report(folder).get("target") or {}).get("runtime")
    built = f" (it was built for {target})" if target else ""
    if stage == "load":
        return BuilderError(
            f"{folder} does not load on {provider} ({why}): a file of it is damaged, or its graph needs "
            f"another onnxruntime than the installed one{built}; {_rebuild(folder)}"
        )
    return BuilderError(
        f"{folder} fails to run on {provider} ({why}): its graph needs another onnxruntime or provider "
        f"than the installed one{built}; {_rebuild(folder)}"
    )


def _max_length(config: dict, folder: Path, prompt_tokens: int, max_new_tokens: int, chat: bool = False) -> int:
    """Prompt plus new tokens, or a BuilderError when that passes the folder's context_length.
    chat: the prompt is --prompt (and --system) in the chat template."""
    context = config.get("model", {}).get("context_length")
    takes = "--prompt in the chat template takes" if chat else "--prompt takes"
    if context is None or prompt_tokens + max_new_tokens <= context:
        return prompt_tokens + max_new_tokens
    room = context - prompt_tokens
    if room < 1:
        raise BuilderError(
            f"{takes} {prompt_tokens} tokens, and {folder} has context_length {context} "
            "(the build's --context-length), which leaves no room for new tokens; pass a shorter --prompt"
        )
    raise BuilderError(
        f"--max-new-tokens {max_new_tokens} does not fit: {folder} has context_length {context} "
        f"(the build's --context-length) and {takes} {prompt_tokens} tokens, "
        f"so pass --max-new-tokens {room} or less"
    )


def _has_chat_template(folder: Path) -> bool:
    """Whether the folder's tokenizer files hold a chat template where onnxruntime-genai 0.18 looks for
    one: tokenizer_config.json's chat_template (read first; the build makes it the checkpoint's
    chat_template.jinja where both were there), chat_template.jinja, chat_template.json."""

    def read(name: str):
        try:
            value = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return value.get("chat_template") if isinstance(value, dict) else None

    try:
        jinja = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    except (OSError, ValueError):
        jinja = ""
    return bool(read("tokenizer_config.json") or jinja.strip() or read("chat_template.json"))


def _no_chat_template(folder: Path) -> BuilderError:
    return BuilderError(
        f"--chat: {folder} has no chat template (its tokenizer_config.json has no chat_template, and it has "
        "no chat_template.jinja), as a base model often has none; run it without --chat to continue --prompt "
        f"as text, or put the model's chat template in {folder / 'chat_template.jinja'}"
    )


def _chat_prompt(tokenizer, folder: Path, args) -> str:
    """--prompt as the user's message (after --system's, if any) in the folder's chat template, with the
    assistant's turn opened: what transformers' apply_chat_template(..., add_generation_prompt=True) gives.

    onnxruntime-genai's own apply_chat_template renders it (its Jinja engine, on the files
    _has_chat_template names); where that engine cannot (it lacks some of Jinja2's filters, such as
    capitalize), or --template-var sets variables (genai 0.18 takes none), transformers renders it, if
    it is installed."""
    messages = [{"role": "system", "content": args.system}] if args.system is not None else []
    messages.append({"role": "user", "content": args.prompt})
    if args.template_var:
        return _transformers_chat_prompt(folder, messages, args, None)
    try:
        return tokenizer.apply_chat_template(json.dumps(messages, ensure_ascii=False), add_generation_prompt=True)
    except RuntimeError as e:
        why = _first_line(e).rstrip(":")
    except AttributeError:  # an onnxruntime-genai before apply_chat_template
        why = "this onnxruntime-genai has no Tokenizer.apply_chat_template"
    if why.startswith("Empty chat template"):
        raise _no_chat_template(folder)
    text = _transformers_chat_prompt(folder, messages, args, why)
    print(
        f"note: onnxruntime-genai cannot apply {folder}'s chat template ({why}); transformers applied it",
        file=sys.stderr,
    )
    return text


def _transformers_chat_prompt(folder: Path, messages: list[dict], args, why: str | None) -> str:
    """The chat prompt as transformers renders it, with --template-var's variables. why: what kept
    onnxruntime-genai from rendering it, or None where --template-var did."""
    genai_cannot = (
        f"onnxruntime-genai cannot apply {folder}'s chat template ({why})"
        if why
        else "onnxruntime-genai 0.18's apply_chat_template takes no template variables (--template-var)"
    )
    try:
        from jinja2 import TemplateError
        from transformers import AutoTokenizer
    except ImportError:
        without = "without --chat" if why else "without --template-var"
        raise BuilderError(
            f"--chat: {genai_cannot}; pip install transformers (--chat then applies the template with it), "
            f"or run it {without}"
        ) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        _warn_unread_template_vars(folder, tokenizer.chat_template, args.template_var)
        return tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False, **dict(args.template_var)
        )
    except TemplateError as e:  # the template's own raise_exception among them
        made_of = "--prompt and --system" if args.system is not None else "--prompt"
        raise BuilderError(
            f"--chat: {folder}'s chat template refuses the conversation made of {made_of} ({_first_line(e)}); "
            f"change {made_of}, or run it without --chat"
        ) from None
    except Exception as e:  # the tokenizer files, as transformers reads them
        raise BuilderError(
            f"--chat: neither onnxruntime-genai ({why or 'no template variables'}) nor transformers "
            f"({_first_line(e)}) can apply {folder}'s chat template; run it without --chat"
        ) from None


def _warn_unread_template_vars(folder: Path, template, variables: list[tuple[str, object]]) -> None:
    """A --template-var the template never names changes nothing (a misspelt enable_thinking left the
    thinking on without a word): say so. A name absent from the template's text cannot be read by it."""
    sources = template.values() if isinstance(template, dict) else [template or ""]
    for name, _ in variables:
        if not any(name in source for source in sources):
            print(
                f"warning: --template-var {name}: {folder}'s chat template never reads {name}, so it changes nothing",
                file=sys.stderr,
            )


# Jinja's own spellings of these literals, which a Python user writes (enable_thinking=False); JSON
# reads them not, and the text "False" is true in a template's `if`.
_PYTHON_LITERALS = {"True": True, "False": False, "None": None}


def _template_var(text: str) -> tuple[str, object]:
    """NAME=VALUE for --template-var: VALUE as JSON where it reads as JSON (false, 3, "x"), or as one of
    Python's True, False, None; else the text."""
    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r} is no NAME=VALUE; pass e.g. enable_thinking=false")
    if value in _PYTHON_LITERALS:
        return name, _PYTHON_LITERALS[value]
    try:
        return name, json.loads(value)
    except ValueError:
        return name, _utf8(value)


def _recurrent(config: dict) -> bool:
    """A model with recurrent layers (Gated DeltaNet): genai_config.json names their state inputs."""
    decoder = (config.get("model") or {}).get("decoder") or {}
    return isinstance(decoder, dict) and "past_recurrent_names" in (decoder.get("inputs") or {})


_NO_REWIND = "onnxruntime-genai 0.18 cannot rewind its recurrent state past a rejected draft"


def _ngram_refusal(folder: Path, config: dict, og) -> str | None:
    """Why onnxruntime-genai's n-gram speculation cannot run `folder`, known before it runs."""
    if not hasattr(og.GeneratorParams, "set_speculative_options"):
        return "--ngram needs onnxruntime-genai 0.18 or later: pip install -U onnxruntime-genai"
    if _recurrent(config):  # checked first: a rebuild with --logits all would not help
        return (
            f"--ngram: {folder} is a model with recurrent layers (Gated DeltaNet), and {_NO_REWIND}; "
            "run it without --ngram"
        )
    if (_build_report(folder).get("target") or {}).get("logits") == "last":
        # genai verifies every drafted token in one step and reads a logits row for each.
        return (
            f"--ngram: {folder} was built with --logits last (the genai default), and onnxruntime-genai's "
            "n-gram speculation needs a logits row for every token it verifies; rebuild it with --logits all"
        )
    return None


def _sampling(params, config: dict, seed: int | None) -> str:
    """What --sample sampled with: genai's search options (each a float), or where this onnxruntime-genai
    cannot say, the folder's genai_config.json."""
    if hasattr(params, "get_search_options"):
        options = params.get_search_options()
    else:
        options = {**(config.get("search") or {}), "random_seed": -1 if seed is None else seed}

    def number(key: str) -> str:
        value = options.get(key)
        return f"{key} {float(value):.6g}" if value is not None else f"{key} genai's default"  # .6g: as written

    seed = int(options["random_seed"])
    chosen = f"random_seed {seed}" if seed >= 0 else "a random seed (pass --seed N to repeat a run)"
    return f"{number('temperature')}, {number('top_k')}, {number('top_p')} (genai_config.json), {chosen}"


# genai's own wording when it refuses speculation: for folders without a build_report.json, or whose
# genai_config.json turns speculation on itself.
_SPECULATION_REFUSED = ("last-token-only logits", "RecurrentState::RewindTo")


def generate(args) -> None:
    try:
        og = import_native("onnxruntime_genai")  # a Ctrl-C as it initialises is no missing install
    except ImportError:
        raise BuilderError("onnxruntime-genai is not installed: pip install onnxruntime-genai") from None
    folder = Path(args.model_dir)
    config = _read_config(folder)
    _check_files(folder, config)
    try:
        str(folder).encode("utf-8")
    except UnicodeEncodeError:  # genai's og.Config takes UTF-8 text only: a TypeError traceback
        raise BuilderError(
            f"{folder}: its path has bytes that are no UTF-8, which onnxruntime-genai cannot open; rename the "
            "folder, or pass a symbolic link to it with a UTF-8 name"
        ) from None
    if args.chat and not _has_chat_template(folder):
        raise _no_chat_template(folder)
    try:
        built_for = folder_provider(folder)
    except (KeyError, IndexError, TypeError, AttributeError):
        raise BuilderError(
            f"{folder / 'genai_config.json'} lacks model.decoder.session_options; {_rebuild(folder)}"
        ) from None
    provider = args.provider or built_for
    overridden = args.provider is not None
    if args.ngram:
        refusal = _ngram_refusal(folder, config, og)
        if refusal:
            raise BuilderError(refusal)
    try:
        model = _open_model(_QuietGenai(og, config), folder, provider, overridden)
    except RuntimeError as e:
        raise _cannot_run(folder, config, provider, built_for, overridden, "load", e) from None
    try:
        tokenizer = og.Tokenizer(model)
        prompt_text = _chat_prompt(tokenizer, folder, args) if args.chat else args.prompt
        if args.chat and hasattr(tokenizer, "update_options"):
            # The template writes the special tokens it wants (a BOS among them): transformers encodes
            # its text without adding any, and so does this.
            tokenizer.update_options(add_special_tokens="false")
        prompt = tokenizer.encode(prompt_text)
    except RuntimeError as e:
        source = _tokenizer_source(folder)
        if source:  # a rebuild would copy the same files again
            raise BuilderError(
                f"{folder}: its tokenizer does not load ({_first_line(e)}); its tokenizer files are those of "
                f"the checkpoint {source}: fix or re-download them there, then {_rebuild(folder)}"
            ) from None
        raise BuilderError(
            f"{folder} is damaged: its tokenizer does not load ({_first_line(e)}); {_rebuild(folder)}"
        ) from None
    max_length = _max_length(config, folder, len(prompt), args.max_new_tokens, args.chat)
    streaming = False
    try:
        params = og.GeneratorParams(model)
        if args.sample:
            # The rest of the folder's search section (temperature, top_k, top_p) stays as genai read it;
            # genai has no beam sampling ("TopK and TopP cannot be used with a beam search").
            seed = {} if args.seed is None else {"random_seed": args.seed}
            params.set_search_options(do_sample=True, num_beams=1, max_length=max_length, **seed)
        else:
            params.set_search_options(do_sample=False, max_length=max_length)
        if args.ngram:
            params.set_speculative_options(ngram_size=args.ngram)
        generator = og.Generator(model, params)
        start = time.perf_counter()
        generator.append_tokens(prompt)  # runs the prompt through the model
        prefilled = time.perf_counter()
        new, pieces, stream = [], [], TextStream(tokenizer)
        streaming = True
        _write("" if args.chat else args.prompt)  # the text to continue, then each new token's text as it comes
        while not generator.is_done():
            generator.generate_next_token()
            new.append(int(generator.get_next_tokens()[0]))
            pieces.append(stream.add(new[-1]))
            _write(pieces[-1])
        done = time.perf_counter()
        pieces.append(stream.end())
        _write(pieces[-1] + "\n")
        text = "".join(pieces)
    except KeyboardInterrupt:
        if streaming:
            print(flush=True)  # the error line starts a line of its own
        raise
    except RuntimeError as e:
        if streaming:
            print(flush=True)  # the error line starts a line of its own
        if any(message in str(e) for message in _SPECULATION_REFUSED):
            asked = "--ngram" if args.ngram else f"the speculative section of {folder / 'genai_config.json'}"
            why = f"onnxruntime-genai's speculation ({asked}) refuses {folder} ({_first_line(e).rstrip('.')})"
            without = "run it without --ngram" if args.ngram else "remove that section"
            instead = f"rebuild it with --logits all, or {without}"
            if _recurrent(config):
                instead = f"{_NO_REWIND}, so {without}"
            raise BuilderError(f"{why}; {instead}") from None
        raise _cannot_run(folder, config, provider, built_for, overridden, "run", e) from None
    if args.sample:
        _print(f"sampled: {_sampling(params, config, args.seed)}")
    _print(f"prompt tokens: {[int(t) for t in prompt]}")
    _print(f"new tokens:    {new}")
    _print(f"text: {prompt_text + text!r}")  # quoted: a random-weight model's text holds control characters
    rate = f" ({len(new) / (done - prefilled):.1f} tokens/s)" if done > prefilled else ""
    decode = f"{len(new)} new tokens in {done - prefilled:.3f}s{rate}"
    _print(f"prompt of {len(prompt)} tokens in {prefilled - start:.3f}s, {decode}")
    if args.ngram:
        stats = generator.get_speculative_stats()
        # Verify and re-anchor runs, plus the plain steps where no n-gram matched.
        runs = int(stats["target_forward_passes"] + stats["standard_fallback_steps"])
        _print(
            f"n-gram drafts: {stats['draft_tokens_accepted']} of {stats['draft_tokens_evaluated']} accepted; "
            f"the model ran {runs} times after the prompt for {len(new)} new tokens (plain decoding: {len(new) - 1})"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", help="A folder built by python -m builder.")
    parser.add_argument(
        "--prompt",
        type=_non_empty,
        default="Hello",
        help="Text to continue, or with --chat the user's message (default: %(default)s).",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=_positive_int,
        default=16,
        metavar="N",
        help="The most tokens to generate; it stops earlier at the model's end token (default: %(default)s).",
    )
    parser.add_argument(
        "--chat",
        action="store_true",
        help="Put --prompt in the folder's chat template as the user's message and open the assistant's "
        "turn (transformers' apply_chat_template with add_generation_prompt), for instruct models; "
        "onnxruntime-genai applies the template from tokenizer_config.json or chat_template.jinja (transformers, "
        "if installed, where genai's Jinja engine cannot). Only the "
        "reply is streamed; the text: line quotes the whole formatted conversation.",
    )
    parser.add_argument(
        "--system",
        type=_utf8,
        default=None,
        metavar="TEXT",
        help="With --chat: a system message before --prompt's (a template that takes none says so).",
    )
    parser.add_argument(
        "--template-var",
        type=_template_var,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="With --chat: a variable of the chat template, such as enable_thinking=false (Qwen3's switch "
        "for its thinking); VALUE is read as JSON where it can be (false, 3), True, False and None as "
        "Python's, else as text. Repeatable; a NAME the template never reads is warned of. onnxruntime-genai "
        "0.18 passes no variables, so transformers renders the template then (it must be installed).",
    )
    parser.add_argument(
        "--sample",
        action="store_true",
        help="Sample with the folder's own search options, the temperature, top_k and top_p in its "
        "genai_config.json (the build writes the checkpoint's generation_config.json values there, "
        "transformers' defaults where it sets none), one sequence (genai has no beam sampling); a line "
        "before the token ids says what they were. Default: greedy, whatever the folder's do_sample says.",
    )
    parser.add_argument(
        "--seed",
        type=_seed,
        default=None,
        metavar="N",
        help="onnxruntime-genai's random_seed for --sample, 0 to 2147483647: the same seed, folder, prompt "
        "and options give the same tokens again (with the same onnxruntime-genai and provider). "
        "Default: a random seed each run.",
    )
    parser.add_argument(
        "--provider",
        choices=EPS,
        default=None,
        help="Override the folder's provider (default: the one it was built for).",
    )
    parser.add_argument(
        "--ngram",
        type=_ngram_size,
        default=0,
        metavar="N",
        help="Speculate with onnxruntime-genai's n-gram lookup (0.18 or later): draft the tokens that "
        "followed the last N-1 tokens earlier in the text and verify them together in one model run; "
        "the greedy tokens stay the same, and the last line counts the model's runs. Needs a folder "
        "built with --logits all, of a model without recurrent layers. Default: off.",
    )
    args = parser.parse_args()
    if hasattr(sys.stdout, "reconfigure"):
        # Characters the output's encoding lacks (a file or pipe on Windows is cp1252; PYTHONIOENCODING)
        # are written escaped, as repr() writes them: they ended the run with a UnicodeEncodeError.
        sys.stdout.reconfigure(errors="backslashreplace")
    if args.system is not None and not args.chat:
        parser.error("--system is a message of the conversation --chat makes: pass --chat too")
    if args.template_var and not args.chat:
        parser.error("--template-var sets a variable of the chat template --chat applies: pass --chat too")
    if args.seed is not None and not args.sample:
        parser.error("--seed sets the seed of --sample, and greedy decoding draws nothing: pass --sample too")
    if signal.getsignal(signal.SIGINT) is _interrupted_while_starting:  # from here on it is caught below
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        generate(args)
    except BrokenPipeError:  # `generate.py ... | head`: the text went to a reader that stopped reading
        return broken_pipe()
    except StdoutUnwritable as e:  # `> log` on a full disk
        return stdout_unwritable(e)
    except KeyboardInterrupt:  # Ctrl-C, the way to stop a reply that runs on: as the builder stops, not a traceback
        print("error: interrupted", file=sys.stderr)
        return 130
    except BuilderError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        # onnxruntime-webgpu 1.27 crashes in its teardown at exit once it has failed to find an
        # adapter (SIGSEGV), which turned this exit 2 into 139: leave without the teardown.
        os._exit(2)
    return 0


if __name__ == "__main__":
    code = main()
    # The run is over and its output written: a Ctrl-C in Python's shutdown was an "Exception ignored"
    # traceback, or (Python puts SIG_DFL back there) a death by SIGINT. Ignored, as the builder does.
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except KeyboardInterrupt:  # one that came as main() returned (genai's objects freed): the run is over as well
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(code)
