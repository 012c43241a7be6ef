"""sitecustomize.py sources for a child process that must not find some packages, whatever this venv
has: a plain install's view (no torch, no transformers), or a machine without the WebGPU plugin; or that
must fail to import a C extension as a Ctrl-C during its initialisation makes it fail."""

from __future__ import annotations

import textwrap


def hiding(*packages: str, why: str = "hidden by the test") -> str:
    """A sitecustomize.py whose import hook refuses the top-level `packages` with ImportError."""
    return textwrap.dedent(f"""
        import sys

        class _Hidden:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {sorted(packages)!r}:
                    raise ImportError(f"{{name}} is {why}")
                return None

        sys.meta_path.insert(0, _Hidden())
    """)


def interrupted_init(extension: str) -> str:
    """A sitecustomize.py under which importing the C extension `extension` fails as one does when a
    Ctrl-C lands while it initialises (seen with onnxruntime 1.32): ImportError('initialization
    failed'), caused by the KeyboardInterrupt."""
    return textwrap.dedent(f"""
        import sys

        class _InterruptedInit:
            def find_spec(self, name, path=None, target=None):
                if name == {extension!r}:
                    try:
                        raise KeyboardInterrupt
                    except KeyboardInterrupt as e:
                        raise ImportError("initialization failed") from e
                return None

        sys.meta_path.insert(0, _InterruptedInit())
    """)
