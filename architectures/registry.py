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
            why = " ".join(str(e).split())
            _warn(
                f"architecture plugin {entry.name!r} ({entry.value}) failed to load and is left "
                f"out: {type(e).__name__}: {why}"
            )
            continue
        if isinstance(loaded, type):
            for name in getattr(loaded, "architectures", ()):
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
