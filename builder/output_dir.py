"""Outputs that are complete or absent.

A build writes into a hidden sibling folder and renames it into place only
when everything is written. On error, Ctrl-C, SIGTERM or SIGHUP the staging
folder is removed. An existing output is replaced only with --overwrite, and
only if it carries our build report and nothing that build did not write (we never
delete what we did not make). On Linux the replacing swaps the two folders in one
step (renameat2 RENAME_EXCHANGE), so the output is never absent; elsewhere it takes
two renames (publish_folder).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import fnmatch
import glob
import hashlib
import os
import re
import shutil
import signal
import sys
import uuid
from functools import cache
from pathlib import Path

from builder.formats import FORMATS
from builder.kit.data_file import NO_SYNC
from builder.kit.errors import STAGING_PREFIX, BuilderError, BuildInterrupted

REPORT_NAME = "build_report.json"
# Set by `python -m builder` (builder/__main__.py), whose process ends with the build: once an
# output is published, a stop signal is only noted, so the process still prints the path and
# exits 0. Anything else that builds (a library call, cli.main in a notebook) gets its own
# handlers back.
hold_signals_after_publish = False


def check_output_free(output: Path, overwrite: bool, in_batch: bool = False) -> None:
    """Refuse an output the build would not replace. in_batch: worded for a batch job, whose
    folder comes from its output: key and which always replaces what it built."""
    other = "give the job another output folder" if in_batch else "choose another -o/--output"
    replacing = "a build replaces" if in_batch else "--overwrite replaces"
    if not output.exists():
        return
    if not output.is_dir():
        raise BuilderError(f"output {output} exists and is a file; {other}")
    if is_mount_point(output):  # found only at the end, when the finished build's rename failed (EBUSY)
        raise BuilderError(
            f"output {output} is a mount point, which a build cannot replace (it renames its finished folder "
            f"into place); pass a folder inside it, such as {output / 'my-model'}"
        )
    if not overwrite:
        raise BuilderError(f"output folder {output} already exists; pass --overwrite to replace it or {other}")
    if any(output.iterdir()) and not (output / REPORT_NAME).is_file():
        raise BuilderError(
            f"output folder {output} exists and was not made by this builder (no {REPORT_NAME}); refusing to "
            f"delete it{'' if in_batch else ' even with --overwrite'}; {other}, or empty it yourself"
        )
    others = files_not_built(output)
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise BuilderError(
            f"output folder {output} also holds what this builder did not write ({shown}); "
            f"{replacing} a whole folder, so move those out of it or {other}"
        )


MOUNT_TABLE = "/proc/self/mountinfo"


def is_mount_point(folder: Path) -> bool:
    """Whether a file system is mounted at `folder`. os.path.ismount compares the device numbers of
    the folder and its parent, which are the same for a bind mount of a folder on the same file
    system (mount --bind, a docker -v nested in another -v of the same disk): such an output ran
    the whole build, then failed to be renamed into place (EBUSY). Linux lists every mount point
    in /proc/self/mountinfo, its fifth field, with space, tab, newline and backslash as octal escapes."""
    if os.path.ismount(folder):
        return True
    try:
        with open(MOUNT_TABLE, "rb") as f:
            table = f.read()
    except OSError:  # not Linux: ismount's answer
        return False
    target = os.fsencode(os.path.realpath(folder))
    unescape = re.compile(rb"\\([0-7]{3})")
    for line in table.splitlines():
        fields = line.split(b" ")
        if len(fields) > 4 and unescape.sub(lambda m: bytes([int(m.group(1), 8)]), fields[4]) == target:
            return True
    return False


# The config file each output format writes, which its runtime reads first.
CONFIG_FILES = {name: folder.config_file for name, folder in FORMATS.items()}


def files_not_built(output: Path) -> list[str]:
    """What a finished output holds besides what a build writes there (a user's notes, a
    checkpoint copied into it), as paths relative to it. The model files are the ones its
    build report names; a report from before it named them (or an unreadable one) is taken
    to name the builder's usual ones."""
    import json

    from builder.kit.tokenizer_files import TOKENIZER_FILES

    try:
        report = json.loads((output / REPORT_NAME).read_text())
    except (OSError, ValueError):
        report = None
    files = report.get("files") if isinstance(report, dict) else None
    # Every file a build may copy or write besides the model (transformers.js writes a
    # generation_config.json when the checkpoint has none).
    built = {REPORT_NAME, *CONFIG_FILES.values(), *TOKENIZER_FILES}
    usual = ()
    if isinstance(files, dict) and isinstance(files.get("model"), str) and isinstance(files.get("data"), list):
        built |= {files["model"], *map(str, files["data"])}
    else:
        usual = ("model.onnx", "model.onnx.data", "onnx/model*.onnx", "onnx/model*.onnx_data*")
    others = []
    for path in sorted(output.rglob("*")):
        name = path.relative_to(output).as_posix()
        if any(name.startswith(o) for o in others if o.endswith("/")):
            continue
        if path.is_dir() and not path.is_symlink():
            if not any(b.startswith(name + "/") for b in [*built, *usual]):
                others.append(name + "/")
        elif name not in built and not any(fnmatch.fnmatchcase(name, u) for u in usual):
            others.append(name)
    return others


def output_folder(output: Path, in_batch: bool = False) -> Path:
    """The folder a build writes for -o: a symlink's target, refused if it names no folder.
    in_batch: worded for a batch job, whose folder comes from its output: key, as check_output_free."""
    output = Path(output)
    if output.is_symlink():
        # Build where the link points: renaming over the link itself would leave the old
        # build behind at its target, and a staging folder named after the link.
        output = Path(os.path.realpath(output))
        if output.is_symlink():
            # realpath stops inside a loop of links: the build ran to the end and was then refused
            # as a link that "became a symbolic link while the build ran"
            raise BuilderError(
                f"output {output} is a symbolic link that leads back to itself (a loop of links); remove the "
                f"link, or {'give the job another output folder' if in_batch else 'choose another -o/--output'}"
            )
    if not output.name or output.name in (".", ".."):
        raise BuilderError(
            f"output {str(output)!r} names no folder of its own (a build replaces its whole output folder); "
            "pass a new folder such as out/my-model to -o/--output"
        )
    return output


@contextlib.contextmanager
def staged_output(output: Path, overwrite: bool):
    """Yield a staging folder; on success it becomes `output` in one rename."""
    output = output_folder(output)
    try:
        check_output_free(output, overwrite)
        output.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(output)
        refuse_a_second_writer(output)
        staging = _staging_name(output)
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
        if isinstance(e, PermissionError) and where and Path(where).parent == output.parent and output.is_dir():
            # A folder of one's own in a folder one cannot write (/models/alice): the message named
            # only a hidden staging folder the user never asked for.
            raise BuilderError(
                f"cannot build into {output}: a build writes beside it, in {output.parent}, and renames its "
                f"finished folder into place, and {output.parent} is not writable ({why}); pass a folder inside "
                f"it, such as {output / 'my-model'}, or choose another -o/--output"
            ) from None
        raise BuilderError(f"cannot create the output folder {output} ({why}); choose another -o/--output") from None
    held = hold_working_folder(staging)
    with _StopSignals() as stop, contextlib.closing(held):
        try:
            yield staging
            try:
                sync_folder(staging)
            except OSError as e:
                raise BuilderError(
                    f"writing the finished build to disk failed ({e.strerror or e}: {e.filename}); "
                    "check the disk, or choose another -o/--output"
                ) from None
            _before_publish()
            stop.deferring = True  # the output is complete: a stop now waits for it to be in place
            (staging / ALIVE_MARK).unlink(missing_ok=True)  # not part of the output
            try:
                publish_folder(staging, output, overwrite)
            except OSError as e:
                raise BuilderError(
                    f"moving the finished build into {output} failed ({e.strerror or e}); choose another -o/--output"
                ) from None
            stop.keep = hold_signals_after_publish
        except KeyboardInterrupt:
            stop.deferring = True
            shutil.rmtree(staging, ignore_errors=True)
            kept = f"{output} was left as it was" if output.exists() else f"nothing was written to {output}"
            stopped = BuildInterrupted(f"build interrupted; removed the partial output {staging.name}, {kept}")
            if stop.caught:
                stopped.exit_code = 128 + stop.caught[0]  # as a shell reports a process its signal ended
            raise stopped from None
        except BaseException:
            stop.deferring = True
            shutil.rmtree(staging, ignore_errors=True)
            raise


# The data file's, and EBADF, which some file systems answer for a folder opened read-only.
_NO_SYNC = (*NO_SYNC, errno.EBADF)


def sync_folder(folder: Path) -> None:
    """fsync every file and folder under `folder`, before the rename that publishes it: only
    model.onnx.data was synced, so a power loss after the rename could leave a published output
    whose model.onnx or configs were empty (ext4 and xfs write file data after the rename)."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                _sync(path, os.O_RDONLY)
        _sync(root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _sync(path, flags: int) -> None:
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in _NO_SYNC:
            e.filename = path
            raise
    finally:
        os.close(fd)


def sync_file(path: Path) -> None:
    """fsync one file before the rename that puts it in place (a batch summary), so that a power
    loss leaves the earlier file or this one, not an empty one."""
    _sync(path, os.O_RDONLY)


def sync_folder_quietly(folder: Path) -> None:
    """fsync a folder after renames in it, where the file system allows it (what was renamed is in
    place either way)."""
    with contextlib.suppress(OSError):
        _sync(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _before_publish() -> None:
    """Nothing; the point where a test pauses a finished build (batch_exec's pause hook)."""


def _staging_name(output: Path) -> Path:
    return output.parent / f"{STAGING_PREFIX}{_staging_stem(output.name)}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _staging_stem(name: str) -> str:
    """The output's name as its staging folders carry it: shortened (to a prefix and a hash of
    the whole) where the ~35 characters they add would pass the file system's 255-byte limit,
    which refused output names of 221-255 bytes that are legal themselves. Measured in the bytes the
    file system holds (os.fsencode): a name with bytes that are no UTF-8 (-o $'\\xff') is legal on
    Linux, and str.encode() raised on it."""
    raw = os.fsencode(name)
    if len(raw) <= 200:
        return name
    return raw[:150].decode(errors="ignore") + "~" + hashlib.sha256(raw).hexdigest()[:16]


def staging_folders(output: Path) -> list[tuple[Path, int]]:
    """The staging folders of `output` (also the old output a rebuild is replacing), with the
    pid of the build that made each; not those of an output whose name merely begins the same
    (`a` against `a-verify`)."""
    output = Path(output)
    found = []
    # Versions before the shortened stem named staging folders after the whole name (which fit
    # up to 220 bytes); a build of theirs killed with SIGKILL is still this output's to sweep.
    for stem in dict.fromkeys([_staging_stem(output.name), output.name]):
        name = re.compile(re.escape(f"{STAGING_PREFIX}{stem}-") + r"([0-9]+)-[0-9a-f]{8}")
        for path in output.parent.glob(f"{STAGING_PREFIX}{glob.escape(stem)}-*"):
            match = name.fullmatch(path.name)
            if match:
                found.append((path, int(match.group(1))))
    return found


def remove_stale_staging(output: Path) -> None:
    """Remove staging folders for `output` whose build process is gone.

    A build killed with SIGKILL (OOM killer, kill -9) cannot clean up. Each build holds a
    lock on its folder (_hold), which the kernel drops however the process ends: a held
    folder is live, and a free one that its build marked as locked (ALIVE_MARK) is dead.
    The pid in the name decides only where the lock says nothing (a file system without
    flock, a build by an older version): the pid alone misjudges builds in other PID
    namespaces, such as a container retried after an OOM kill, whose new build often has
    the dead one's pid (1, even its own), or a live build in another container.
    """
    for staging, pid in staging_folders(output):
        lock = _lock_state(staging)
        if lock == "held":
            continue
        if (lock == "free" and (staging / ALIVE_MARK).exists()) or not _alive(pid):
            shutil.rmtree(staging, ignore_errors=True)


def hold_working_folder(folder: Path) -> _Held:
    """Lock a folder this process works in and mark it, as a build does its staging folder, so that
    remove_abandoned can tell it from one whose process was killed (close the handle when done)."""
    held = _hold(folder)
    if held.fd is not None:
        # a full disk: without the mark the pid decides (staging folders), as where flock is missing
        with contextlib.suppress(OSError):
            (folder / ALIVE_MARK).touch()
    return held


def remove_abandoned(folders) -> None:
    """Remove the held-and-marked folders whose process is gone (its lock free, its mark left): a
    Ray batch's run folder after its driver met SIGKILL stayed in output_root for good."""
    for folder in folders:
        if _lock_state(folder) == "free" and (folder / ALIVE_MARK).exists():
            shutil.rmtree(folder, ignore_errors=True)


def refuse_a_second_writer(output: Path) -> None:
    """Refuse a build of an output another live build is writing: the second one to finish failed
    only at the end, after all its work ("already exists"), or, with --overwrite, replaced the
    first's output with its own."""
    busy = [pid for staging, pid in staging_folders(output) if _lock_state(staging) == "held"]
    if busy:
        raise BuilderError(
            f"another build (pid {busy[0]}) is writing {output} now; wait for it to finish, or build into "
            "another folder"
        )


class _Held:
    """An open descriptor of a staging folder with flock held: the kernel lets go of it when
    the process ends, however it ends."""

    def __init__(self, fd: int | None):
        self.fd = fd

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _hold(staging: Path) -> _Held:
    try:
        fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return _Held(None)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # a file system without flock (some network mounts): the pid alone decides
        os.close(fd)
        return _Held(None)
    return _Held(fd)


def held_by_a_live_build(folder: Path) -> bool:
    """Whether a live process holds `folder`'s lock (a build writing its staging folder)."""
    return _lock_state(folder) == "held"


# Made in a staging folder once its build holds the lock, and removed before it is published.
ALIVE_MARK = ".builder-locked"


def _lock_state(staging: Path) -> str:
    """ "held" (a live build has it), "free", or "unknown" (no flock on this file system)."""
    try:
        fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return "unknown"
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return "held"
    except OSError:
        return "unknown"
    finally:
        os.close(fd)
    return "free"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def publish_folder(staging: Path, output: Path, overwrite: bool) -> None:
    """Put the complete folder `staging` at `output`, replacing the build there (with `overwrite`).

    The folders are swapped in one step where the system can (exchange), so a kill at any
    point leaves either build at `output`, never neither; elsewhere two renames, with the old
    build put back if the second fails. Either way the old build then sits under a staging
    name, marked as abandoned, until it is removed: a kill before that leaves a folder the
    next build's sweep removes whatever pid it carries (remove_stale_staging). The caller
    has synced `staging`; the parent folder is synced here, after the renames.
    """
    if output.is_symlink():
        # -o's own link was followed before the build began (output_folder), so this one was made
        # since. The renames would act on the link: a dangling one was replaced without --overwrite,
        # and a swap left the link under a staging name that no sweep removes (rmtree refuses links).
        raise BuilderError(
            f"output {output} became a symbolic link while the build ran; remove it, or choose another -o/--output"
        )
    if not output.exists() and _rename_unless_taken(staging, output):
        sync_folder_quietly(output.parent)  # the rename itself
        return
    check_output_free(output, overwrite)  # it was there, or appeared since the build began
    # Locked first (the lock goes with the folder), so that the sweeps leave the old build
    # alone while it sits under a staging name, until it is marked and removed.
    with contextlib.closing(_hold(output)):
        if exchange(staging, output):
            old = staging  # the staging name now holds the previous build
            _mark_abandoned(old)
        else:
            old = _staging_name(output)
            os.rename(output, old)
            _mark_abandoned(old)
            try:
                os.rename(staging, output)
            except OSError:
                (old / ALIVE_MARK).unlink(missing_ok=True)  # it is an output again
                os.rename(old, output)  # the previous build stays where it was
                raise
        sync_folder_quietly(output.parent)  # the renames themselves
        shutil.rmtree(old, ignore_errors=True)


def _mark_abandoned(folder: Path) -> None:
    """Mark a folder this process holds locked, so that a sweep finding it with the lock free
    takes it for a dead build's, as it does a staging folder: without the mark only the pid in
    its name decided, and a live process with that pid (a container's retried build is often
    pid 1 again) kept a killed run's previous build there for good."""
    with contextlib.suppress(OSError):  # then the pid decides, as before
        (folder / ALIVE_MARK).touch()


# renameat2(2)'s flags (Linux 3.15; glibc 2.28 exports the call): fail with EEXIST where the
# destination exists, and swap two paths.
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_AT_FDCWD = -100
# Answers that say renameat2's flag is not to be had here, so plain renames do it: a file system without it
# (EINVAL, EOPNOTSUPP), a kernel or libc without the call (ENOSYS), paths on two file systems
# (EXDEV), a container's seccomp filter that refuses calls it does not know (EPERM; a real
# permission problem fails the renames too, with their own message).
_NO_RENAMEAT2 = (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EXDEV, errno.EPERM)


def _rename_unless_taken(staging: Path, output: Path) -> bool:
    """Rename `staging` to a free `output`; False (nothing moved) where something took the path since
    it was checked. A plain rename replaces an empty folder, so a folder made at `output` in the
    meantime (another tool, another build's mkdir) would vanish without a word."""
    try:
        _renameat2(os.fsencode(staging), os.fsencode(output), RENAME_NOREPLACE)
    except OSError as e:
        if e.errno == errno.EEXIST:
            return False
        if e.errno not in _NO_RENAMEAT2:
            raise
        os.rename(staging, output)  # no such rename here: as the system's rename does it
    return True


def exchange(a: Path, b: Path) -> bool:
    """Swap the paths `a` and `b` in one step; False (nothing moved) where the system cannot."""
    try:
        _renameat2(os.fsencode(a), os.fsencode(b), RENAME_EXCHANGE)
    except OSError as e:
        if e.errno in _NO_RENAMEAT2:
            return False
        raise
    return True


def _renameat2(src: bytes, dst: bytes, flags: int) -> None:
    call = _libc_renameat2()
    if call is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available here", src)
    if call(_AT_FDCWD, src, _AT_FDCWD, dst, flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), os.fsdecode(src), None, os.fsdecode(dst))


@cache
def _libc_renameat2():
    """libc's renameat2, or None (not Linux; glibc before 2.28; a libc without it)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        call = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    call.restype = ctypes.c_int
    return call


# SIGHUP: the terminal or ssh session closed under a running build.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _StopSignals:
    """Ctrl-C, SIGTERM and SIGHUP unwind the build as KeyboardInterrupt, so the staging folder
    is removed; `caught` gets the number of each signal that came.

    Only the first one raises, and none while `deferring`: a signal must not cut short the
    removal of a staging folder (a batch job's parent-death SIGTERM comes once for each thread
    of the dying batch, as the kernel hands the orphan from one thread to the next; an impatient
    second Ctrl-C) nor the renames that publish a complete output. A SIGINT that the process
    ignores (a shell's background job) stays ignored.
    """

    def __init__(self) -> None:
        self.caught: list[int] = []
        self.deferring = False
        self.keep = False  # leave the noting handlers in place on exit (hold_signals_after_publish)
        self._previous: dict = {}

    def _handler(self, signum, frame) -> None:
        self.caught.append(signum)
        if len(self.caught) == 1 and not self.deferring:
            raise KeyboardInterrupt

    def __enter__(self) -> _StopSignals:
        try:
            for sig in STOP_SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN or sig != signal.SIGINT:
                    self._previous[sig] = signal.signal(sig, self._handler)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = {}
        return self

    def __exit__(self, *exc) -> None:
        if self.keep:
            return
        for sig, handler_before in self._previous.items():
            signal.signal(sig, handler_before)
