"""Errors in the words of the caller: BuildOptions field names for Python, not CLI flags.

Messages are written once, naming the command line's flags (batch files use the same names,
without the dashes). A Python caller passed `precision="int3"` and was told about `--precision`;
at the Python entry points (build(), from_pretrained() and run() of what it returned) each flag
is named as the keyword that sets it: `--io-dtype fp32` as `io_dtype='fp32'`, `--overwrite` as
`overwrite=True`, `--no-symmetric` as `symmetric=False`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import re

from builder.kit.errors import BuilderError
from builder.kit.options import BuildOptions


@functools.cache
def _fields() -> dict[str, dataclasses.Field]:
    """Each spelling a message may use (-p, --precision, -p/--precision) -> its field."""
    spelled = {}
    for f in dataclasses.fields(BuildOptions):
        flags = f.metadata["flags"]
        spelled.update({flag: f for flag in flags})
        spelled["/".join(flags)] = f
    return spelled


_FLAG = re.compile(r"(?<![\w-])(?:-[a-z]/)?--?[a-z][a-z0-9-]*")
_VALUE = re.compile(r" ([A-Za-z0-9_.-]+)")
_COMMANDS = ("python ", "python3 ", "install ")
_SETTING = ("pass ", "drop ", "add ", "set ", "with ", "without ", "use ", "give ")


def _keyword(f: dataclasses.Field, before: str, following: str) -> tuple[str, int]:
    """The keyword for a flag, and how much of the text after it that took (its value)."""
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
    if kind == "bool":  # "pass overwrite=True", but "verify failed: ..."
        return (f"{f.name}=True" if before.endswith(_SETTING) else f.name), 0
    value = _VALUE.match(following)
    if value:
        token = value.group(1).rstrip(".")
        if f.metadata.get("choices") and token in f.metadata["choices"]:
            return f"{f.name}={token!r}", 1 + len(token)
        if kind.startswith("int") and token.isdigit():
            return f"{f.name}={token}", 1 + len(token)
    return f.name, 0


def keyword_names(message: str) -> str:
    """The message with each BuildOptions flag written as the keyword a Python caller passes."""
    out, at = [], 0
    for match in _FLAG.finditer(message):
        if match.start() < at:
            continue
        flag = match.group(0)
        if message[: match.start()].endswith(_COMMANDS):  # `python -m builder`, `pip install -e .`
            continue
        if flag.startswith("--no-") and _fields().get("--" + flag[5:]) is not None:
            keyword, used = f"{_fields()['--' + flag[5:]].name}=False", 0
        elif flag in _fields():
            keyword, used = _keyword(_fields()[flag], message[: match.start()], message[match.end() :])
        else:
            continue
        out += [message[at : match.start()], keyword]
        at = match.end() + used
    return "".join(out + [message[at:]])


@contextlib.contextmanager
def python_option_names():
    """Re-raise a BuilderError (of the same class) with its flags named as keywords."""
    try:
        yield
    except BuilderError as error:
        if error.args and isinstance(error.args[0], str):
            error.args = (keyword_names(error.args[0]), *error.args[1:])
        raise
