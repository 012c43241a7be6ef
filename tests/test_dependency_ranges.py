"""pyproject.toml's dependency ranges admit no combination known to break the builder.

Each pair below was installed by pip from PyPI into a fresh venv within the declared ranges, and the
builder failed there; the ranges must keep pip from choosing it again.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

from builder.kit.targets import GENAI_LAST_LOGITS

REPO = Path(__file__).resolve().parents[1]

# (package, version, other package, its versions that break with it, what happened)
KNOWN_BROKEN = [
    (
        "onnx",
        "1.19.0",
        "ml_dtypes",
        ["0.4.0", "0.4.1"],
        # pip install . 'ml_dtypes==0.4.0' on Python 3.12 chose onnx 1.19.0 (it requires any ml_dtypes)
        "python -m builder --help: AttributeError: module 'ml_dtypes' has no attribute 'float4_e2m1fn'",
    ),
]


def declared() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {Requirement(text).name.replace("_", "-"): Requirement(text) for text in project["dependencies"]}


def allows(requirements: dict[str, Requirement], name: str, version: str) -> bool:
    requirement = requirements.get(name.replace("_", "-"))
    return requirement is None or requirement.specifier.contains(version, prereleases=True)


def test_no_known_broken_pair_is_allowed():
    requirements = declared()
    allowed = [
        f"{a}=={version} with {b}=={other} ({what})"
        for a, version, b, others, what in KNOWN_BROKEN
        for other in others
        if allows(requirements, a, version) and allows(requirements, b, other)
    ]
    assert not allowed, allowed


def test_the_lowest_versions_stay_allowed():
    """The oldest releases the builder was run with (builds, inspect, onnxruntime greedy tokens on
    Python 3.10-3.12) are still what pyproject.toml admits: the exclusions above must not raise them."""
    requirements = declared()
    lowest = {"numpy": "1.26.0", "ml-dtypes": "0.4.0", "onnx": "1.17.0", "onnxruntime": "1.20.0"}
    lowest |= {"pyyaml": "6.0", "huggingface-hub": "0.24.0"}
    assert set(lowest) == set(requirements), set(requirements) ^ set(lowest)
    refused = [f"{name}=={version}" for name, version in lowest.items() if not allows(requirements, name, version)]
    assert not refused, refused


def extra(name: str) -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {Requirement(text).name: Requirement(text) for text in project["optional-dependencies"][name]}


@pytest.mark.parametrize("name", ["verify", "bench", "test"])
def test_the_extras_genai_runs_a_default_build(name):
    """The extras run built folders through onnxruntime-genai (scripts/generate.py, --verify's tests). They
    admitted 0.8, which refused Qwen3 ("Unsupported model_type"), and 0.8-0.12.1, which fail on the
    last-token logits a default build for onnxruntime >= 1.24 has ("Got invalid dimensions for output:
    logits"). Their lower bound is the release builder.kit.targets names for those graphs."""
    requirement = extra(name)["onnxruntime-genai"]
    failing = ("0.8.0", "0.11.4", "0.12.0", "0.12.1")
    assert all(tuple(map(int, v.split("."))) < GENAI_LAST_LOGITS for v in failing)
    allowed = [v for v in failing if requirement.specifier.contains(v)]
    assert not allowed, (requirement, allowed)


def test_the_quickstart_installs_a_genai_that_opens_its_qwen3():
    """scripts/quickstart.sh runs examples/tiny-qwen3 through onnxruntime-genai; 0.8.0 refused it
    (Unsupported model_type in config.json: qwen3), 0.8.1 runs it. Python 3.10 stops at 0.11.4, so the
    bound stays below 0.12.2 there (the build keeps every position's logits for such a genai)."""
    text = (REPO / "scripts" / "quickstart.sh").read_text()
    (spec,) = re.findall(r'"(onnxruntime-genai[^"]*)"', text)
    requirement = Requirement(spec)
    assert not requirement.specifier.contains("0.8.0") and requirement.specifier.contains("0.11.4"), spec
