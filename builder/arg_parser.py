"""argparse with the one-line errors every other failure here gives."""

from __future__ import annotations

import argparse

# Where the values of this parse are noted, on its namespace; removed before it is returned.
_GIVEN = "_given_on_the_line"


def _given_once(action: argparse.Action, parser, namespace, value, shown: str) -> None:
    """Refuse a single-value option given again with another value: argparse kept the last, so
    `-p int4 ... -p fp16` (a flag added to a long command line) built fp16 in silence. The same
    value twice changes nothing and passes."""
    if not action.option_strings:
        return
    given = getattr(namespace, _GIVEN, None)
    if given is None:
        given = {}
        setattr(namespace, _GIVEN, given)
    if action.dest in given and given[action.dest][0] != value:
        flags = "/".join(action.option_strings)
        parser.error(f"{flags} given twice ({given[action.dest][1]}, {shown}); keep one")
    given.setdefault(action.dest, (value, shown))


class _StoreOnce(argparse._StoreAction):
    def __call__(self, parser, namespace, values, option_string=None):
        if self.nargs is None:  # one value; an nargs list is not the single-value case
            _given_once(self, parser, namespace, values, str(values))
        super().__call__(parser, namespace, values, option_string)


class _BooleanOnce(argparse.BooleanOptionalAction):
    def __call__(self, parser, namespace, values, option_string=None):
        if option_string in self.option_strings:
            _given_once(self, parser, namespace, not option_string.startswith("--no-"), option_string)
        super().__call__(parser, namespace, values, option_string)


class ArgumentParser(argparse.ArgumentParser):
    """A usage error is one line and exit 2: argparse's default printed the whole usage
    first (21 lines for the build flags), which buried the line saying what was wrong."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register("action", None, _StoreOnce)
        self.register("action", "store", _StoreOnce)

    def add_argument(self, *args, **kwargs):
        if kwargs.get("action") is argparse.BooleanOptionalAction:
            kwargs["action"] = _BooleanOnce
        return super().add_argument(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        parsed, rest = super().parse_known_args(args, namespace)
        if hasattr(parsed, _GIVEN):
            delattr(parsed, _GIVEN)
        return parsed, rest

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")
