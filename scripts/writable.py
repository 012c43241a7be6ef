"""Whether a script can write an output it was given, checked before its work (a build, a benchmark)
rather than found out after it: nothing is written."""

from __future__ import annotations

import os
from pathlib import Path


def nearest_existing(path: Path) -> Path:
    """`path`, or the nearest folder above it that exists (what a mkdir(parents=True) starts from)."""
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return path


def can_write(path: Path, folder: bool = False, make_parents: bool = True) -> bool:
    """Whether `path` (a file, or a folder with folder=True) can be written: what exists of it is of
    its kind and writable, else the folder it would be made in is (the nearest existing one with
    make_parents, for a script that makes the folders on the way; else its own parent)."""
    path = Path(path).absolute()
    if path.exists():
        return path.is_dir() == folder and os.access(path, os.W_OK)
    parent = nearest_existing(path) if make_parents else path.parent
    return parent.is_dir() and os.access(parent, os.W_OK)
