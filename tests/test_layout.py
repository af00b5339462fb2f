"""The package's structure: no import circle, every import pointing down the layers, modules
of a readable size, mlflow behind one package, and

The import graph counts every ``import`` statement, also those inside functions and under
``TYPE_CHECKING``: a circle there is still two modules that each need the other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import rkrepro

PACKAGE = Path(rkrepro.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                # ``from pkg import sub`` needs pkg.sub; ``from mod import name`` needs mod.
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                    for a in node.names
                ]
            for target in targets:
                if target in modules and target != name and target != "rkrepro":
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_package_has_no_import_circle() -> None:
    graph = import_graph()
    assert "rkrepro.training.session" in graph and graph["rkrepro.training.session"]  # real
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


# The layers, bottom first: a module imports only from its own layer and the ones below. Data
# flows down: the CLI launches, the launchers train plans, training reads the paper, the models,
# the data and the store; nothing below knows what is above it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "textsafe", "spec", "paths", "safe_write", "screen", "processes"),
    ("paper", "models", "data"),
    ("tracking",),
    ("planning",),
    ("training", "liveness", "status", "params", "ui"),
    ("report", "listing", "calibration", "estimate", "campaign"),
    ("launch",),
    ("cli", "__main__"),
)


def layer_of(module: str) -> int | None:
    """The layer of ``rkrepro.X`` or ``rkrepro.X.Y`` (by ``X``); None for an unplaced module."""
    name = module.split(".")[1] if "." in module else ""
    return next((i for i, layer in enumerate(LAYERS) if name in layer), None)


def test_every_import_points_down_the_layers() -> None:
    graph = import_graph()
    unplaced = sorted(m for m in graph if m != "rkrepro" and layer_of(m) is None)
    assert not unplaced, f"place these modules in LAYERS: {unplaced}"
    upward = [
        f"{name} -> {dep}"
        for name, deps in graph.items()
        for dep in deps
        if name != "rkrepro" and layer_of(dep) > layer_of(name)  # type: ignore[operator]
    ]
    assert not upward, upward


def test_the_layer_check_finds_an_upward_import() -> None:
    session, model = layer_of("rkrepro.training.session"), layer_of("rkrepro.paper.model")
    assert session is not None and model is not None and session > model
    assert layer_of("rkrepro.cli.app") == len(LAYERS) - 1 and layer_of("rkrepro.nowhere") is None


def test_no_module_over_600_lines_and_no_class_over_250() -> None:
    """Files and definitions a reader can hold: one concern each."""
    too_long = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        if len(text.splitlines()) > 600:
            too_long.append(f"{path.relative_to(PACKAGE)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 250:
                size = node.end_lineno - node.lineno + 1
                too_long.append(f"{path.relative_to(PACKAGE)}: class {node.name} {size} lines")
    assert not too_long, too_long


def test_only_the_tracking_package_imports_mlflow() -> None:
    importers = {
        name
        for name in import_graph()
        for path in [PACKAGE.parent / (name.replace(".", "/") + ".py")]
        if path.exists()
        and ("import mlflow" in path.read_text() or "from mlflow" in path.read_text())
    }
    assert importers and all(name.startswith("rkrepro.tracking.") for name in importers), importers
