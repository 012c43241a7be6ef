"""Errors a user can cause and fix.

The CLI prints a BuilderError as one line and exits non-zero; so it does for running
out of memory and for an OS error no check foresaw (builder.cli). Anything else is a
bug in the builder and keeps its traceback.
"""


class BuilderError(Exception):
    """A problem with the user's input, options or environment.

    The message names the bad input and says what to do about it.
    """

    exit_code = 2


class BuildInterrupted(BuilderError):
    """Ctrl-C, SIGTERM or SIGHUP arrived mid-build; the partial output was removed."""

    exit_code = 130
