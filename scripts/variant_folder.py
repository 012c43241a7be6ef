"""What with_io_types.py and with_session_options.py share: each makes a variant of a built genai
folder (DST) from the folder (SRC), and both must refuse the same things before they write.

Each copy holds a mark file naming its source, so a rerun may write over the copy and over nothing
else: the scripts once removed whatever DST named (the source given twice, a user's folder) or
edited the source's genai_config.json in place.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from writable import nearest_existing


def usage(argv: list[str], doc: str, needs: str) -> int | None:
    """The exit code when argv asks for help or lacks SRC, DST and one change; else None."""
    if any(a in ("-h", "--help") for a in argv):
        print(doc.strip())
        return 0
    if len(argv) < 3:
        print(doc.strip(), file=sys.stderr)
        print(f"error: pass SRC, DST and at least one {needs}", file=sys.stderr)
        return 2
    return None


def source_refusal(src: Path, needs: str) -> str | None:
    """Why SRC is not a folder to make a variant of (it lacks the file `needs`), or None."""
    if (src / needs).is_file():
        return None
    if (src / "onnx").is_dir() and (src / "config.json").is_file():  # profile_genai.py, which rewrites nothing, too
        return (
            f"{src} is a --format transformers.js folder, which onnxruntime-genai does not load; "
            "pass a folder built without --format transformers.js"
        )
    return f"{src} has no {needs}; pass a built model folder"


def destination_refusal(src: Path, dst: Path, mark: str, same_source: bool) -> str | None:
    """Why DST may not be written, or None: it is SRC, inside it or around it, a file, or a folder
    this script did not make. same_source: a copy made from another SRC is refused too (one that
    links to its source's files, which would pair that build's graph with this one's config)."""
    real_src, real_dst = src.resolve(), dst.resolve()
    if real_dst == real_src or real_src in real_dst.parents or real_dst in real_src.parents:
        return f"{dst} is {src}, or inside it or around it; pass a new folder beside it for DST"
    if dst.exists() and not dst.is_dir():
        return f"{dst} is a file; pass a new folder for DST"
    if not dst.exists():  # its mkdir was a traceback (NotADirectoryError, PermissionError)
        parent = nearest_existing(real_dst)
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            what = "a file" if not parent.is_dir() else "a folder you cannot write"
            return f"{dst} cannot be made: {parent} is {what}; pass a new folder in a place you can write for DST"
    if dst.is_dir() and any(dst.iterdir()) and not (dst / mark).is_file():
        return f"{dst} exists and is not a copy this script made; pass a new folder for DST"
    if same_source and (dst / mark).is_file():
        made_from = (dst / mark).read_text().strip()
        if made_from != str(real_src):
            return f"{dst} was made from {made_from}, not {real_src}; pass a new folder for DST"
    return None


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def write_whole(dst: Path, write, room: str = "") -> int:
    """Run write() to make DST; 0 once it returns. A variant cut short (a full disk, Ctrl-C) would pair
    a graph with the wrong config, or none: DST goes, whole (it is this script's, by its mark), and a
    failed write is one line and exit 1 (Ctrl-C: 130)."""
    try:
        write()
    except BaseException as e:
        shutil.rmtree(dst, ignore_errors=True)
        if isinstance(e, KeyboardInterrupt):  # a weights copy takes a while: it was a traceback
            print(f"error: interrupted; nothing is left at {dst}", file=sys.stderr)
            return 130
        if isinstance(e, OSError):
            print(
                f"error: cannot write {dst} ({e.strerror or e}); nothing is left there: pass a DST in a place "
                f"you can write{room}",
                file=sys.stderr,
            )
            return 1
        raise
    return 0
