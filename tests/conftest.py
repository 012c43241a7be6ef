"""Shared fixtures: tiny random checkpoints and cached builds of them.

Checkpoints come from support.synthetic (seeded, so every run sees the same
numbers). Builds are cached per session by their options, since many tests
look at the same model from different angles.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from builder import BuildOptions
from builder.pipeline import run
from support.synthetic import TINY_CONFIGS, make_checkpoint

# A skipped check is not a passing one: the suite pins its environment (scripts/test.sh), so a
# test that cannot run there has found something to fix, and the run must say so by failing.
_skipped: list[str] = []


def pytest_configure(config):
    """A suite started with Ctrl-C ignored (`bash scripts/test.sh &` from a script, nohup) ran every
    build with SIGINT ignored too, as a build leaves an ignored SIGINT alone (output_dir), and the
    tests of what Ctrl-C does failed. The tests run as from a terminal, in each xdist worker too."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if os.environ.get("TERM") == "dumb":  # a CI's TERM=dumb turns the progress tests' terminals into logs
        os.environ["TERM"] = "xterm"


def pytest_runtest_logreport(report):
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_collectreport(report):
    # A module skipped whole (pytest.importorskip or skip(allow_module_level=True) at its top) is
    # reported here, never as a test.
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if _skipped and session.exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter):
    if _skipped:
        terminalreporter.write_line(
            f"FAILED: {len(_skipped)} test(s) skipped, and this suite counts a skip as a failure: "
            + ", ".join(_skipped),
            red=True,
        )


# The files that take longest, longest first; the rest follow in pytest's order. scripts/test.sh hands
# whole files to its xdist workers in collection order (--no-loadscope-reorder): xdist's own order,
# files with the most tests first, left these, each a few tests that start Ray, Chromium or SwiftShader
# runs, to the end, one worker running them while the other idled. Order only: a file missing here
# runs all the same.
SLOWEST_FIRST = (
    "test_batch_ray.py",
    "test_webgpu_swiftshader.py",
    "test_batch.py",
    "test_errors.py",
    "test_hardening.py",
    "test_generate_script.py",
    "test_transformers_js.py",
    "test_synthetic.py",
    "test_plugin_hooks.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests keep their order


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """checkpoint(name, dtype="bfloat16") -> folder of a tiny random HF checkpoint."""
    root = tmp_path_factory.mktemp("checkpoints")
    made: dict[tuple, Path] = {}

    def get(name: str, dtype: str = "bfloat16", **config_overrides) -> Path:
        key = (name, dtype, json.dumps(config_overrides, sort_keys=True))
        if key not in made:
            config = {**TINY_CONFIGS[name], **config_overrides}
            made[key] = make_checkpoint(root / f"{name}-{dtype}-{len(made)}", config, dtype=dtype, seed=0)
        return made[key]

    return get


@pytest.fixture(scope="session")
def built(checkpoint, tmp_path_factory):
    """built(name, **options) -> BuildResult of a tiny checkpoint, cached by options."""
    root = tmp_path_factory.mktemp("builds")
    cache = {}

    def get(name: str, dtype: str = "bfloat16", **options):
        key = (name, dtype, json.dumps(options, sort_keys=True))
        if key not in cache:
            from architectures.registry import builder_class_for
            from builder.kit.checkpoint import Checkpoint

            ckpt = Checkpoint(checkpoint(name, dtype))
            opts = BuildOptions(model=str(ckpt.directory), output=str(root / f"b{len(cache)}"), **options)
            cache[key] = run(builder_class_for(ckpt.config)(ckpt, opts), show_progress=False)
        return cache[key]

    return get
