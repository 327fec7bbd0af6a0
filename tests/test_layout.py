"""Data flows one way (docs/architecture.md): packages import only the packages below them, and inside a package
each module imports only the modules listed before it.

core ← training, index ← duplicates ← the use cases (top-level modules) ← cluster ← cli. training and index are
two wings over the core that never import each other; cluster (the Ray stages) may use everything but the cli,
which mounts its commands.
"""

import ast
from pathlib import Path

import siamsearch

PACKAGES = {  # package → the packages it may import ("" is the top-level use cases)
    "core": (),
    "training": ("core",),
    "index": ("core",),
    "duplicates": ("core", "index"),
    "": ("core", "training", "index", "duplicates"),
    "cluster": ("core", "training", "index", "duplicates", ""),
    "cli": ("core", "training", "index", "duplicates", "", "cluster"),
}
ORDER = {  # each package's modules, foundations first
    "core": ("errors", "atomic", "config", "device", "images", "samples", "transforms", "devicedecode", "decoding", "embed",
             "model", "metrics", "calibration", "checkpoint", "builtin"),
    "training": ("settings", "recipes", "sampling", "distributed", "data", "whitening", "losses", "validation", "loop"),
    "index": ("ann", "rows", "folder", "store", "modelfile", "indexing", "relocation", "search"),
    "duplicates": ("closepairs", "linkage", "crowds", "overlap", "dedup", "moves", "standins", "decisions"),
    "": ("evaluate", "report", "commands", "review", "demo"),
    "cluster": ("runtime", "shards", "embedding", "building", "cells"),
    "cli": ("options", "terminal", "cluster", "app", "indexing", "duplicates", "training"),
}
PACKAGE = Path(siamsearch.__file__).parent
MAX_LINES = 420  # a smell detector, not a wall: a module this long is split by concept, never squeezed


def imports_of(path: Path, package: str) -> set[tuple[str, str]]:
    """(package, module) pairs a module of `package` imports from siamsearch, relatively."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom) or node.level == 0:
            continue
        base = package if node.level == 1 else ""
        parts = [p for p in (node.module or "").split(".") if p]
        if base == "" and parts and parts[0] in PACKAGES:  # from ..core.x import ..., or from .core import x
            found.update([(parts[0], parts[1])] if len(parts) > 1 else [(parts[0], a.name) for a in node.names])
        elif parts:
            found.add((base, parts[0]))
        else:
            found.update((base, a.name) for a in node.names if a.name != "__version__")
    return found


def modules(package: str) -> set[str]:
    """The module names of a package ("" the top level), without __init__ and __main__."""
    return {p.stem for p in (PACKAGE / package).glob("*.py")} - {"__init__", "__main__"}


def test_ls_shows_the_packages_and_every_module_is_placed():
    assert {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()} == set(PACKAGES) - {""}
    for package, order in ORDER.items():
        assert modules(package) == set(order), f"place these in ORDER[{package!r}]: {modules(package) ^ set(order)}"


def test_packages_import_only_those_below_them_and_modules_only_those_before_them():
    for package, order in ORDER.items():
        for name in order:
            for dep_package, dep in imports_of(PACKAGE / package / f"{name}.py", package):
                where = f"{package or 'siamsearch'}.{name} imports {dep_package or 'siamsearch'}.{dep}"
                if dep_package == package:
                    assert dep in order[:order.index(name)], f"{where}, which comes after it"
                else:
                    assert dep_package in PACKAGES[package], f"{where}, a package it may not import"


def test_training_and_index_are_two_wings_that_never_import_each_other():
    for a, b in (("training", "index"), ("index", "training")):
        for name in ORDER[a]:
            assert not {p for p, _ in imports_of(PACKAGE / a / f"{name}.py", a)} & {b}, f"{a}.{name} imports {b}"


def test_no_module_is_over_about_400_lines():
    files = [p for package in PACKAGES for p in (PACKAGE / package).glob("*.py")]
    assert {str(p.relative_to(PACKAGE)): n for p in files if (n := len(p.read_text().splitlines())) > MAX_LINES} == {}
