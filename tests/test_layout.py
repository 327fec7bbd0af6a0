"""Data flows one way: each module imports only modules listed before it (README, "How the code is laid out").

siamsearch/cluster/ is the optional Ray package: its modules may import any top-level module and the cluster
modules listed before them; no top-level module imports it, except cli, which mounts its Typer sub-app.
"""

import ast
from pathlib import Path

import siamsearch

# The README's order: foundations, then folder → images → tensors → encoder → vectors → store → groups → report.
ORDER = ("errors", "atomic", "config", "settings", "device", "images", "recipes", "samples", "transforms", "pairs", "distributed", "devicedecode", "embed", "trainset",
         "model", "whitening", "losses", "metrics", "calibration", "validation", "checkpoint", "builtin", "train", "evaluate", "ann", "rows", "indexdir", "store", "indexing",
         "relocation", "search", "closepairs", "dedup", "moves", "standins", "report", "commands", "demo", "terminal", "options", "cluster", "cli")
CLUSTER_ORDER = ("runtime", "shards", "embedding", "building", "cells", "cli")
PACKAGE = Path(siamsearch.__file__).parent


def imports_of(path: Path, level: int = 1) -> set[str]:
    """The siamsearch modules a file imports: relative imports `level` dots up (1: its own package)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == level:
            found.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
    return found - {"__version__"}


def test_every_module_is_placed_and_imports_only_modules_above_it():
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert modules | {"cluster"} == set(ORDER), f"place these in ORDER and the README: {modules ^ set(ORDER)}"
    for name in set(ORDER) - {"cluster"}:
        upward = imports_of(PACKAGE / f"{name}.py") - set(ORDER[:ORDER.index(name)])
        assert not upward, f"{name} imports {upward}, which come after it"


def test_only_cli_imports_the_cluster_package_and_cluster_modules_import_only_those_above_them():
    for path in PACKAGE.glob("*.py"):
        if path.stem != "cli":
            assert "cluster" not in imports_of(path), f"{path.name} imports siamsearch.cluster"
    modules = {p.stem for p in (PACKAGE / "cluster").glob("*.py")} - {"__init__"}
    assert modules == set(CLUSTER_ORDER), f"place these in CLUSTER_ORDER and the README: {modules ^ set(CLUSTER_ORDER)}"
    for name in CLUSTER_ORDER:
        path = PACKAGE / "cluster" / f"{name}.py"
        assert not imports_of(path) - set(CLUSTER_ORDER[:CLUSTER_ORDER.index(name)]), f"cluster.{name} imports upward"
        assert not imports_of(path, 2) - set(ORDER[:ORDER.index("cluster")]), f"cluster.{name} imports {imports_of(path, 2)}"


def test_no_module_is_over_about_400_lines():
    files = [*PACKAGE.glob("*.py"), *(PACKAGE / "cluster").glob("*.py")]
    assert {p.name: n for p in files if (n := len(p.read_text().splitlines())) > 420} == {}
