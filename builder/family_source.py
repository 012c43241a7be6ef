"""Which code built an output, for batch's up-to-date check: the builder's own code by a digest of
its sources, a plugin's family by its source."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import inspect
import os
import re
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from builder.kit.errors import BuilderError

BUILT_IN = ("architectures", "builder")  # top-level packages of the builder's own code
# The code an output comes from: the families, the quantizer, the kit that writes graphs and
# weights, the formats and the pipeline. Not batch, the CLI, inspect or verify, whose edits change
# no output; nor the kit's progress display and error wording.
OUTPUT_CODE = ("architectures", "quant", "builder/kit", "builder/formats", "builder/pipeline.py")
NOT_OUTPUT_CODE = ("builder/kit/progress.py", "builder/kit/errors.py")


@functools.lru_cache(maxsize=1)
def builder_source_digest() -> str | None:
    """A digest of the code the builder's outputs come from, for batch's up-to-date check: the
    version number stayed 0.1.0 through every fix, so outputs a since-fixed builder wrote were
    called up to date. Parsed, so comments and layout do not count; docstrings neither. None where
    the sources cannot be read (run from a zip): the version alone decides then."""
    root = Path(importlib.import_module("builder").__file__).parent.parent
    files = []
    for part in OUTPUT_CODE:
        path = root / part
        files += [path] if path.suffix == ".py" else sorted(path.rglob("*.py"))
    digest, read = hashlib.sha256(), False
    for path in files:
        name = path.relative_to(root).as_posix()
        if path.name.startswith(".") or name in NOT_OUTPUT_CODE:
            continue
        try:
            code = _code_of(path.read_bytes())
        except (OSError, SyntaxError, ValueError):
            continue
        digest.update(name.encode() + b"\0" + code + b"\0")
        read = True
    return digest.hexdigest()[:16] if read else None


def _code_of(source: bytes) -> bytes:
    """The source parsed, without its docstrings: comments, layout and docstrings change no output."""
    import ast

    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            if isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree).encode()


def family_name(family: type) -> str:
    return f"{family.__module__}.{family.__qualname__}"


def family_source_digest(family: type) -> str | None:
    """sha256 of the Python sources of the packages outside the builder and the standard library
    that `family` and its bases come from (a plugin's whole package: its blocks may live beside
    the class), and of the modules of the user's own those import (a family in my_family.py with its
    MLP in my_blocks.py beside it), or None for a built-in family or code with no source file.
    Comments, layout and docstrings do not count."""
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
        files.update(_own_modules_imported(cls.__module__))
    digest, read = hashlib.sha256(), False
    for path in sorted(files):
        if path.name.startswith(".") or not path.is_file():  # an editor's lock file, a dangling link
            continue
        try:
            source = path.read_bytes()
        except OSError:
            continue  # unreadable: not the code that ran
        try:
            # Parsed, as the builder's own code is: a comment edited in a plugin rebuilt every output.
            code = _code_of(source)
        except (SyntaxError, ValueError):
            code = source  # a module that does not parse was not imported: its bytes are what we have
        digest.update(path.name.encode() + b"\0" + code + b"\0")
        read = True
    return digest.hexdigest() if read else None


def _own_modules_imported(module: str) -> set[Path]:
    """Source files of `module` and of the modules it takes names from, transitively, that are the
    user's own: not the builder's, the standard library's or an installed library's (a new version
    of numpy rebuilds nothing; the pip package of a plugin is hashed whole above)."""
    # Real paths on both sides: in a venv reached through a symlink, sysconfig names the link and
    # module files resolve past it, so torch and transformers were taken for the user's own (every
    # build of a test-defined family parsed thousands of their files: 0.4 s became 65 s).
    libraries = tuple({os.path.realpath(sysconfig.get_paths()[k]) for k in ("purelib", "platlib", "stdlib")})
    found, seen, stack = set(), set(), [module]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        top = name.split(".")[0]
        if top in BUILT_IN or top in sys.stdlib_module_names:
            continue
        file, package = _module_source(name)
        if not file or not file.endswith(".py") or os.path.realpath(file).startswith(libraries):
            continue
        found.add(Path(file))
        stack += _imports(Path(file), package)
    return found


def _module_source(name: str) -> tuple[str | None, str]:
    """(source file, package) of a module: the loaded one's, else the file an import would load,
    found without running it. A module the family imports inside a function is loaded in the
    build's process only, once that function ran: read from sys.modules alone, the batch's check
    left it out of the digest the build recorded, and rebuilt every output of such a family on
    every run ("the source of ... changed")."""
    loaded = sys.modules.get(name)
    if loaded is not None:
        return getattr(loaded, "__file__", None), getattr(loaded, "__package__", None) or ""
    spec = _spec_unloaded(name)
    if spec is None or not spec.has_location:
        return None, ""
    return spec.origin, spec.parent or ""


def _spec_unloaded(name: str):
    """The spec the path finder gives `name`, importing nothing (not even its parent package)."""
    from importlib.machinery import PathFinder

    parent = name.rpartition(".")[0]
    path = None
    if parent:
        loaded = sys.modules.get(parent)
        if loaded is not None:
            path = getattr(loaded, "__path__", None)
        else:
            path = getattr(_spec_unloaded(parent), "submodule_search_locations", None)
        if path is None:  # the parent is no package: `from helper import name` names no module
            return None
    try:
        return PathFinder.find_spec(name, path)
    except (ImportError, ValueError, OSError):
        return None


def _imports(path: Path, package: str) -> list[str]:
    """The modules a source file's import statements name (a from-import's names too, which may be
    submodules), relative ones resolved against its package."""
    import ast

    try:
        tree = ast.parse(path.read_bytes())
    except (OSError, SyntaxError, ValueError):
        return []
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}".strip(".")
            names += [base] + [f"{base}.{alias.name}" for alias in node.names]
    return names


def _plugin_packages(family: type) -> set[str]:
    """Top-level packages of the code a family brings from outside the builder."""
    tops = {cls.__module__.split(".")[0] for cls in family.__mro__}
    return {top for top in tops if top not in BUILT_IN and top not in sys.stdlib_module_names}


@contextlib.contextmanager
def plugin_faults_named(family: type) -> Iterator[None]:
    """An exception raised while a user's family builds becomes one BuilderError naming the family,
    the exception and where: the plugin's line that raised it, or, where the builder's code
    raised on what the family gave it (a block without pack_groups, a make_spec returning a dict,
    a block's __call__ returning nothing), the builder's line and the likely cause. Its traceback
    stays chained, for --debug and for Python callers. A built-in family's faults are the
    builder's bugs, and keep their tracebacks."""
    try:
        yield
    except (BuilderError, MemoryError, OSError):  # the command line words these itself
        raise
    except Exception as e:
        packages = _plugin_packages(family)
        if not packages:
            raise
        ours, where, tb = None, None, e.__traceback__
        while tb is not None:  # the innermost frames in the plugin and in the builder
            frame = tb.tb_frame
            top = str(frame.f_globals.get("__name__", "")).split(".")[0]
            if top in packages:
                where = f"{frame.f_code.co_name} ({frame.f_code.co_filename}:{tb.tb_lineno})"
            elif top in BUILT_IN:
                ours = f"{frame.f_code.co_name} ({_shown_path(frame.f_code.co_filename)}:{tb.tb_lineno})"
            tb = tb.tb_next
        what = f"{type(e).__name__}: {_one_line(e)}"
        mismatch = _signature_mismatch(e, family, packages)
        if mismatch is not None:
            raise BuilderError(
                f"the family {family_name(family)} failed: {what}; {mismatch} (docs/architecture.md; --debug on a "
                "single build shows the traceback)"
            ) from e
        if where is not None:
            raise BuilderError(
                f"the family {family_name(family)} raised {what} in {where}; fix that code "
                "(--debug on a single build shows the traceback)"
            ) from e
        raise BuilderError(
            f"the family {family_name(family)} failed: the builder's {ours or 'code'} raised {what}; "
            f"{_likely_cause(e, family, packages)} (--debug on a single build shows the traceback; if the "
            "family's code is right, report it as the builder's bug)"
        ) from e


BLOCK_NEEDS = "a block needs modules(i), pack_groups(i) and __call__(em, i, x) returning its output"


# Python's words for a call whose arguments the function's parameters do not take: "B.make_spec() takes
# 2 positional arguments but 3 were given", "... missing 1 required positional argument: 'i'",
# "... got an unexpected keyword argument 'target'".
_CALL_MISMATCH = re.compile(r"(?P<owner>\w+)\.(?P<hook>\w+)\(\) (?:takes|missing|got an unexpected|got multiple)")


def _signature_mismatch(e: Exception, family: type, packages: set[str]) -> str | None:
    """A hook of the user's (a family's or a block's) overridden with other parameters than the builder
    calls it with: the call fails in the builder's code before the hook runs, so the fault was put on
    the builder's line with "likely what its own hooks return", or on the plugin line that called
    into the builder ("in make_spec ... fix that code" for a weight(self, suffix)). None otherwise."""
    match = _CALL_MISMATCH.match(str(e)) if isinstance(e, TypeError) else None
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if match is None or tb is None or _top(tb.tb_frame.f_globals.get("__name__")) not in BUILT_IN:
        return None  # raised inside the user's code: the line it names is theirs to fix
    owner, hook = match["owner"], match["hook"]
    cls = _user_class(owner, family, packages)
    if cls is None or not callable(getattr(cls, hook, None)):
        return None
    own = getattr(cls, hook)
    at = ""
    with contextlib.suppress(TypeError, OSError):
        at = f" ({inspect.getsourcefile(own)}:{inspect.getsourcelines(own)[1]})"
    said = f"its {owner}.{hook}{_plain_signature(own)}{at} takes other arguments than the builder passes"
    base = next((c for c in cls.__mro__[1:] if _top(c.__module__) not in packages and hook in vars(c)), None)
    if base is None:
        return f"{said} ({BLOCK_NEEDS})"
    return f"{said}; give it {base.__name__}'s parameters: {hook}{_plain_signature(getattr(base, hook))}"


def _user_class(name: str, family: type, packages: set[str]) -> type | None:
    """The class of the user's code called `name`: the family or one of its bases, else a class of
    theirs (a block) in their loaded modules."""
    for cls in family.__mro__:
        if cls.__name__ == name and _top(cls.__module__) in packages:
            return cls
    for module_name, module in list(sys.modules.items()):
        found = getattr(module, name, None) if _top(module_name) in packages else None
        if isinstance(found, type) and found.__name__ == name and _top(found.__module__) in packages:
            return found
    return None


def _plain_signature(function) -> str:
    """(self, layer, suffix): the parameters without their annotations, as the user would write them."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return "(...)"
    plain = [p.replace(annotation=p.empty) for p in signature.parameters.values()]
    return str(signature.replace(parameters=plain, return_annotation=signature.empty))


def _top(module: object) -> str:
    return str(module or "").split(".")[0]


def _likely_cause(e: Exception, family: type, packages: set[str]) -> str:
    """What in the family most likely led the builder's code to raise `e`."""
    obj = getattr(e, "obj", None) if isinstance(e, AttributeError) else None
    init = _own_init(family, packages)
    if isinstance(obj, family) and init is not None and not hasattr(family, e.name):
        # the family object lacks what DecoderBuilder.__init__ sets: not a block's fault
        return f"its {init} does not call super().__init__(checkpoint, options), which sets .{e.name}"
    if obj is not None and type(obj).__module__.split(".")[0] in packages:
        return f"its {type(obj).__name__} has no {e.name} ({BLOCK_NEEDS}: docs/architecture.md, A block)"
    if obj is not None:
        return (
            f"a hook of the family returned a {type(obj).__name__} where the builder reads .{e.name} "
            "(make_spec returns a DecoderSpec, mixer/feed_forward a block; docs/architecture.md)"
        )
    hooks = sorted(  # once each: a subclass that overrides its base's hook named it twice
        {
            name
            for cls in family.__mro__
            if cls.__module__.split(".")[0] in packages
            for name, value in vars(cls).items()
            if callable(value) or isinstance(value, classmethod | staticmethod)
        }
    )
    said = f"what its own hooks ({', '.join(hooks)}) return" if hooks else "what the family sets"
    return f"likely {said}, e.g. a block's __call__ without return ({BLOCK_NEEDS})"


def _own_init(family: type, packages: set[str]) -> str | None:
    """Class.__init__ (file:line) of the user's that the family's __init__ is, or None where it is the builder's."""
    owner = next((cls for cls in family.__mro__ if "__init__" in vars(cls)), None)
    if owner is None or _top(owner.__module__) not in packages:
        return None
    at = ""
    with contextlib.suppress(TypeError, OSError):
        at = f" ({inspect.getsourcefile(owner.__init__)}:{inspect.getsourcelines(owner.__init__)[1]})"
    return f"{owner.__name__}.__init__{at}"


def _one_line(e: Exception, limit: int = 200) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _shown_path(path: str) -> str:
    root = Path(importlib.import_module("builder").__file__).parent.parent
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return path
