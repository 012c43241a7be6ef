"""Every built-in architecture is covered by the parity tests (tests/parity_cases.py)."""

from parity_cases import PARITY_CASES

from architectures.registry import registered
from support.synthetic import TINY_CONFIGS


def builtin_architectures() -> dict[str, type]:
    # Installed plugins register too; only this repository's families must have cases here.
    return {name: cls for name, cls in registered().items() if cls.__module__.startswith("architectures.")}


def test_every_registered_architecture_has_parity_cases():
    missing = sorted(set(builtin_architectures()) - set(PARITY_CASES))
    assert not missing, f"registered without an entry in tests/parity_cases.py: {missing}"
    assert all(PARITY_CASES[name] for name in builtin_architectures()), "an entry lists no tiny config"


def test_parity_cases_name_existing_tiny_configs_of_their_architecture():
    for arch, names in PARITY_CASES.items():
        assert arch in builtin_architectures(), f"{arch} is in parity_cases.py but not registered"
        for name in names:
            assert name in TINY_CONFIGS, f"{arch}: {name!r} is not in support.synthetic.TINY_CONFIGS"
            assert TINY_CONFIGS[name]["architectures"] == [arch], (name, TINY_CONFIGS[name]["architectures"])
