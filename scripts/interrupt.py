"""How a script ends when Ctrl-C stops it: one 'error:' line and exit 130, as the builder does, not a
KeyboardInterrupt traceback. Long builds, timings and fuzzing runs are what a user stops."""

from __future__ import annotations

import sys
from collections.abc import Callable


def run_main(main: Callable[[], int | None], left: str) -> None:
    """sys.exit(main()), with `left` saying what a stopped run leaves behind."""
    try:
        code = main()
    except KeyboardInterrupt:
        print(f"error: interrupted; {left}", file=sys.stderr, flush=True)
        code = 130
    sys.exit(code)
