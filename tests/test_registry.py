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


def test_every_family_module_is_imported_by_the_package():
    """A new architectures/<family>.py that architectures/__init__.py does not import never runs its
    @register: its models were 'not supported', and the parity check above, which reads the
    registry, passed without a case for it."""
    import ast
    import subprocess
    import sys
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "architectures"
    registering = []
    for path in sorted(package.glob("*.py")):
        tree = ast.parse(path.read_text())
        decorators = [d for node in ast.walk(tree) if isinstance(node, ast.ClassDef) for d in node.decorator_list]
        calls = [d.func for d in decorators if isinstance(d, ast.Call)]
        if any(getattr(f, "id", None) == "register" or getattr(f, "attr", None) == "register" for f in calls):
            registering.append(path.stem)
    assert registering, "no module in architectures/ registers a family"
    # A fresh interpreter: this one may have imported the modules through other tests.
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, architectures; print(*sorted(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
        cwd=package.parent,
    ).stdout.split()
    missing = [name for name in registering if f"architectures.{name}" not in loaded]
    assert not missing, (
        f"architectures/{missing[0]}.py registers a family but architectures/__init__.py does not import it, "
        f"so its @register never runs: add `from architectures.{missing[0]} import ...` there"
    )


def test_every_built_in_family_can_be_imported_from_the_package():
    """`from architectures import Qwen3Builder` is how the README subclasses a family; Gemma3VLBuilder
    (Gemma3ForConditionalGeneration) was registered but not exported, so a subclass of it failed with
    "cannot import name" where every other family, Qwen35VLBuilder included, imported."""
    import architectures

    for name, cls in builtin_architectures().items():
        assert getattr(architectures, cls.__name__, None) is cls, f"{name}: architectures.{cls.__name__} is missing"
        assert cls.__name__ in architectures.__all__, f"{name}: {cls.__name__} is not in architectures.__all__"
