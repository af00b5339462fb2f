"""The package's structure: no import circle, and one place per ``run`` option.

The import graph counts every ``import`` statement, also those inside functions and under
``TYPE_CHECKING``: a circle there is still two modules that each need the other.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

from typer.main import get_command

import rkrepro
from rkrepro.cli.app import app
from rkrepro.planning.options import RunOptions

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


def test_lower_layers_never_import_the_run_or_cli_packages() -> None:
    graph = import_graph()
    lower = ("rkrepro.paper", "rkrepro.models", "rkrepro.data", "rkrepro.train")
    lower += ("rkrepro.tracking", "rkrepro.status", "rkrepro.report", "rkrepro.checkpoints")
    for name, deps in graph.items():
        if name.startswith(lower):
            upward = {d for d in deps if d.startswith(("rkrepro.run", "rkrepro.cli"))}
            assert not upward, f"{name} imports {sorted(upward)}"


def test_every_run_option_reaches_launched_jobs_under_its_own_flag() -> None:
    """A job repeats each RunOptions field as the ``run`` option of the same name, so adding a
    flag needs no hand-kept list of arguments."""
    run = get_command(app).commands["run"]  # type: ignore[attr-defined]
    accepted = {opt for param in run.params for opt in param.opts}
    values = {
        f.name: {int: 3, bool: True, str: "x"}.get(type(f.default), "/tmp/x")
        for f in dataclasses.fields(RunOptions)
    }
    values.update(epochs=3, train_subset=5, tracking_uri="sqlite:////tmp/x.db", fast_path="off")
    options = RunOptions(**{**values, "data_dir": Path("d"), "tables_dir": Path("t")})
    args = options.job_args()
    flags = [a for a in args if a.startswith("--")]
    job_fields = [f for f in dataclasses.fields(RunOptions) if f.metadata.get("job", True)]
    assert len(flags) == len(job_fields)
    for flag in flags:
        assert flag in accepted, f"{flag} is not a `rkrepro run` option"
    assert args[args.index("--data-dir") + 1] == str(Path("d").absolute())
    assert "--device" not in args  # each launcher gives a job its own device
