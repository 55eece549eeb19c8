"""The package as the data flow (README, "Architecture"): the allowed dependencies between
config, engine, service and reporting, read from the imports of every gansweep module (ast,
nothing imported), and no import cycle.

    cli        -> service, reporting, config; the engine only inside functions of single.py
                  (`gansweep train` and `baseline`: one trial or one score, no services)
    service    -> config; its worker entry points (worker.py, trainable.py) are the only door
                  into the engine, and the rest of the driver imports no torch
    engine     -> config; never Ray, Optuna or MLflow
    reporting  -> config, the service's protocol and tracking; the engine only inside
                  functions of baseline.py (the data-as-model baseline)
    config     -> nothing of the others, nothing heavy (torch, Ray, MLflow, Optuna, pandas)
    errors.py, files.py: the shared base, importing nothing of the layers

An import inside a function is lazy (it runs when the function does); one under `if
TYPE_CHECKING:` never runs. Every other import runs when its module is imported and counts
for the cycles.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gansweep"
LAYERS = ("config", "engine", "service", "reporting")
TOP_LEVEL = {  # the modules that stay at gansweep's top: the composition root and the base
    "gansweep": "base", "gansweep.errors": "base", "gansweep.files": "base",
    "gansweep.cli": "cli", "gansweep.__main__": "cli", "gansweep.single": "cli", "gansweep.extend": "base",
}
# Module -> the layers and modules it may import when imported (module level), and lazily.
ALLOWED = {
    "base": {"base"},
    "config": {"base", "config"},
    "engine": {"base", "config", "engine"},
    "service": {"base", "config", "service"},
    "reporting": {"base", "config", "reporting", "gansweep.service.protocol", "gansweep.service.tracking"},
    "cli": {"base", "config", "service", "reporting", "cli"},
}
LAZY_ALSO = {"reporting": {"engine"}, "cli": {"engine"}}
ENGINE_DOORS = {"gansweep.service.worker", "gansweep.service.trainable"}  # service -> engine
# The one module of each layer that may reach the engine at all.
ENGINE_USERS = {"service": ENGINE_DOORS, "reporting": {"gansweep.reporting.baseline"},
                "cli": {"gansweep.single"}}
HEAVY = {"torch", "ray", "mlflow", "optuna", "pandas", "matplotlib", "torchvision"}
NEVER = {  # third-party packages a layer never imports, not even lazily
    "config": HEAVY,
    "engine": {"ray", "mlflow", "optuna"},
    "base": HEAVY,  # (files.py names pandas for a type hint, under TYPE_CHECKING)
}
NOT_AT_IMPORT = {  # third-party packages a layer imports only lazily: the driver is torch-free
    "base": HEAVY,
    "cli": {"torch", "ray", "mlflow", "optuna"},
    "service": {"torch", "torchvision"},  # but for the worker (ENGINE_DOORS)
    "reporting": {"torch", "torchvision", "ray"},
}


@dataclass(frozen=True)
class Import:
    target: str  # a gansweep module, or a third-party top-level package
    line: int
    lazy: bool  # inside a function


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    where: str  # its path from the repository root
    imports: tuple[Import, ...]


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(body: list[ast.stmt], lazy: bool) -> Iterator[tuple[ast.stmt, bool]]:
    """Every import statement in `body` and below, with whether it runs only when a function
    is called; `if TYPE_CHECKING:` blocks are skipped (their imports never run)."""
    for node in body:
        if isinstance(node, ast.If) and _is_type_checking(node):
            yield from _walk(node.orelse, lazy)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, lazy
            continue
        inner = lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            children = getattr(node, field, None) or []
            statements = [c for c in children if isinstance(c, ast.stmt)]
            for child in children:
                if isinstance(child, (ast.ExceptHandler, ast.match_case)):
                    statements += child.body
            yield from _walk(statements, inner)


def read_modules(root: Path = PACKAGE) -> dict[str, Module]:
    paths = sorted(root.rglob("*.py"))
    names = {module_name(path, root) for path in paths}
    modules = {}
    for path in paths:
        name = module_name(path, root)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = []
        for node, lazy in _walk(ast.parse(path.read_text(), str(path)).body, False):
            for target in _targets(node, package, names):
                found.append(Import(target, node.lineno, lazy))
        modules[name] = Module(name, path, str(path.relative_to(root.parent)), tuple(found))
    return modules


def _targets(node: ast.AST, package: str, names: set[str]) -> list[str]:
    """The modules an import statement imports: `from gansweep.engine import run` imports
    gansweep.engine.run where that is a module, else gansweep.engine."""
    if isinstance(node, ast.Import):
        return [_own(alias.name, names) for alias in node.names]
    assert isinstance(node, ast.ImportFrom)
    base = node.module or ""
    if node.level:
        anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join([*anchor, *([base] if base else [])])
    if base.split(".")[0] != "gansweep":
        return [base.split(".")[0]]
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in names else base for a in node.names]


def _own(name: str, names: set[str]) -> str:
    if name.split(".")[0] != "gansweep":
        return name.split(".")[0]
    while name not in names and "." in name:
        name = name.rpartition(".")[0]
    return name


def layer_of(name: str) -> str | None:
    parts = name.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return parts[1]
    return TOP_LEVEL.get(name)


def violations(modules: dict[str, Module]) -> list[str]:
    """Each import that breaks the allowed dependencies, as `module:line: ...`."""
    found = []
    for module in modules.values():
        layer = layer_of(module.name)
        if layer is None:
            continue  # test_every_module_sits_in_its_layer names it
        for item in module.imports:
            at = f"{module.where}:{item.line}: {module.name} -> {item.target}"
            if not item.target.startswith("gansweep"):
                if item.target in NEVER.get(layer, ()):
                    found.append(f"{at}: {layer} never imports {item.target}")
                elif not item.lazy and item.target in NOT_AT_IMPORT.get(layer, ()) and module.name not in ENGINE_DOORS:
                    found.append(f"{at}: {layer} imports {item.target} only inside a function")
                continue
            target = item.target
            other = layer_of(target)
            if other is None or item.target == "gansweep":
                continue
            if other == "engine" and layer in ENGINE_USERS and module.name not in ENGINE_USERS[layer]:
                doors = ", ".join(sorted(ENGINE_USERS[layer]))
                found.append(f"{at}: {layer} reaches the engine only through {doors}")
                continue
            allowed = ALLOWED[layer] | (LAZY_ALSO.get(layer, set()) if item.lazy else set())
            if other in allowed or target in allowed:
                continue
            if layer == "service" and other == "engine" and module.name in ENGINE_DOORS:
                continue
            found.append(f"{at}: {layer} may not import {other}"
                         + (" (only inside a function)" if other in LAZY_ALSO.get(layer, ()) else ""))
    return found


def import_cycle(modules: dict[str, Module]) -> list[str] | None:
    """A cycle of module-level imports among gansweep's modules, or None."""
    graph = {name: sorted({i.target for i in m.imports if not i.lazy and i.target in modules and i.target != name})
             for name, m in modules.items()}
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for other in graph[name]:
            if state.get(other) == 1:
                return path[path.index(other):] + [other]
            if other not in state:
                cycle = visit(other)
                if cycle:
                    return cycle
        path.pop()
        state[name] = 2
        return None

    for name in graph:
        if name not in state:
            cycle = visit(name)
            if cycle:
                return cycle
    return None


MODULES = read_modules()


def test_the_allowed_dependencies_hold() -> None:
    assert violations(MODULES) == []


def test_no_import_cycle() -> None:
    assert import_cycle(MODULES) is None


def test_every_module_sits_in_its_layer() -> None:
    assert [name for name in MODULES if layer_of(name) is None] == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_over_about_400_lines(name: str) -> None:
    lines = MODULES[name].path.read_text().count("\n")
    assert 0 <= lines <= 450, f"{MODULES[name].path}: {lines} lines"


# The checker itself, on small packages written for the purpose: it sees what it must.
def write_package(root: Path, files: dict[str, str]) -> Path:
    package = root / "gansweep"
    for name, text in {"__init__.py": "", **files}.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    return package


def test_the_checker_sees_forbidden_imports_lazy_ones_and_type_checking(tmp_path: Path) -> None:
    package = write_package(tmp_path, {
        "config/__init__.py": "",
        "config/schema.py": "import yaml\nfrom gansweep.engine import run\n",
        "config/load.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from gansweep.service import sweep\n"
                          "def f():\n    import torch\n",
        "engine/__init__.py": "",
        "engine/run.py": "from gansweep.config import schema\ndef f():\n    import mlflow\n",
        "service/__init__.py": "",
        "service/sweep.py": "import torch\nfrom gansweep.engine.run import f\nfrom . import worker\n",
        "service/worker.py": "import torch\nfrom gansweep.engine import run\n",
        "reporting/__init__.py": "",
        "reporting/baseline.py": "from gansweep.engine import run\ndef f():\n    from gansweep.engine import run\n",
        "reporting/html.py": "from gansweep.engine import run\nfrom gansweep.service import tracking\n",
    })
    modules = read_modules(package)
    assert modules["gansweep.service.sweep"].imports[2] == Import("gansweep.service.worker", 3, False)
    found = [v.split(": ", 1)[1] for v in violations(modules)]
    assert sorted(found) == sorted([
        "gansweep.config.schema -> gansweep.engine.run: config may not import engine",
        "gansweep.config.load -> torch: config never imports torch",
        "gansweep.engine.run -> mlflow: engine never imports mlflow",
        "gansweep.service.sweep -> torch: service imports torch only inside a function",
        "gansweep.service.sweep -> gansweep.engine.run: service reaches the engine only through "
        "gansweep.service.trainable, gansweep.service.worker",
        "gansweep.reporting.html -> gansweep.engine.run: reporting reaches the engine only through "
        "gansweep.reporting.baseline",
        "gansweep.reporting.baseline -> gansweep.engine.run: reporting may not import engine (only inside a function)",
        # gansweep.service.tracking is no module here: the import names the package
        "gansweep.reporting.html -> gansweep.service: reporting may not import service",
    ])


def test_the_checker_finds_a_cycle_through_module_level_imports_only(tmp_path: Path) -> None:
    package = write_package(tmp_path, {
        "a.py": "from gansweep import b\n",
        "b.py": "import gansweep.c\ndef f():\n    from gansweep import a\n",
        "c.py": "from gansweep.a import x\n",
        "d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from gansweep import e\n",
        "e.py": "from gansweep import d\n",
    })
    assert import_cycle(read_modules(package)) == ["gansweep.a", "gansweep.b", "gansweep.c", "gansweep.a"]
    (package / "c.py").write_text("def f():\n    from gansweep.a import x\n")
    assert import_cycle(read_modules(package)) is None


def test_importing_the_config_imports_nothing_heavy() -> None:
    """What the ast says, checked by Python: every config module imported in a fresh
    interpreter leaves torch, Ray, MLflow, Optuna and pandas unimported."""
    config = sorted(name for name in MODULES if layer_of(name) == "config")
    code = (f"import importlib, sys\nfor name in {config!r}:\n    importlib.import_module(name)\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(HEAVY)!r}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert len(config) >= 6


def test_a_plain_install_ships_every_package() -> None:
    """`pip install .` (the image's install) finds packages by their __init__.py: a folder of
    modules without one would be missing from the image, not from an editable checkout."""
    import tomllib

    import setuptools

    pyproject = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    shipped = set(setuptools.find_packages(str(PACKAGE.parent), include=include))
    folders = {module_name(path.parent / "__init__.py", PACKAGE) for path in PACKAGE.rglob("*.py")}
    assert folders == {name for name in shipped if name.split(".")[0] == "gansweep"}
    assert {f"gansweep.{layer}" for layer in LAYERS} <= shipped
