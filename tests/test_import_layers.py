"""The package's layering, read from its source: every import (module level or inside a function) goes to the
same or a lower layer, and the units import each other without a circle.

A unit is a top-level module of ``mvmr`` or a subpackage (``mvmr.data`` with everything under it). The layers,
lowest first, are the ones the README's "Extending" section and docs/ARCHITECTURE.md describe.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "mvmr"

LAYERS = [
    ("errors", "numerics", "parallel", "messages", "registry"),  # helpers with no mvmr dependency
    ("authors_config", "config"),  # the schema
    ("compiled", "models", "data", "losses", "evaluation", "checkpoint"),  # the parts
    ("checkpoint_formats", "frozen_backbone"),  # reading weights into the parts
    ("representations",),  # φ_k (the teacher reads a backbone)
    ("methods",),  # Lightning modules
    (
        "hardware",
        "tables",
        "training",
        "api",
        "plots",
        "protocols",
        "cli",
        "__init__",
    ),  # runs and the user's entry points
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def unit_of(module: str) -> str:
    """'mvmr.data.views.policies' -> 'data'; 'mvmr' -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, src: Path = SRC) -> set[str]:
    """Every mvmr module ``path`` imports, anywhere in the file (relative imports resolved)."""
    here = module_name(path, src)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "mvmr")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "mvmr":
                continue
            if target == "mvmr":  # `from mvmr import messages`: the submodule, when it is one
                found.update(
                    f"mvmr.{alias.name}"
                    if (src / f"{alias.name}.py").exists() or (src / alias.name).is_dir()
                    else "mvmr"
                    for alias in node.names
                )
            else:
                found.add(target)
    return found


def unit_graph(src: Path = SRC) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(src.rglob("*.py")):
        source = unit_of(module_name(path, src))
        graph.setdefault(source, set()).update(unit_of(m) for m in imported_modules(path, src))
    for source in graph:
        graph[source].discard(source)
    return graph


def test_every_unit_has_a_layer():
    assert set(unit_graph()) - set(RANK) == set(), "a new module or package: add it to LAYERS"


@pytest.mark.parametrize("source", sorted(RANK))
def test_no_import_goes_up(source):
    graph = unit_graph()
    upward = sorted(target for target in graph.get(source, ()) if RANK[target] > RANK[source])
    assert upward == [], f"mvmr.{source} (layer {RANK[source]}) imports a higher layer: {upward}"


def test_no_circle_between_units():
    graph = unit_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(unit: str, path: list[str]) -> None:
        state[unit] = 1
        for target in sorted(graph.get(unit, ())):
            if state.get(target) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(target) :] + [unit, target]))
            if target not in state:
                visit(target, path + [unit])
        state[unit] = 2

    for unit in sorted(graph):
        if unit not in state:
            visit(unit, [])


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    """The reader above resolves `from ..x import y` and imports inside functions (else the tests could not fail)."""
    package = tmp_path / "mvmr"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "messages.py").write_text("")
    (package / "data" / "__init__.py").write_text("def f():\n    from ..methods import pretrain\n")
    (package / "data" / "views.py").write_text("from mvmr import messages\nfrom . import x\n")
    assert imported_modules(package / "data" / "__init__.py", package) == {"mvmr.methods"}
    assert imported_modules(package / "data" / "views.py", package) == {"mvmr.messages", "mvmr.data"}
    assert unit_graph(package)["data"] == {"methods", "messages"}
