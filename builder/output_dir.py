"""Outputs that are complete or absent.

A build writes into a hidden sibling folder and renames it into place only
when everything is written. On error, Ctrl-C, SIGTERM or SIGHUP the staging
folder is removed. An existing output is replaced only with --overwrite, and
only if it carries our build report (we never delete a folder we did not make).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import uuid
from pathlib import Path

from builder.kit.errors import BuilderError, BuildInterrupted

REPORT_NAME = "build_report.json"
STAGING_PREFIX = ".builder-staging-"


def check_output_free(output: Path, overwrite: bool) -> None:
    if not output.exists():
        return
    if not output.is_dir():
        raise BuilderError(f"output {output} exists and is a file; choose another -o/--output")
    if not overwrite:
        raise BuilderError(
            f"output folder {output} already exists; pass --overwrite to replace it or choose another -o/--output"
        )
    if any(output.iterdir()) and not (output / REPORT_NAME).is_file():
        raise BuilderError(
            f"output folder {output} exists and was not made by this builder (no "
            f"{REPORT_NAME}); refusing to delete it even with --overwrite"
        )


@contextlib.contextmanager
def staged_output(output: Path, overwrite: bool):
    """Yield a staging folder; on success it becomes `output` in one rename."""
    output = Path(output)
    if output.is_symlink():
        # Build where the link points: renaming over the link itself would leave the old
        # build behind at its target, and a staging folder named after the link.
        output = Path(os.path.realpath(output))
    if not output.name or output.name in (".", ".."):
        raise BuilderError(f"output {str(output)!r} names no folder; pass a folder such as out/my-model to -o/--output")
    try:
        check_output_free(output, overwrite)
        output.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(output)
        staging = output.parent / f"{STAGING_PREFIX}{output.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
    except OSError as e:
        # A read-only filesystem, /proc or /sys, a folder without write permission, a
        # file where a parent folder should be.
        where = e.filename if isinstance(e.filename, str) else None
        why = (
            f"{where} is a file, not a folder"
            if isinstance(e, (FileExistsError, NotADirectoryError)) and where
            else f"{e.strerror or e}{': ' + where if where else ''}"
        )
        raise BuilderError(f"cannot create the output folder {output} ({why}); choose another -o/--output") from None
    with _stop_signals_as_interrupt() as caught:
        try:
            yield staging
            try:
                _move_into_place(staging, output, overwrite)
            except OSError as e:
                raise BuilderError(
                    f"moving the finished build into {output} failed ({e.strerror or e}); choose another -o/--output"
                ) from None
        except KeyboardInterrupt:
            shutil.rmtree(staging, ignore_errors=True)
            stopped = BuildInterrupted(
                f"build interrupted; removed the partial output {staging.name}, {output} was left as it was"
            )
            if caught:
                stopped.exit_code = 128 + caught[0]  # as a shell reports a process its signal ended
            raise stopped from None
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def remove_stale_staging(output: Path) -> None:
    """Remove staging folders for `output` whose build process is gone.

    A build killed with SIGKILL (OOM killer, kill -9) cannot clean up; the pid in
    the folder name tells a dead build's leftovers from a live concurrent one.
    """
    pattern = f"{STAGING_PREFIX}{glob.escape(output.name)}-*-" + "[0-9a-f]" * 8
    for staging in Path(output).parent.glob(pattern):
        pid = staging.name[len(STAGING_PREFIX) + len(output.name) + 1 :].rsplit("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(staging, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _move_into_place(staging: Path, output: Path, overwrite: bool) -> None:
    old = None
    if output.exists():
        check_output_free(output, overwrite)
        old = output.parent / f"{STAGING_PREFIX}old-{output.name}-{uuid.uuid4().hex[:8]}"
        os.rename(output, old)
    os.rename(staging, output)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# SIGHUP: the terminal or ssh session closed under a running build.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def _stop_signals_as_interrupt():
    """SIGTERM and SIGHUP unwind like Ctrl-C so the staging folder is cleaned up; the list
    it yields gets the number of the signal that stopped the build."""
    caught: list[int] = []

    def handler(signum, frame):
        caught.append(signum)
        # Only the first stops the build. A repeat would interrupt the cleanup itself and leave
        # half a staging folder: a batch job's parent-death SIGTERM comes once for each thread
        # of the dying batch, as the kernel hands the orphan from one thread to the next.
        if len(caught) == 1:
            raise KeyboardInterrupt

    try:
        previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    except ValueError:  # not the main thread: leave signals alone
        yield caught
        return
    try:
        yield caught
    finally:
        for sig, handler_before in previous.items():
            signal.signal(sig, handler_before)
