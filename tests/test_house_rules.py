"""DESIGN.md's import rules: inference (codecs/, coding/) and models/ stay free of training packages."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

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


# ---- the import graph, read from the source (lazy imports inside functions count) ----------

_ROOT = Path(gvc_train.__file__).parent
# What inference may read of data/: video files in, nothing of the training pipeline.
_DATA_MODULES_FOR_INFERENCE = {"gvc_train.data.video_io", "gvc_train.data.sample_videos"}


def _module_name(path: Path) -> str:
    parts = ("gvc_train", *path.relative_to(_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """module -> the gvc_train modules it imports anywhere in its source."""
    modules = {_module_name(p): p for p in _ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                found |= {base} | {f"{base}.{a.name}" for a in node.names}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def _package(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 or (len(parts) == 2 and (_ROOT / parts[1]).is_dir()) else module


def test_there_is_no_import_cycle_between_modules_or_packages() -> None:
    graph = _import_graph()
    assert sum(len(v) for v in graph.values()) > 100, "the graph reader found almost no imports"
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the detector works
    assert not _cycles(graph), _cycles(graph)
    packages: dict[str, set[str]] = {}
    for module, imported in graph.items():
        packages.setdefault(_package(module), set()).update(_package(m) for m in imported if _package(m) != _package(module))
    assert not _cycles(packages), _cycles(packages)


def test_inference_reads_nothing_of_training_data_or_evaluation() -> None:
    """codecs/ and coding/, with everything they import, never reach lit/, eval/ or data/'s
    training modules (data modules, shards, the pipeline): only video reading."""
    graph = _import_graph()
    reached: set[str] = set()
    todo = [m for m in graph if m.startswith(("gvc_train.codecs", "gvc_train.coding"))]
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo += graph[module]
    bad = sorted(
        m for m in reached
        if m.startswith(("gvc_train.lit", "gvc_train.eval"))
        or (m.startswith("gvc_train.data.") and m not in _DATA_MODULES_FOR_INFERENCE)
    )  # fmt: skip
    assert not bad, f"inference reaches {bad}"


def test_no_module_names_a_family_but_the_table_and_the_familys_own_files() -> None:
    """DESIGN.md: adding a family is its own files and one line in the family table. A family's
    name used as a family (a string in a statement that speaks of a family: a comparison with
    ``family``, ``FAMILIES[...]``, ``family=...``) may appear only in codecs/families.py and in
    files whose path carries the name (codecs/latent.py, models/latent/, lit/latent_codec.py,
    data/latent_*.py). The same word as a plain term (a batch's "latent" field) is not a family."""
    from gvc_train.codecs.families import FAMILIES

    found = []
    for path in _ROOT.rglob("*.py"):
        relative = str(path.relative_to(_ROOT))
        if relative == "codecs/families.py":
            continue
        source = path.read_text()
        tree = ast.parse(source)
        for unit in _statement_units(tree):
            if "famil" not in (ast.get_source_segment(source, unit) or "").lower():
                continue
            for node in ast.walk(unit):
                if isinstance(node, ast.Constant) and node.value in FAMILIES and node.value not in relative:
                    found.append(f"{relative}:{node.lineno} names {node.value!r}")
    assert "latent" in FAMILIES
    assert not found, sorted(set(found))


def _statement_units(tree: ast.AST) -> list[ast.AST]:
    """Simple statements, and the header expressions of compound ones (an ``if``'s test, a
    ``for``'s iterable, a ``with``'s items): a unit never holds another statement."""
    units: list[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.If, ast.While)):
            units.append(node.test)
        elif isinstance(node, (ast.For, ast.AsyncFor)):
            units.append(node.iter)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            units += [item.context_expr for item in node.items]
        elif isinstance(node, ast.stmt) and not hasattr(node, "body"):
            units.append(node)
    return units
