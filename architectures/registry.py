"""Architecture registry: HF `architectures` name -> builder class.

Built-in families register with `@register("Qwen3ForCausalLM")`. Installed
third-party packages add theirs through the entry-point group
`builder.architectures`: each entry point names a module (imported, so its
decorators run) or a builder class (registered under its `architectures`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
import sysconfig

from builder.kit.errors import BuilderError

ENTRY_POINT_GROUP = "builder.architectures"
_REGISTRY: dict[str, type] = {}
_plugins_loaded = False
# Every registration in order, with what brought it: "plugin" (an entry point), the module a
# module:Class import named, or None (a built-in, or code that imported a family by itself).
# A batch job builds in a process of its own that imports only its family's module, so the
# driver resolves its family from this (registered_alone), not from what the other jobs'
# modules left in _REGISTRY.
_HISTORY: list[tuple[str | None, str, type]] = []
_origin: list[str] = []  # what is loading now: "plugin" or a module:Class's module


def register(*hf_names: str):
    """Class decorator: make a builder class handle these HF architecture names."""
    if len(hf_names) == 1 and isinstance(hf_names[0], type):  # @register without its names
        raise TypeError(
            f"@register needs the HF architecture names the class builds: "
            f'@register("MyModelForCausalLM") above class {hf_names[0].__name__}'
        )
    if not hf_names or not all(isinstance(n, str) and n for n in hf_names):
        raise TypeError(
            f"@register{hf_names!r}: give one or more HF architecture names, as config.json's "
            'architectures lists them: @register("MyModelForCausalLM")'
        )

    def decorate(cls):
        from architectures.base import DecoderBuilder

        if not (isinstance(cls, type) and issubclass(cls, DecoderBuilder)):
            # Registered anyway, it failed only when a build made one: "Phi3() takes no arguments"
            raise TypeError(
                f"@register{hf_names!r} is above {getattr(cls, '__name__', repr(cls))}, which is no builder "
                "class: derive it from architectures.DecoderBuilder (or a family such as LlamaBuilder)"
            )
        cls.architectures = tuple(hf_names)
        for name in hf_names:
            was = _REGISTRY.get(name)
            # A plugin's replacements are said by load_plugins, naming the entry point; the same
            # class again (its module imported twice) replaces nothing.
            if was is not None and _name(was) != _name(cls) and _origin[-1:] != ["plugin"]:
                _warn(f"@register replaces the builder for {name} ({_name(was)}) with {_name(cls)}")
            _REGISTRY[name] = cls
            _HISTORY.append((_origin[-1] if _origin else None, name, cls))
        return cls

    return decorate


def load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        before, history = dict(_REGISTRY), len(_HISTORY)
        _origin.append("plugin")
        try:
            loaded = entry.load()
        except Exception as e:  # a broken plugin must not break the built-in families
            # What it registered before failing goes too: 'left out' must be true, and a
            # half-imported module's classes replaced built-ins with no other word.
            _REGISTRY.clear()
            _REGISTRY.update(before)
            del _HISTORY[history:]
            why = " ".join(str(e).split())
            at = _raised_at(e)
            _warn(
                f"architecture plugin {entry.name!r} ({entry.value}) failed to load and is left "
                f"out: {type(e).__name__}: {why}{f' (at {at})' if at else ''}"
            )
            continue
        finally:
            _origin.pop()
        if isinstance(loaded, type):
            # Its own names only: a subclass inherits its parent's, and would take them over.
            own = loaded.__dict__.get("architectures", ())
            if not own:
                _warn(
                    f"architecture plugin {entry.name!r} ({entry.value}) names no architectures of its "
                    f'own and is left out; decorate the class with @register("MyModelForCausalLM")'
                )
            for name in own:
                _REGISTRY[name] = loaded
                _HISTORY.append(("plugin", name, loaded))
        # A module's @register and a class entry point both replace what was there: one rule
        # for both (a class used to lose in silence, a module to win in silence), said aloud.
        for name, cls in sorted(before.items()):
            if _REGISTRY[name] is not cls:
                _warn(
                    f"architecture plugin {entry.name!r} ({entry.value}) replaces the builder for {name} "
                    f"({_name(cls)}) with {_name(_REGISTRY[name])}"
                )


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _warn(message: str) -> None:
    # One plain line, as the build's own warnings (a UserWarning adds a source line).
    print(f"warning: {message}", file=sys.stderr)


def registered() -> dict[str, type]:
    import architectures  # noqa: F401  (built-in families register on import)

    load_plugins()
    return dict(_REGISTRY)


def registered_alone(family: str | None) -> dict[str, type]:
    """The registry of a process that imported only this family (a batch job's): this one's,
    less what other module:Class imports registered (other jobs' families), which that process
    never imports."""
    module = family.partition(":")[0] if family and ":" in family else None
    if module:
        family_named(family)  # imported here, so that what it registers is in the history

    def theirs(origin: str | None, cls: type) -> bool:
        mine = module is not None and (cls.__module__ == module or cls.__module__.startswith(module + "."))
        return origin not in (None, "plugin", module) and not mine

    alone = dict(registered())
    for name, cls in registered().items():
        entries = [(origin, c) for origin, n, c in _HISTORY if n == name]
        if entries and entries[-1][1] is cls and theirs(*entries[-1]):
            kept = [c for origin, c in entries if not theirs(origin, c)]
            if kept:
                alone[name] = kept[-1]
            else:
                del alone[name]
    return alone


def family_named(name: str, where: str = "--family", available: dict[str, type] | None = None) -> type:
    """A builder class by the HF architecture name it is registered under, or as module:Class.
    available: the registry to look names up in (registered_alone's), else this process's."""
    if ":" not in name:
        available = registered() if available is None else available
        by_class = {cls.__name__: (hf, cls) for hf, cls in sorted(available.items(), reverse=True)}
        if name in by_class and name not in available:  # a class name where an architecture goes
            hf, cls = by_class[name]
            raise BuilderError(
                f"{where} {name}: that is a class name; give the architecture it builds ({hf}), "
                f"module:Class ({cls.__module__}:{name}), or in Python the class itself"
            )
        module, _, attr = name.rpartition(".")
        if name not in available and module and attr and _importable(module):  # fams.Renamed for fams:Renamed
            raise BuilderError(
                f"{where} {name}: no architecture is registered under that name; for class {attr} of module "
                f"{module}, write {module}:{attr} (module:Class, with a colon)"
            )
        return builder_class_for({"architectures": [name]}, where=where, available=available)
    from architectures.base import DecoderBuilder

    module_name, _, qualname = name.partition(":")
    # The current folder, as `python -m builder` has it on sys.path and onnx-builder does not. It
    # stays there once the module came from it: the family's methods import its sibling modules
    # when they run (docs/architecture.md: "import it inside the method").
    here = os.getcwd()
    added = here not in sys.path
    if added:
        sys.path.append(here)
    keep = False
    registered()  # the built-ins and plugins first, so that the history does not give them to this module
    _origin.append(module_name)
    try:
        found = importlib.import_module(module_name)
        keep = _found_in(sys.modules[module_name], here)
        for part in qualname.split("."):
            found = getattr(found, part)
    except Exception as e:  # its import can fail any way; one line says how
        why = " ".join(str(e).split()) or type(e).__name__
        line = _raised_at(e)
        if line is None:  # not found: no module, no such class
            raise BuilderError(
                f"{where} {name}: importing it failed ({type(e).__name__}: {why}); give module:Class of a module "
                "on the current folder or PYTHONPATH, or a registered architecture name"
            ) from None
        # Found, and its own code raised: the path was right, the code is to fix (chained: --debug and a
        # Python caller get its traceback, as for a fault while it builds).
        raise BuilderError(
            f"{where} {name}: importing it failed ({type(e).__name__}: {why}) at {line}; fix that code "
            "(--debug on a single build shows the traceback)"
        ) from e
    finally:
        _origin.pop()
        if added and not keep:
            sys.path.remove(here)
    if not (isinstance(found, type) and issubclass(found, DecoderBuilder)):
        raise BuilderError(f"{where} {name}: that is no builder class (a subclass of architectures.DecoderBuilder)")
    return found


def _raised_at(e: Exception) -> str | None:
    """file:line of the code that raised `e` while a module:Class was imported (the innermost
    frame outside the standard library and installed packages where there is one: a module of the
    user's that it imports, my_blocks.py beside it), or None where nothing but importlib ran: the
    module or the class is not there."""
    if isinstance(e, SyntaxError) and e.filename and e.lineno:
        return f"{e.filename}:{e.lineno}"
    paths = sysconfig.get_paths()
    here = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))  # the builder's own code, as a library's
    libraries = tuple(
        os.path.join(os.path.realpath(path), "")
        for path in [paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")]
        + [os.path.join(here, top) for top in ("architectures", "builder", "quant")]
    )
    importlib_dir = os.path.join(os.path.dirname(os.path.realpath(importlib.__file__)), "")
    mine = innermost = None
    tb = e.__traceback__.tb_next if e.__traceback__ else None  # past family_named, which caught it
    while tb is not None:
        file = tb.tb_frame.f_code.co_filename
        real = os.path.realpath(file)
        if not file.startswith("<frozen") and not real.startswith(importlib_dir):
            innermost = f"{file}:{tb.tb_lineno}"
            if not real.startswith(libraries):
                mine = innermost
        tb = tb.tb_next
    return mine or innermost


def _importable(module: str) -> bool:
    """Whether `module` names a module on sys.path or in the current folder, without importing it
    (a dotted name's parents are imported to look inside them)."""
    here = os.getcwd()
    added = here not in sys.path
    if added:
        sys.path.append(here)
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
    finally:
        if added:
            sys.path.remove(here)


def _found_in(module, folder: str) -> bool:
    file = getattr(module, "__file__", None)
    return bool(file) and os.path.realpath(file).startswith(os.path.join(os.path.realpath(folder), ""))


def family_for(options, config: dict, where: str = "config.json", alone: bool = False) -> type:
    """The builder class a build of these options uses: --family's, else the one registered for
    config.json's architectures. alone: as the build's own process resolves it, having imported
    only this family's module (a batch job's), rather than with this process's registry."""
    available = registered_alone(options.family) if alone else None
    if options.family:
        return family_named(options.family, available=available)
    return builder_class_for(config, where, available=available)


def architecture_names(config: dict) -> list[str]:
    names = config.get("architectures") or []
    return [names] if isinstance(names, str) else list(names)  # one name, written without the list brackets


def registered_for(config: dict, available: dict[str, type] | None = None) -> tuple[str, type] | None:
    """The first of config.json's architectures a family is registered for, and that family; None if none."""
    available = registered() if available is None else available
    return next(((name, available[name]) for name in architecture_names(config) if name in available), None)


def builder_class_for(config: dict, where: str = "config.json", available: dict[str, type] | None = None) -> type:
    names = architecture_names(config)
    if not names:
        raise BuilderError(
            f"{where} has no 'architectures' entry, so the model family is unknown: add the one the model "
            'was trained as (e.g. "architectures": ["Qwen3ForCausalLM"]), or name it with --family; '
            "supported: " + ", ".join(sorted(registered() if available is None else available))
        )
    available = registered() if available is None else available
    found = registered_for(config, available)
    if found:
        return found[1]
    raise BuilderError(
        f"{where}: architecture {names[0]!r} is not supported; supported: "
        + ", ".join(sorted(available))
        + " (--family builds with another family; a new one registers with @architectures.register, from a "
        "package through the entry-point group builder.architectures: docs/architecture.md)"
    )
