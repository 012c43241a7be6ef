"""Command line: `python -m builder [build] ...`, `inspect OUT`, `batch FILE.yaml`.

The build flags are generated from builder.kit.options.BuildOptions, so --help
shows exactly the options the code reads, with their real defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import errno
import io
import os
import signal
import sys
import traceback

from builder.arg_parser import ArgumentParser
from builder.kit.errors import BuilderError
from builder.kit.options import BuildOptions
from builder.kit.progress import end_line
from builder.version import __version__

COMMANDS = ("build", "inspect", "batch")


class _ListAppend(argparse.Action):
    """--int8-layers a,b --int8-layers c -> [a, b, c]."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = list(getattr(namespace, self.dest) or [])
        given = [v.strip() for v in values.split(",") if v.strip()]
        if not given:  # '' (an unset shell variable) was taken as no pattern at all, in silence
            parser.error(f"{option_string}: no pattern in {values!r}; name modules like lm_head or '*.down_proj'")
        items += given
        setattr(namespace, self.dest, items)


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = BuildOptions()
    for f in dataclasses.fields(BuildOptions):
        meta = f.metadata
        if not meta.get("cli", True):
            continue
        default = getattr(defaults, f.name)
        help_text = meta["help"]
        kwargs = {"dest": f.name, "help": help_text}
        kind = str(f.type)
        if kind.startswith("bool"):
            if default:
                kwargs["action"] = argparse.BooleanOptionalAction
                kwargs["help"] += " (default: on)"
            else:
                kwargs["action"] = "store_true"
        elif kind.startswith("list"):
            kwargs["action"] = _ListAppend
            kwargs["metavar"] = meta.get("metavar")
        else:
            if meta.get("choices"):
                kwargs["choices"] = meta["choices"]
            if kind.startswith("int"):
                kwargs["type"] = int
            if meta.get("metavar"):
                kwargs["metavar"] = meta["metavar"]
            if default not in (None, ""):
                kwargs["help"] += f" (default: {default})"
        if f.name == "model":
            kwargs["required"] = True
        parser.add_argument(*meta["flags"], **kwargs)
    parser.set_defaults(
        **{
            f.name: getattr(defaults, f.name)
            for f in dataclasses.fields(BuildOptions)
            if not str(f.type).startswith("list")
        }
    )


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m builder",
        description="Build a Hugging Face LLM checkpoint into an ONNX Runtime GenAI model folder "
        "(model.onnx, model.onnx.data, genai_config.json, tokenizer, build_report.json), "
        "or with --format transformers.js into a transformers.js folder. "
        "Other commands: 'python -m builder inspect OUT' prints a built model's node counts "
        "and one layer's node sequence; 'python -m builder batch FILE.yaml' runs many builds.",
        epilog="Example: python -m builder -m Qwen/Qwen3-4B -p int4 -e webgpu",
    )
    parser.add_argument("--version", action="version", version=f"builder {__version__}")
    parser.add_argument("--debug", action="store_true", help="Show tracebacks for errors.")
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="No progress display and no summary line: stdout gets the output folder alone, stderr only "
        "warnings and errors (build_report.json holds the timings and --verify's numbers).",
    )
    add_build_arguments(parser)
    return parser


def options_from_args(args: argparse.Namespace) -> BuildOptions:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(BuildOptions)}
    values = {k: ([] if v is None and k.endswith("_layers") else v) for k, v in values.items()}
    return BuildOptions(**values)


def unknown_command(word: str) -> str | None:
    """The error for a first argument that is neither a command nor an option, if it is one.

    Without this, `python -m builder bacth jobs.yaml` would reach the build parser and
    complain about -m instead of the misspelled command.
    """
    if not word or word.startswith("-"):
        return None
    if word.lower().endswith((".yaml", ".yml")):  # before the spelling hint: batch.yaml is close to batch
        return f"unknown command {word!r}; to run a batch file: python -m builder batch {word}"
    close = difflib.get_close_matches(word, COMMANDS, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'? " if close else ""
    if not close and (os.path.exists(word) or word.count("/") == 1):
        return f"unknown command {word!r}; to build this model, pass it with -m: python -m builder -m {word}"
    return (
        f"unknown command {word!r}; {hint}commands: {', '.join(COMMANDS)} (a build needs no command: "
        "python -m builder -m MODEL ...)"
    )


def unrecognized_arguments(extras: list[str], argv: list[str]) -> str:
    """argparse's error for words no option takes, and why they are there when a layer pattern was
    unquoted: the shell replaced `--int8-layers *` (or '*.v_proj' where files match) with the file
    names here, the option took the first and the rest were listed as unrecognized, no word of why."""
    message = f"unrecognized arguments: {' '.join(extras)}"
    flags = sorted({"--int8-layers", "--float-layers"} & set(argv))
    if flags and all(not word.startswith("-") and os.path.lexists(word) for word in extras):
        message += (
            f"; those are names of files here, which the shell puts in place of an unquoted pattern that "
            f"matches them: quote each {flags[0]} pattern ({flags[0]} '*.v_proj')"
        )
    return message


def program() -> int:
    """`python -m builder` and the `onnx-builder` command: main() as the whole process.

    Once a build's output is published a stop signal is only noted, so the process still prints
    the path and exits 0 (the shutdown after --verify's torch takes ~0.7 s). Python's finalization
    puts SIG_DFL back wherever it finds a Python handler, which let a signal in that shutdown kill
    a finished build (exit 130/143): once main() returns the stop signals are ignored, the process
    ending anyway. Not in main(), which a notebook or a test may call and then want Ctrl-C back.
    """
    from builder import interruptible
    from builder.interruptible import calls_interrupted, exit_now, stop_signals_held

    try:
        with stop_signals_held():  # a KeyboardInterrupt in onnx's initialisation aborts the process
            from builder import output_dir
    except KeyboardInterrupt:  # the onnx-builder command's Ctrl-C while Python imports
        print("error: interrupted", file=sys.stderr)
        return 130

    output_dir.hold_signals_after_publish = True
    interruptible.threaded = True  # this process ends with exit_now after an interrupted load
    write_paths_as_they_are(sys.stdout)
    code = main()
    for sig in output_dir.STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if calls_interrupted():  # here, not in __main__ alone: the onnx-builder script exits through sys.exit
        exit_now(code)
    return code


def write_paths_as_they_are(stream) -> None:
    """Print a path's bytes that are no UTF-8 (Linux allows any in a name; Python holds them as
    surrogate escapes) as those bytes, as Python's C.UTF-8 locale does. A stdout that encodes strictly
    (en_US.UTF-8, PYTHONIOENCODING=utf-8) raised UnicodeEncodeError on them: a traceback and exit 1
    after the build was published, and a batch's builds ran without a summary."""
    if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
        stream.reconfigure(errors="surrogateescape")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `--debug batch jobs.yaml`: flags written before the command belong to it.
    leading = []
    while len(argv) > 1 and argv[0] in ("--debug", "--quiet"):
        leading.append(argv.pop(0))
    if argv and argv[0] in COMMANDS:
        argv = argv[:1] + leading + argv[1:]
    else:
        argv = leading + argv
    command = argv[0] if argv and argv[0] in COMMANDS else "build"
    if argv and argv[0] in COMMANDS:
        argv = argv[1:]
    elif argv and unknown_command(argv[0]):
        print(f"error: {unknown_command(argv[0])}", file=sys.stderr)
        return 2
    debug = "--debug" in argv
    try:
        if command == "inspect":
            from builder.inspect import main as inspect_main

            return inspect_main(argv)
        if command == "batch":
            from builder.batch import main as batch_main

            return batch_main(argv)
        parser = build_parser()
        args, extras = parser.parse_known_args(argv)
        if extras:
            parser.error(unrecognized_arguments(extras, argv))
        from builder.pipeline import build_from_flags

        result = build_from_flags(options_from_args(args), show_progress=not args.quiet)
        try:
            write_stdout(f"{result.output}\n")
        except StdoutUnwritable as e:
            return stdout_unwritable(e, f"built {result.output}, but ")
        return 0
    except StdoutUnwritable as e:
        return stdout_unwritable(e)
    except BuilderError as e:
        end_line()
        if debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        end_line()
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return broken_pipe()
    except MemoryError:
        end_line()
        if debug:
            traceback.print_exc()
        print(
            "error: out of memory; close other programs, or lower --read-ahead-mb (batch: --jobs)",
            file=sys.stderr,
        )
        return 1
    except OSError as e:
        # What the checks before it did not foresee (a name too long for the file system, an
        # I/O error): still one line, naming the path the system refused.
        end_line()
        if debug:
            traceback.print_exc()
        where = f" {e.filename}" if e.filename else ""
        print(
            f"error: could not access{where} ({e.strerror or e}); check the path, its permissions and its disk",
            file=sys.stderr,
        )
        return 2


class StdoutUnwritable(Exception):
    """stdout refused a write, not for a closed pipe: `> log` on a full disk, an I/O error."""

    def __init__(self, error: OSError):
        full = error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        advice = "free space on the disk it goes to" if full else "check the file or device it goes to"
        super().__init__(f"could not write to stdout ({error.strerror or error}); {advice}")


def write_stdout(text: str) -> None:
    """`text` on stdout, flushed now. A stdout that fails (a closed pipe, a full disk under `> log`)
    then fails here, where the command turns it into one line or a quiet exit, not in the
    interpreter's final flush: 'Exception ignored ... OSError' and exit 120, or for a full disk a
    misleading 'could not access' error with exit 2."""
    try:
        stream = sys.stdout
        raw = getattr(stream, "buffer", None)
        if isinstance(raw, io.RawIOBase):
            # python -u, PYTHONUNBUFFERED (CI sets it): a write to a pipe whose reader left can be
            # short, and the text layer drops the rest without a word, so exit 0 for output cut off.
            stream.flush()
            data = memoryview(text.replace("\n", os.linesep).encode(stream.encoding, stream.errors))
            while data:
                data = data[raw.write(data) or 0 :]
        else:
            stream.write(text)
            stream.flush()
    except BrokenPipeError:
        raise  # the reader went away (`| head`): broken_pipe() ends it quietly
    except OSError as e:
        raise StdoutUnwritable(e) from None


def stdout_unwritable(error: StdoutUnwritable, done: str = "") -> int:
    """One error line for a stdout that failed, exit 1 (as `echo hi > /dev/full` does); `done` says
    what was finished anyway. stdout is pointed at /dev/null, so what is left in its buffer cannot
    fail again at exit."""
    end_line()
    _stdout_to_devnull()
    print(f"error: {done}{error}", file=sys.stderr)
    return 1


def _stdout_to_devnull() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def broken_pipe() -> int:
    """The reader of stdout went away (`... | head`): stop quietly, as a Unix tool does.

    stdout is pointed at /dev/null so the interpreter's final flush cannot fail again.
    """
    _stdout_to_devnull()
    return 128 + signal.SIGPIPE
