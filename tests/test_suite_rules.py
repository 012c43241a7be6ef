"""The suite's own rule: a skipped check is not a passing one (tests/conftest.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


@pytest.mark.parametrize(
    "module",
    [
        "import pytest\n\n\ndef test_a():\n    pytest.skip('no GPU')\n",
        # Skipped whole at collection: reported to no per-test hook, so it passed as "1 skipped", exit 0.
        "import pytest\n\npytest.importorskip('no_such_module_here')\n\n\ndef test_a():\n    pass\n",
    ],
    ids=["in a test", "a whole module"],
)
# scripts/test.sh runs the suite in pytest-xdist workers, where the skips reach the rule as reports
# the workers send back; a plain `pytest` runs it in one process.
@pytest.mark.parametrize("workers", [[], ["-n", "2", "--dist", "loadfile"]], ids=["one process", "xdist"])
def test_a_skip_fails_the_run(tmp_path, module, workers):
    shutil.copy(TESTS / "conftest.py", tmp_path / "conftest.py")
    shutil.copytree(TESTS / "support", tmp_path / "support")
    (tmp_path / "test_skips.py").write_text(module)
    (tmp_path / "test_passes.py").write_text("def test_b():\n    assert 1 + 1 == 2\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(tmp_path)])}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *workers, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "counts a skip as a failure" in run.stdout, run.stdout
