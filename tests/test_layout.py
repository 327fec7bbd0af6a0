"""Data flows one way: each module imports only modules listed before it (README, "How the code is laid out")."""

import ast
from pathlib import Path

import siamsearch

# The README's order: foundations, then folder → images → tensors → encoder → vectors → store → groups → report.
ORDER = ("errors", "atomic", "config", "device", "images", "samples", "transforms", "pairs", "distributed", "devicedecode", "embed", "trainset",
         "model", "losses", "metrics", "calibration", "checkpoint", "train", "evaluate", "ann", "rows", "indexdir", "store", "indexing",
         "relocation", "search", "closepairs", "dedup", "moves", "report", "commands", "demo", "terminal", "cli")


def imports_of(path: Path) -> set[str]:
    """The siamsearch modules a file imports (relative imports)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
    return found - {"__version__"}


def test_every_module_is_placed_and_imports_only_modules_above_it():
    package = Path(siamsearch.__file__).parent
    modules = {p.stem for p in package.glob("*.py")} - {"__init__", "__main__"}
    assert modules == set(ORDER), f"place these in ORDER and the README: {modules ^ set(ORDER)}"
    for name in ORDER:
        upward = imports_of(package / f"{name}.py") - set(ORDER[:ORDER.index(name)])
        assert not upward, f"{name} imports {upward}, which come after it"


def test_no_module_is_over_about_400_lines():
    package = Path(siamsearch.__file__).parent
    assert {p.name: n for p in package.glob("*.py") if (n := len(p.read_text().splitlines())) > 420} == {}
