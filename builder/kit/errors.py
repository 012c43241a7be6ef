"""Errors a user can cause and fix.

The CLI prints a BuilderError as one line and exits non-zero; so it does for running
out of memory and for an OS error no check foresaw (builder.cli). Anything else is a
bug in the builder and keeps its traceback.
"""

from __future__ import annotations

import errno
import re
from pathlib import Path


class BuilderError(Exception):
    """A problem with the user's input, options or environment.

    The message names the bad input and says what to do about it.
    """

    exit_code = 2


# What to do with weights quantized ahead of time (FP8, GPTQ, AWQ, bitsandbytes, ...), which the
# builder does not read: every refusal of them says the same.
BUILD_FROM_FLOAT = (
    "build from the float checkpoint it was made from (bf16, fp16 or fp32) and choose the precision with -p"
)


def shown(value, limit: int = 120) -> str:
    """A value as a message quotes it (its repr), cut to `limit` characters: a batch file's list
    of a million patterns was echoed whole, a 34 MB line."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 20]}... ({len(text):,} characters)"


class BuildInterrupted(BuilderError):
    """Ctrl-C, SIGTERM or SIGHUP arrived mid-build; the partial output was removed."""

    exit_code = 130


# A build writes into a hidden sibling of its output, renamed into place when complete
# (builder/output_dir.py): `.builder-staging-<output name>-<pid>-<8 hex>`.
STAGING_PREFIX = ".builder-staging-"
_STAGING = re.compile(re.escape(STAGING_PREFIX) + r"(.+)-[0-9]+-[0-9a-f]{8}")

_WRITE_ADVICE = {
    errno.ENOSPC: "free disk space or choose another output folder",
    errno.EDQUOT: "the disk quota is used up: free some of it or choose another output folder",
    # ulimit -f, or a file system's own ceiling (FAT32: 4 GB): more free space would not help
    errno.EFBIG: "a file-size limit refuses a file this large (ulimit -f, or a FAT32 volume's 4 GB): "
    "raise the limit or choose an output folder on another file system",
    errno.EROFS: "the file system is read-only: choose another output folder",
    errno.EACCES: "check the output folder's permissions or choose another one",
    errno.EPERM: "check the output folder's permissions or choose another one",
}


def shown_path(path) -> str:
    """The path as the user knows it: the output folder's name for its hidden staging folder."""
    parts = Path(path).parts
    return str(Path(*[m.group(1) if (m := _STAGING.fullmatch(p)) else p for p in parts])) if parts else str(path)


def write_failed(path, error: OSError, doing: str = "writing ") -> BuilderError:
    """A write into the output that the OS refused, with the advice its reason calls for."""
    advice = _WRITE_ADVICE.get(error.errno, "check the disk, or choose another output folder")
    return BuilderError(f"{doing}{shown_path(path)} failed ({error.strerror or error}); {advice}")
