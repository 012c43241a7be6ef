"""pyproject.toml's dependency ranges admit no combination known to break the builder.

Each pair below was installed by pip from PyPI into a fresh venv within the declared ranges, and the
builder failed there; the ranges must keep pip from choosing it again.
"""

from __future__ import annotations

from pathlib import Path

import tomllib
from packaging.requirements import Requirement

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
