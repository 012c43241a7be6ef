"""The layers of the code import one way: app -> architectures -> kit -> quant.

app is builder/ outside builder/kit; kit is builder/kit/; the leaf is quant/.
Imports inside functions count too (they are how layers used to leak upward).
A second test plants a wrong import in a copy of the tree and checks it fails.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Layers, top first: each may import its own layer and any layer below it.
LAYERS = ["app", "architectures", "kit", "quant"]
# Third-party modules the build path must not need (torch and transformers are extras).
HEAVY = {"torch", "transformers", "tokenizers"}
# Where a heavy import is allowed, and only inside a function (lazy): verification
# against transformers.
LAZY_HEAVY_ALLOWED = {"builder/verify.py"}
# Folders of the repository that `pip install` does not install: the package importing them works in a
# checkout and fails for every user.
NOT_INSTALLED = {"tests", "support", "scripts", "conftest"}


def layer_of_module(name: str) -> str | None:
    if name == "builder.kit" or name.startswith("builder.kit."):
        return "kit"
    if name == "builder" or name.startswith("builder."):
        return "app"
    root = name.split(".")[0]
    return root if root in ("architectures", "quant") else None


def layer_of_file(path: Path, root: Path) -> str:
    rel = path.relative_to(root).as_posix()
    if rel.startswith("builder/kit/"):
        return "kit"
    return "app" if rel.startswith("builder/") else rel.split("/")[0]


def imports(path: Path, root: Path):
    """(module, line, at module level) for every import in a file: absolute, relative (resolved
    against the file's package; `from .. import x` names ..x too), and importlib.import_module /
    __import__ of a literal name."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(n) for n in tree.body}
    package = list(path.relative_to(root).with_suffix("").parts)
    package = package[:-1] if package[-1] != "__init__" else package[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, id(node) in top
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                parent = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                base = ".".join(parent + ([node.module] if node.module else []))
            for alias in node.names if node.level and not node.module else [None]:
                yield (f"{base}.{alias.name}" if alias else base), node.lineno, id(node) in top
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                yield node.args[0].value, node.lineno, False


def violations(root: Path) -> list[str]:
    found = []
    for package in ("builder", "architectures", "quant"):
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            mine = LAYERS.index(layer_of_file(path, root))
            for module, line, at_top in imports(path, root):
                theirs = layer_of_module(module)
                if theirs is not None and LAYERS.index(theirs) < mine:
                    found.append(f"{rel}:{line} imports {module} ({theirs} is above {LAYERS[mine]})")
                if module.split(".")[0] in HEAVY and (rel not in LAZY_HEAVY_ALLOWED or at_top):
                    found.append(f"{rel}:{line} imports {module}: the core installs without it")
                if module.split(".")[0] in NOT_INSTALLED:
                    found.append(f"{rel}:{line} imports {module}, which is not installed with the package")
    return found


def test_imports_run_one_way():
    assert violations(REPO) == []


def test_a_wrong_import_fails_the_contract(tmp_path):
    for package in ("builder", "architectures", "quant"):
        shutil.copytree(REPO / package, tmp_path / package)
    target = tmp_path / "quant" / "blockwise.py"
    target.write_text("from builder.kit.options import BuildOptions\n" + target.read_text())
    lazy = tmp_path / "builder" / "kit" / "graph.py"
    lazy.write_text(lazy.read_text() + "\n\ndef _f():\n    from architectures import registry\n")
    relative = tmp_path / "builder" / "kit" / "rope.py"  # kit reaching up into the app, relatively
    relative.write_text(relative.read_text() + "\n\ndef _g():\n    from ..pipeline import build\n")
    by_name = tmp_path / "builder" / "kit" / "spec.py"
    by_name.write_text(by_name.read_text() + "\n\ndef _h():\n    importlib.import_module('builder.cli')\n")
    test_support = tmp_path / "architectures" / "llama.py"
    test_support.write_text(test_support.read_text() + "\n\ndef _i():\n    from support import synthetic\n")
    found = violations(tmp_path)
    assert any(v.startswith("quant/blockwise.py:1 imports builder.kit.options") for v in found), found
    assert any(v.startswith("builder/kit/graph.py:") and "architectures" in v for v in found), found
    assert any(v.startswith("builder/kit/rope.py:") and "builder.pipeline" in v for v in found), found
    assert any(v.startswith("builder/kit/spec.py:") and "builder.cli" in v for v in found), found
    assert any(v.startswith("architectures/llama.py:") and "imports support," in v for v in found), found
