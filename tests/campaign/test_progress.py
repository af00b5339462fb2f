"""How far the campaign has come: run counts, hours spent from the logged epoch times, the
estimate still to go, per table and for the paper; ``status --watch``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import helpers_workspace as wsh
import pytest
from typer.testing import CliRunner

from rkrepro import paper
from rkrepro.campaign import progress
from rkrepro.cli.app import app
from rkrepro.estimate import cost, target
from rkrepro.tracking import epochs as tracked
from rkrepro.tracking.reader import RunRecord, fetch_runs

REPO = Path(__file__).resolve().parents[2]


def _record(cell, run_id: str, status: str, protocol: str = "paper", seed: str = "0"):
    return RunRecord(
        run_id, status, cell.table, cell.row, cell.model, cell.share, seed, protocol, 0
    )


def test_counts_hours_spent_and_left_per_table_and_for_the_paper() -> None:
    tables = paper.load_tables()
    t4 = paper.all_cells(tables, "table4")[:3]
    t1 = paper.all_cells(tables, "table1")[:1]
    records = [
        _record(t4[0], "a", "FINISHED"),
        _record(t4[0], "b", "FINISHED", seed="1"),
        _record(t4[1], "c", "KILLED"),
        _record(t4[1], "s", "FINISHED", protocol="shortened"),
        _record(t1[0], "d", "RUNNING"),
    ]
    epochs = t4[1].protocol.epochs
    spent = {
        "a": tracked.Spent(3600.0, epochs, "cuda:0 (NVIDIA H100)", 1),
        "b": tracked.Spent(1800.0, epochs, "2 x cuda (NVIDIA H100)", 2),
        "c": tracked.Spent(600.0, epochs // 2, "cuda:0 (NVIDIA H100)", 1),
        "s": tracked.Spent(360.0, 2, "cpu", 1),
        "d": tracked.Spent(0.0, 0, "", 1),
    }
    cells = t4 + t1
    estimates = {e.cell.key: e for e in cost.estimate(cells, target.named_gpu("h100"))}
    rows = progress.progress(cells, records, spent, estimates)
    table4, table1, total = rows
    assert (table4.name, table4.cells, table4.done, table4.stopped, table4.not_started) == (
        "table4", 3, 2, 1, 1,
    )  # fmt: skip
    assert table4.gpu_hours == pytest.approx(1 + 1 + 600 / 3600)  # seconds x processes
    assert table4.cpu_hours == pytest.approx(0.1)  # the shortened run on the CPU counts too
    # Left: cell 1 has trained half its epochs; cell 2 none; cell 0 is done.
    left = estimates[t4[1].key].gpu_hours * 0.5 + estimates[t4[2].key].gpu_hours
    assert table4.hours_left == pytest.approx(left)
    assert (table1.running, table1.hours_left) == (1, estimates[t1[0].key].gpu_hours)
    assert total.name == "paper" and total.cells == 4 and total.done == 2
    assert total.hours_left == pytest.approx(table4.hours_left + table1.hours_left)


@pytest.fixture
def trained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The tiny workspace after one real 2-epoch run of its original cell."""
    values = wsh.make_workspace(tmp_path)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        app, ["run", "tiny", "--variant", "original", "--epochs", "2", "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    return values


def test_status_ends_with_the_progress_read_from_the_store(trained) -> None:
    uri = f"sqlite:///{Path(trained['RKREPRO_RUNS_DIR']) / 'mlflow.db'}"
    records = fetch_runs(uri, ["tiny"])
    ids = [r.run_id for r in records]
    local = tracked.spent_by_run(uri, ids)
    (spent,) = local.values()
    assert spent.epochs == 2 and spent.seconds > 0 and spent.on_cpu and spent.processes == 1
    assert tracked._spent_mlflow(uri, ids) == local  # the server reader agrees
    result = CliRunner().invoke(app, ["status"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Campaign progress" in result.stdout and "CPU-h spent" in result.stdout
    line = next(x for x in result.stdout.splitlines() if x.startswith("│ tiny"))
    cells = [x.strip() for x in line.split("│")[2:-1]]
    # 3 cells; the 2-epoch run is shortened: spent, but not a done paper run; 2 not started.
    assert cells[:6] == ["3", "0", "0", "0", "0", "2"] and float(cells[7]) > 0
    assert "on NVIDIA H100 SXM5 80 GB in fp32" in " ".join(result.stdout.split())
    bad = CliRunner().invoke(app, ["status", "--gpu", "h1000"])
    assert bad.exit_code == 2 and "unknown GPU" in bad.stderr


def test_watch_redraws_until_interrupted(trained) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rkrepro", "status", "--watch", "--interval", "0.2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    seen = ""
    deadline = time.monotonic() + 120
    while seen.count("Campaign progress") < 2 and time.monotonic() < deadline:
        seen += proc.stdout.readline()  # type: ignore[union-attr]
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert seen.count("Campaign progress") >= 2, seen + out + err
    assert proc.returncode == 0 and "Traceback" not in err, err
