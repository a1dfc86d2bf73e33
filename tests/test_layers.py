"""Every import in timmlens points down its floors, and no file imports itself in a circle.

The floors are those of ``docs/contributing.md``. An ``ast`` walk reads every module's
imports: module-level ones, those inside functions, ``importlib.import_module("timmlens...")``
strings and the name -> module maps given to ``lazy_exports``; imports under
``if TYPE_CHECKING:`` are exempt (they never run).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src"

#: The floors, bottom first. A module belongs to the longest prefix that names it (the root
#: package ``timmlens`` names only its ``__init__``); an import may stay on its floor or go
#: down, never up.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "ground",
        (
            "timmlens.errors",
            "timmlens._warnings",
            "timmlens.devices",
            "timmlens._model_state",
            "timmlens._outputs",
            "timmlens._lazy",
            "timmlens._version",
            "timmlens._registry",
        ),
    ),
    ("models", ("timmlens.models",)),
    ("data", ("timmlens.data",)),
    ("adapters", ("timmlens.adapters",)),
    ("pictures and files", ("timmlens.viz", "timmlens.saving", "timmlens._npz_reader")),
    ("methods and results", ("timmlens.interpretation",)),
    ("answers", ("timmlens.analysis", "timmlens.evaluation", "timmlens.groundtruth")),
    (
        "front doors",
        (
            "timmlens",
            "timmlens.cli",
            "timmlens.quick",
            "timmlens.quick_results",
            "timmlens.testing",
        ),
    ),
)

#: (importer, imported) -> why this one import may climb.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {
    ("timmlens.interpretation", "timmlens.quick"): (
        "API.md's front door: `from timmlens.interpretation import quick_explain` (a lazy "
        "re-export; nothing inside timmlens imports these names from there)"
    ),
}


@dataclass(frozen=True)
class Module:
    """One module to check: its dotted name, where it is shown, its source text."""

    name: str
    path: str
    source: str
    is_package: bool = False


@dataclass(frozen=True)
class Import:
    """One import of ``target`` by ``module`` at ``line`` (``lazy``: inside a function)."""

    module: str
    path: str
    line: int
    target: str
    lazy: bool


def package_modules(root: Path = SOURCE / "timmlens") -> dict[str, Module]:
    """Every module of the package under ``root`` by dotted name."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        shown = path.relative_to(root.parents[1]).as_posix()
        modules[name] = Module(name, shown, path.read_text(), is_package)
    return modules


def layer_of(module: str) -> int | None:
    """The floor (index into `LAYERS`) of ``module``, or ``None`` where none names it."""
    best: tuple[int, int] | None = None  # (prefix length, floor)
    for floor, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            named = module == prefix or (prefix != "timmlens" and module.startswith(prefix + "."))
            if named and (best is None or len(prefix) > best[0]):
                best = (len(prefix), floor)
    return None if best is None else best[1]


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")


def _called(node: ast.Call, name: str) -> bool:
    """Whether ``node`` calls ``name`` or ``something.name``."""
    func = node.func
    return (isinstance(func, ast.Name) and func.id == name) or (
        isinstance(func, ast.Attribute) and func.attr == name
    )


def _import_nodes(tree: ast.AST) -> list[tuple[ast.AST, bool]]:
    """The import statements and calls of ``tree`` with whether each is inside a function,
    leaving out the body of ``if TYPE_CHECKING:`` (its ``else`` runs, so it is kept)."""
    found: list[tuple[ast.AST, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom, ast.Call)):
                found.append((child, in_function))
            if _is_type_checking(child):
                assert isinstance(child, ast.If)
                for part in child.orelse:
                    visit(part, in_function)
                continue
            function = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, in_function or function)

    visit(tree, False)
    return found


def _absolute(module: Module, name: str, level: int) -> str:
    """``from <level dots><name>`` in ``module`` as a dotted name."""
    if not level:
        return name
    package = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
    base = package[: len(package) - level + 1]
    return ".".join(base + ([name] if name else []))


def _string(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _lazy_export_targets(module: Module, tree: ast.Module) -> list[tuple[int, str]]:
    """``(line, module)`` for each value of the map given to ``lazy_exports``."""
    maps = {
        target.id: node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and _called(node, "lazy_exports")):
            continue
        exports = node.args[1] if len(node.args) > 1 else None
        if isinstance(exports, ast.Name):
            exports = maps.get(exports.id)
        if isinstance(exports, ast.Dict):
            for value in exports.values:
                text = _string(value)
                if text is not None:
                    level = len(text) - len(text.lstrip("."))
                    found.append((value.lineno, _absolute(module, text.lstrip("."), level)))
    return found


def imports_of(module: Module, known: set[str]) -> list[Import]:
    """Every import of a module in ``known`` by ``module`` (see the module doc)."""
    tree = ast.parse(module.source, filename=module.path)
    found: list[tuple[int, str, bool]] = []
    for node, lazy in _import_nodes(tree):
        if isinstance(node, ast.ImportFrom):
            base = _absolute(module, node.module or "", node.level)
            # ``from package import submodule`` imports the submodule
            named = [f"{base}.{alias.name}" for alias in node.names]
            found += [(node.lineno, t, lazy) for t in named if t in known] or [
                (node.lineno, base, lazy)
            ]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, lazy) for alias in node.names]
        elif isinstance(node, ast.Call) and _called(node, "import_module") and node.args:
            text = _string(node.args[0])
            if text is not None:
                found.append((node.lineno, text, lazy))
    found += [(line, target, False) for line, target in _lazy_export_targets(module, tree)]
    imports = []
    for line, target, lazy in found:
        while target not in known and "." in target:
            target = target.rsplit(".", 1)[0]  # a name inside a module: that module
        if target in known and target != module.name:
            imports.append(Import(module.name, module.path, line, target, lazy))
    return imports


def upward_imports(modules: dict[str, Module]) -> list[str]:
    """One line per import that climbs a floor (``path:line``, the floors), sorted."""
    known = set(modules)
    problems = []
    for module in modules.values():
        low = layer_of(module.name)
        for found in imports_of(module, known):
            high = layer_of(found.target)
            if low is None or high is None or high <= low:
                continue
            if (found.module, found.target) in ALLOWED_UPWARD:
                continue
            where = " (inside a function)" if found.lazy else ""
            problems.append(
                f"{found.path}:{found.line}: {found.module} imports {found.target}{where}: "
                f"{LAYERS[low][0]} -> {LAYERS[high][0]}"
            )
    return sorted(problems)


def import_cycles(modules: dict[str, Module]) -> list[list[str]]:
    """The groups of modules that import each other in a circle (any kind of import)."""
    known = set(modules)
    edges = {name: {i.target for i in imports_of(m, known)} for name, m in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(name: str) -> None:  # Tarjan's strongly connected components
        index[name] = low[name] = len(index)
        stack.append(name)
        for target in edges[name]:
            if target not in index:
                visit(target)
                low[name] = min(low[name], low[target])
            elif target in stack:
                low[name] = min(low[name], index[target])
        if low[name] == index[name]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == name:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for name in sorted(edges):
        if name not in index:
            visit(name)
    return sorted(cycles)


# ----------------------------------------------------------------------- the package
def test_every_module_has_a_floor() -> None:
    unplaced = [name for name in package_modules() if layer_of(name) is None]
    assert unplaced == [], (
        f"give these modules a floor in LAYERS (tests/test_layers.py): {unplaced}"
    )


def test_no_import_climbs_a_floor() -> None:
    problems = upward_imports(package_modules())
    assert problems == [], "imports that climb (see docs/contributing.md):\n" + "\n".join(problems)


def test_no_file_level_import_cycle() -> None:
    cycles = import_cycles(package_modules())
    assert cycles == [], "modules importing each other in a circle:\n" + "\n".join(
        " <-> ".join(group) for group in cycles
    )


def test_the_walk_sees_imports_of_every_kind() -> None:
    """The package's own known imports are found: lazy, relative, import_module, lazy maps."""
    modules = package_modules()
    known = set(modules)

    def targets(name: str) -> set[str]:
        return {i.target for i in imports_of(modules[name], known)}

    assert "timmlens.models.introspect" in targets("timmlens.interpretation._targets")  # lazy
    assert "timmlens.saving" in targets("timmlens.interpretation.base")  # lazy, relative
    assert "timmlens.quick" in targets("timmlens.interpretation")  # lazy_exports map
    assert "timmlens.analysis" not in targets("timmlens.viz.concept_figure")  # TYPE_CHECKING


# ------------------------------------------------------------ the checker, on planted code
def _planted(source: str, name: str = "timmlens.models.planted") -> dict[str, Module]:
    modules = {
        "timmlens.models.planted": Module(
            "timmlens.models.planted", "src/timmlens/models/planted.py", ""
        ),
        "timmlens.interpretation.base": Module(
            "timmlens.interpretation.base", "src/timmlens/interpretation/base.py", ""
        ),
        "timmlens.errors": Module("timmlens.errors", "src/timmlens/errors.py", ""),
    }
    modules[name] = Module(name, modules[name].path, source)
    return modules


@pytest.mark.parametrize(
    ("source", "line", "lazy"),
    [
        ("from ..interpretation.base import Explainer\n", 1, False),
        ("import os\n\n\ndef f():\n    from ..interpretation import base\n", 5, True),
        ("import timmlens.interpretation.base\n", 1, False),
        (
            "import importlib\n\n\ndef f():\n"
            "    return importlib.import_module('timmlens.interpretation.base')\n",
            5,
            True,
        ),
    ],
)
def test_a_planted_upward_import_is_named_with_file_line_and_floors(
    source: str, line: int, lazy: bool
) -> None:
    problems = upward_imports(_planted(source))
    where = " (inside a function)" if lazy else ""
    assert problems == [
        f"src/timmlens/models/planted.py:{line}: timmlens.models.planted imports "
        f"timmlens.interpretation.base{where}: models -> methods and results"
    ]


def test_planted_imports_that_go_down_or_only_type_check_pass() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "from ..errors import TimmLensError\n"
        "if TYPE_CHECKING:\n"
        "    from ..interpretation.base import Explainer\n"
    )
    assert upward_imports(_planted(source)) == []


def test_a_planted_cycle_is_found() -> None:
    modules = _planted("from ..interpretation import base\n")
    modules["timmlens.interpretation.base"] = Module(
        "timmlens.interpretation.base",
        "src/timmlens/interpretation/base.py",
        "def f():\n    from ..models import planted\n",
    )
    assert import_cycles(modules) == [["timmlens.interpretation.base", "timmlens.models.planted"]]
