"""Bad command lines: each gets one clear line and exit code 2, and the store stays as it was."""

from __future__ import annotations

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
