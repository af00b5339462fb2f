"""Bad command lines: each gets one clear line and exit code 2, and the store stays as it was."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import helpers_workspace as ws
import pytest
from typer.testing import CliRunner

from rkrepro.cli.app import app

RUN = ["run", "tiny", "--row", "bc-k4"]

BAD_COMMANDS = {
    "unknown table": (["run", "tiyn", "--row", "bc-k4"], "did you mean tiny"),
    "unknown row": (["run", "tiny", "--row", "bc-k5"], "did you mean bc-k4"),
    "unknown variant": ([*RUN, "--variant", "RKNet-1x3_1x1_1x1"], "RKNet-1x2_1x1_1x1"),
    "unparsable variant": ([*RUN, "--variant", "RKNet-1y2"], "RKNet-"),
    "seeds and seed": ([*RUN, "--seeds", "2", "--seed", "1"], "not both"),
    "zero seeds": ([*RUN, "--seeds", "0"], "--seeds"),
    "negative seed": ([*RUN, "--seed", "-1"], "seed"),
    "huge seed": ([*RUN, "--seed", str(2**40)], "seed"),
    "zero epochs": ([*RUN, "--epochs", "0"], "--epochs"),
    "negative epochs": ([*RUN, "--epochs", "-3"], "--epochs"),
    "zero train subset": ([*RUN, "--train-subset", "0"], "--train-subset"),
    "not a number": ([*RUN, "--epochs", "many"], "--epochs"),
    "share and both": ([*RUN, "--share", "--both"], "only one of"),
    "unknown device": ([*RUN, "--device", "tpu"], "device"),
    "absent cuda": ([*RUN, "--device", "cuda:7"], "cuda"),
    "fast path switch": ([*RUN, "--fast-path", "-warp_speed"], "bad fast-path switch"),
    "fast path word": ([*RUN, "--fast-path", "fast"], "bad fast-path switch"),
    "missing row option": (["run", "tiny"], "Missing option '--row'"),
    "missing data": ([*RUN, "--data-dir", "/nonexistent/data"], "cifar-10-batches-py"),
    "unknown command": (["rnu"], "No such command"),
    "report format": (["report", "tiny", "--format", "xml"], "--format"),
    "report tolerance": (["report", "tiny", "--tolerance", "-1"], "--tolerance"),
    "report unknown table": (["report", "tabel9"], "unknown table"),
    "status unknown table": (["status", "tabel9"], "unknown table"),
    "list tables dir": (["list", "--tables-dir", "/nonexistent/tables"], "does not exist"),
    "show without row": (["show", "tiny"], "Missing option '--row'"),
    "params unknown row": (["params", "tiny", "--row", "bc-k44"], "did you mean bc-k4"),
    "plan row without table": (["plan", "--row", "bc-k4"], "needs a TABLE"),
    "negative workers": ([*RUN, "--workers", "-1"], "--workers"),
    "tpu dry run": ([*RUN, "--device", "tpu:7", "--dry-run"], "unknown device 'tpu:7'"),
    "report out onto the store": (["report", "tiny", "--out", "runs/mlflow.db"], "MLflow store"),
    "report out onto a checkpoint": (
        ["report", "tiny", "--out", "runs/checkpoints/abc/last.pt"],
        "checkpoints folder",
    ),
    "report out onto a table file": (
        ["report", "tiny", "--out", "tables/tiny.yaml"],
        "not an rkrepro report; add --force",
    ),
    "report out into a missing folder": (
        ["report", "tiny", "--out", "missing/report.md"],
        "does not exist",
    ),
    "report out onto a folder": (["report", "tiny", "--out", "tables"], "is a folder"),
    "report out onto /dev/full": (
        ["report", "tiny", "--out", "/dev/full", "--format", "markdown"],
        "No space left on device",
    ),
    "report plots onto a file": (["report", "tiny", "--plots", "tables/tiny.yaml"], "is a file"),
}


def _dump(db: Path) -> list[tuple]:
    """Everything the store holds about runs, in a stable order."""
    with sqlite3.connect(db) as con:
        rows = []
        for table in ("experiments", "runs", "tags", "params", "metrics", "latest_metrics"):
            rows += [(table, *r) for r in con.execute(f"SELECT * FROM {table}").fetchall()]
    return sorted(rows, key=repr)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    """A workspace whose store already holds one finished run."""
    root = tmp_path_factory.mktemp("bad-input")
    env = ws.make_workspace(root, n_train=64)
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        done = CliRunner().invoke(app, [*RUN, "--variant", "original", "--epochs", "1"])
    assert done.exit_code == 0, done.output
    return root, env


@pytest.mark.bad_input
@pytest.mark.parametrize("case", sorted(BAD_COMMANDS))
def test_bad_command_lines_give_one_line_and_exit_2(store, monkeypatch, case):
    root, env = store
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(root)
    db = root / "runs" / "mlflow.db"
    before = _dump(db)
    args, expected = BAD_COMMANDS[case]

    result = CliRunner().invoke(app, args)

    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ") and expected in lines[0], lines[0]
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), repr(result.exception)
    assert _dump(db) == before


# --------------------------------------------------------------------------------------------
# A hostile or broken tables folder: one line, exit 2, in bounded time and memory.


def _bomb() -> str:
    """A billion laughs: ten anchored lists, each nine aliases of the one before (9**10 x's)."""
    parts = ["&a [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        prev = chr(96 + i)
        parts.append(f"&{chr(97 + i)} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return "[" + ", ".join(parts) + "]"


def _hostile(kind: str, path: Path) -> None:
    """Write the bad table file ``kind`` at ``path``."""
    table = ws.TINY_TABLE
    if kind == "alias bomb in caption":
        path.write_text(table.replace("id: tiny\n", f"id: bomb\ncaption: {_bomb()}\n"))
    elif kind == "50 MB file":
        path.write_text(table.replace("id: tiny", "id: big") + "#" * (50 << 20) + "\n")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink to /dev/zero":
        path.symlink_to("/dev/zero")
    elif kind == "100k nesting levels":
        path.write_text("id: deep\ncaption: " + "[" * 100_000 + "]" * 100_000 + "\n")
    elif kind == "unhashable key":
        path.write_text("? [a, b]\n: 1\nid: k\n")
    elif kind == "invalid utf-8":
        path.write_bytes(table.replace("id: tiny", "id: latin").encode() + b"# caf\xe9\n")
    elif kind == "binary":
        path.write_bytes(bytes(range(256)) * 16)
    elif kind == "5000-digit stage count":
        path.write_text(table.replace("RKNet-1x2_1x1_1x1", "RKNet-" + "9" * 5000 + "x1_1x1_1x1"))
    elif kind == "5000-digit depth":
        path.write_text(table.replace("depth: 10", "depth: " + "9" * 5000))
    else:
        raise AssertionError(kind)


HOSTILE_TABLES = {
    "alias bomb in caption": "must be a string",
    "50 MB file": f"at most {1 << 20} bytes",
    "fifo": "not a regular file",
    "symlink to /dev/zero": "not a regular file",
    "100k nesting levels": "nested more than 32 levels",
    "unhashable key": "cannot be a key",
    "invalid utf-8": "not UTF-8",
    "binary": "bad.yaml",
    "5000-digit stage count": "bad.yaml",
    "5000-digit depth": "bad.yaml",
}


def _rkrepro(env: dict[str, str], *args: str, timeout: float = 30) -> tuple[int, str, float]:
    """``python -m rkrepro ARGS`` in a child with 4 GB of address space at most."""
    import resource
    import subprocess
    import sys
    import time

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    start = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "rkrepro", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=limit,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"rkrepro {' '.join(args)[:80]} did not answer within {timeout}s")
    return done.returncode, done.stdout + done.stderr, time.monotonic() - start


def _child_env(root: Path) -> dict[str, str]:
    env = {**os.environ, **ws.make_workspace(root, n_train=10, n_test=10)}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


@pytest.mark.bad_input
@pytest.mark.parametrize("kind", sorted(HOSTILE_TABLES))
def test_a_hostile_table_file_is_one_line_in_bounded_time(tmp_path: Path, kind: str) -> None:
    env = _child_env(tmp_path)
    _hostile(kind, tmp_path / "tables" / "bad.yaml")
    code, output, seconds = _rkrepro(env, "list")
    lines = output.strip().splitlines()
    assert code == 2 and len(lines) == 1, output[-2000:]
    assert lines[0].startswith("Error: ") and "bad.yaml" in lines[0], lines[0]
    assert HOSTILE_TABLES[kind] in lines[0] and len(lines[0]) < 500, lines[0]
    assert seconds < 20, seconds


_ONLY_ORIGINAL = ("    variants:\n      - {name: RKNet-1x2_1x1_1x1, share: {}}\n", "")
OVERSIZED = {
    # (replacements in the tiny table, what the one error line must say)
    "huge variant": ([("RKNet-1x2_1x1_1x1", "RKNet-1000x1000_1x1_1x1")], "at most 64 stages"),
    "growth rate 10^6": ([("growth_rate: 4", "growth_rate: 1000000")], "at most 256"),
    "m of 10^4": ([("m: [2, 2, 2]", "m: [2, 10000, 2]")], "at most 512"),
    "too many layers": ([("RKNet-1x2_1x1_1x1", "RKNet-64x64_1x1_1x1")], "at most 2000"),
    # A DenseNet-BC within every field's limit, 995 layers of k=256: about 1e11 parameters.
    "too many parameters": (
        [("growth_rate: 4", "growth_rate: 256"), ("depth: 10", "depth: 1990"), _ONLY_ORIGINAL],
        "G per model",
    ),
}


@pytest.mark.bad_input
@pytest.mark.parametrize("case", sorted(OVERSIZED))
def test_an_oversized_model_is_refused_before_it_is_built(tmp_path: Path, case: str) -> None:
    replacements, expected = OVERSIZED[case]
    env = _child_env(tmp_path)
    table = ws.TINY_TABLE
    for old, new in replacements:
        table = table.replace(old, new)
    assert table != ws.TINY_TABLE
    (tmp_path / "tables" / "tiny.yaml").write_text(table)
    for args in (
        ["params", "tiny"],
        ["plan", "tiny"],
        ["report", "tiny"],
        ["run", "tiny", "--row", "bc-k4", "--dry-run", "--device", "cpu"],
    ):
        code, output, seconds = _rkrepro(env, *args, timeout=60)
        lines = output.strip().splitlines()
        assert code == 2 and len(lines) == 1, (args, output[-2000:])
        assert expected in lines[0] and "tiny.yaml" in lines[0], (args, lines[0])
        assert seconds < 20, (args, seconds)
