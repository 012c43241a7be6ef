"""Waiting on a child process to reach a point it marks with a file, before a test signals it."""

import time


def wait_for_file(path, proc, what: str, timeout: float = 120, every: float = 0.1) -> None:
    """Return once `path` exists; fail with the child's output if it ended first, or with `what`
    (what never happened) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, what
        time.sleep(every)
