"""Which code built an output, for batch's up-to-date check: the builder's own families change
only with its version (recorded beside), a plugin's family with its source."""

from __future__ import annotations

import hashlib
import inspect
import sys
from pathlib import Path

BUILT_IN = ("architectures", "builder")  # top-level packages of the builder's own code


def family_name(family: type) -> str:
    return f"{family.__module__}.{family.__qualname__}"


def family_source_digest(family: type) -> str | None:
    """sha256 of the Python sources of the packages outside the builder and the standard library
    that `family` and its bases come from (a plugin's whole package: its blocks may live beside
    the class), or None for a built-in family or code with no source file."""
    files: set[Path] = set()
    for cls in family.__mro__:
        top = cls.__module__.split(".")[0]
        if top in BUILT_IN or top in sys.stdlib_module_names:  # a Python upgrade rebuilds nothing
            continue
        package = getattr(sys.modules.get(top), "__path__", None)
        if package:  # a package: every module in it
            files.update(p for folder in package for p in Path(folder).rglob("*.py"))
        else:
            try:
                files.add(Path(inspect.getsourcefile(cls)))
            except (TypeError, OSError):
                return None
    digest, read = hashlib.sha256(), False
    for path in sorted(files):
        if path.name.startswith(".") or not path.is_file():  # an editor's lock file, a dangling link
            continue
        try:
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        except OSError:
            continue  # unreadable: not the code that ran
        read = True
    return digest.hexdigest() if read else None
