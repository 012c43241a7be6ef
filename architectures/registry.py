"""Architecture registry: HF `architectures` name -> builder class.

Built-in families register with `@register("Qwen3ForCausalLM")`. Installed
third-party packages add theirs through the entry-point group
`builder.architectures`: each entry point names a module (imported, so its
decorators run) or a builder class (registered under its `architectures`).
"""

from __future__ import annotations

import importlib.metadata

from builder.kit.errors import BuilderError

ENTRY_POINT_GROUP = "builder.architectures"
_REGISTRY: dict[str, type] = {}
_plugins_loaded = False


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
        cls.architectures = tuple(hf_names)
        for name in hf_names:
            _REGISTRY[name] = cls
        return cls

    return decorate


def load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        before = dict(_REGISTRY)
        try:
            loaded = entry.load()
        except Exception as e:  # a broken plugin must not break the built-in families
            # What it registered before failing goes too: 'left out' must be true, and a
            # half-imported module's classes replaced built-ins with no other word.
            _REGISTRY.clear()
            _REGISTRY.update(before)
            why = " ".join(str(e).split())
            _warn(
                f"architecture plugin {entry.name!r} ({entry.value}) failed to load and is left "
                f"out: {type(e).__name__}: {why}"
            )
            continue
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
        # A module's @register and a class entry point both replace what was there: one rule
        # for both (a class used to lose in silence, a module to win in silence), said aloud.
        for name, cls in sorted(before.items()):
            if _REGISTRY[name] is not cls:
                _warn(
                    f"architecture plugin {entry.name!r} ({entry.value}) replaces the builder for {name} "
                    f"({cls.__module__}.{cls.__qualname__}) with {_REGISTRY[name].__module__}."
                    f"{_REGISTRY[name].__qualname__}"
                )


def _warn(message: str) -> None:
    # One plain line, as the build's own warnings (a UserWarning adds a source line).
    import sys

    print(f"warning: {message}", file=sys.stderr)


def registered() -> dict[str, type]:
    import architectures  # noqa: F401  (built-in families register on import)

    load_plugins()
    return dict(_REGISTRY)


def builder_class_for(config: dict, where: str = "config.json") -> type:
    names = config.get("architectures") or []
    if isinstance(names, str):  # one name, written without the list brackets
        names = [names]
    if not names:
        raise BuilderError(
            f"{where} has no 'architectures' entry, so the model family is unknown; "
            "supported: " + ", ".join(sorted(registered()))
        )
    available = registered()
    for name in names:
        if name in available:
            return available[name]
    raise BuilderError(
        f"{where}: architecture {names[0]!r} is not supported; supported: "
        + ", ".join(sorted(available))
        + " (a new family registers with @architectures.register; README, section Python)"
    )
