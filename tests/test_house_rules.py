"""DESIGN.md's import rules: inference (codecs/, coding/) and models/ stay free of training packages."""

from __future__ import annotations

import subprocess
import sys

import pytest

import gvc_train

_IMPORT_WITH_BLOCKED = r"""
import importlib, importlib.abc, pkgutil, sys
blocked = set(sys.argv[2].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in blocked:
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
import gvc_train
for package in sys.argv[1].split(","):
    mod = importlib.import_module(package)
    for info in pkgutil.walk_packages(mod.__path__, package + "."):
        importlib.import_module(info.name)
"""


@pytest.mark.parametrize(
    "packages, blocked",
    [
        ("gvc_train.codecs,gvc_train.coding", "lightning,pytorch_lightning,webdataset,wandb"),
        ("gvc_train.models", "lightning,pytorch_lightning"),
    ],
)
def test_package_imports_without_training_only_packages(packages: str, blocked: str) -> None:
    proc = subprocess.run([sys.executable, "-c", _IMPORT_WITH_BLOCKED, packages, blocked], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_no_module_is_past_the_size_rule() -> None:
    from pathlib import Path

    root = Path(gvc_train.__file__).parent
    long = [(p.relative_to(root), n) for p in root.rglob("*.py") if (n := len(p.read_text().splitlines())) > 500]
    assert not long, f"files past ~500 lines, split them by concern: {long}"


def test_inference_never_imports_training_or_evaluation() -> None:
    """DESIGN.md: ``codecs/`` and ``coding/`` import neither ``lit/`` nor ``eval/`` (``gvc eval``
    joins the ``gvc`` parser from above, through ``gvc_train.gvc_cli``), read from the source so
    that a lazy import inside a function counts too."""
    import ast
    from pathlib import Path

    root = Path(gvc_train.__file__).parent
    found = []
    for package in ("codecs", "coding"):
        for path in (root / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                found += [f"{path.relative_to(root)}: {n}" for n in names if n.startswith(("gvc_train.eval", "gvc_train.lit"))]
    assert not found, found
