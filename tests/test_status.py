"""``rkrepro status`` and the cell states of :mod:`rkrepro.status`, read back from real stores:
the paper's cells written through the MLflow client (``helpers_store.py``), and a shortened run
trained for real (``helpers_workspace.py``)."""

from __future__ import annotations

import json
import subprocess
import sys

import helpers_workspace as wsh
import pytest
from helpers_store import R20_V, filled_store
from typer.testing import CliRunner

from rkrepro import paper, status
from rkrepro.cli.app import app

HIDDEN, MARK = wsh.HIDDEN, wsh.MARK


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, dict[str, list[str]]]:
    return filled_store(tmp_path_factory)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch):
    """The tracking and tables environment of the tests stays out of the user's."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RKREPRO_TABLES_DIR", raising=False)


def _invoke(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "400"})


def test_cli_status_lists_states_and_run_ids(store):
    uri, ids = store
    result = _invoke("status", "table4", "--format", "json", "--tracking-uri", uri)
    assert result.exit_code == 0, result.output
    records = {r["key"]: r for r in json.loads(result.output)}
    assert len(records) == 24
    original = records["table4/resnet-20/original/noshare"]
    assert original["label"] == "done (3 seeds)"
    assert [r["run_id"] for r in original["runs"]] == ids["table4/resnet-20/original/noshare"]
    assert records["table4/resnet-20/RKNet-3x1_2x1_2x1/noshare"]["state"] == "running"
    assert records["table4/resnet-32/original/noshare"]["label"] == "failed (1 killed)"
    assert records["table4/resnet-44/original/noshare"]["state"] == status.NOT_STARTED
    rich = _invoke("status", "table4", "--tracking-uri", uri)
    assert rich.exit_code == 0 and ids[f"table4/resnet-20/{R20_V}/share"][0] in rich.output


def test_cell_status_map_needs_neither_mlflow_nor_torch(store):
    uri, _ = store
    code = (
        "import json, sys\n"
        "from rkrepro.status import cell_status_map\n"
        "import rkrepro.cli.report\n"
        f"result = cell_status_map({uri!r}, ['table4', 'table3'])\n"
        "assert 'mlflow' not in sys.modules and 'torch' not in sys.modules\n"
        "print(json.dumps(result))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    labels = json.loads(done.stdout)
    assert labels["table4/resnet-20/original/noshare"] == "done (3 seeds)"
    assert labels["table4/resnet-32/original/noshare"] == "failed (1 killed)"
    assert labels["table3/densenet-121/original/noshare"] == "done (1 seed)"
    assert "table4/resnet-32/RKNet-1x5_1x4_1x4/noshare" not in labels  # shortened only
    cells = {c.key for c in paper.all_cells(paper.load_tables())}
    assert set(labels) <= cells  # status keys are Cell.key


# --------------------------------------------------------------------------------------------
# A shortened run is never invisible.


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, str]:
    """One shortened run of the tiny table's original, trained for real on CPU."""
    pytest.importorskip("torch")
    return wsh.shortened_run_workspace(tmp_path_factory)


def _invoke_in(env: dict[str, str], *args: str):
    return wsh.invoke(env, *args)


def test_status_says_a_shortened_run_is_hidden_and_marks_it_when_shown(workspace):
    hidden = _invoke_in(workspace, "status", "tiny")
    assert hidden.exit_code == 0, hidden.output
    assert HIDDEN in hidden.stdout and "(+1 shortened hidden)" in hidden.stdout
    shown = _invoke_in(workspace, "status", "tiny", "--include-shortened")
    assert f"{MARK} done (1 seed)" in shown.stdout
    assert "hidden" not in shown.stdout


# --------------------------------------------------------------------------------------------
# A running run's progress, and a run whose process is gone.

REPO = wsh.Path(__file__).resolve().parent.parent


def _training(root, env: dict[str, str], epochs: int) -> subprocess.Popen:
    """``rkrepro run`` of the tiny table's original as a real process, shortened to ``epochs``
    (and 64 images, so an epoch takes well under a second)."""
    import os

    full = {**os.environ, **env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    full.pop("MLFLOW_TRACKING_URI", None)
    args = ["run", "tiny", "--row", "bc-k4", "--variant", "original", "--no-share"]
    args += ["--epochs", str(epochs), "--train-subset", "64", "--device", "cpu"]
    return subprocess.Popen(
        [sys.executable, "-m", "rkrepro", *args],
        cwd=root,
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _status_json(env: dict[str, str]) -> dict:
    result = wsh.invoke(env, "status", "tiny", "--include-shortened", "--format", "json")
    assert result.exit_code == 0, result.output
    (record,) = [r for r in json.loads(result.stdout) if r["model"] == "original"]
    return record


@pytest.mark.fault
def test_status_shows_progress_and_a_killed_process_as_stale_with_its_resume_command(tmp_path):
    """A run trains (status: epoch/epochs, images/s, ETA); `kill -9` of its process leaves it
    RUNNING in MLflow, which status calls stale with the command that resumes it: the same
    configuration, which its dry run finds to resume."""
    from mlflow.tracking import MlflowClient

    env = wsh.make_workspace(tmp_path)
    template = tmp_path / "template.db"
    MlflowClient(f"sqlite:///{template}").search_experiments()
    wsh.new_store(template, tmp_path / "runs")
    process = _training(tmp_path, env, epochs=400)
    try:
        deadline = wsh.time.monotonic() + 180
        progress = None
        while wsh.time.monotonic() < deadline and process.poll() is None:
            runs_of_cell = _status_json(env)["runs"]
            progress = runs_of_cell[0].get("progress") if runs_of_cell else None
            if progress and progress["epoch"] >= 2:
                break
            wsh.time.sleep(0.3)
        assert process.poll() is None and progress, process.stdout.read() if process.stdout else ""
        assert progress["epochs"] == 400 and progress["stale"] is False
        assert progress["images_per_s"] > 0 and progress["eta_s"] > 0
        shown = wsh.invoke(env, "status", "tiny", "--include-shortened")
        assert "/400, " in shown.stdout and "images/s, ETA " in shown.stdout, shown.stdout
        assert "stale" not in shown.stdout
    finally:
        process.kill()  # kill -9: the run cannot mark itself KILLED
        process.wait(timeout=30)
    record = _status_json(env)
    (run,) = record["runs"]
    assert run["status"] == "RUNNING" and run["progress"]["stale"] is True
    shown = wsh.invoke(env, "status", "tiny", "--include-shortened")
    assert shown.exit_code == 0, shown.output
    assert "stale (process gone?)" in shown.stdout
    command = next(
        line.strip() for line in shown.stdout.splitlines() if line.strip().startswith("rkrepro ")
    )
    assert command == (
        "rkrepro run tiny --row bc-k4 --variant original --no-share --seed 0 --epochs 400 "
        f"--train-subset 64 --tables-dir {env['RKREPRO_TABLES_DIR']}"
    )
    report = wsh.invoke(env, "report", "tiny", "--include-shortened")
    assert report.exit_code == 0, report.output
    assert "1 run shown as running is stale (process gone?)" in report.stderr
    args = command.split()[1:]
    resumed = wsh.invoke(env, *args, "--device", "cpu", "--dry-run")
    assert resumed.exit_code == 0, resumed.output
    assert "status=resume (running, checkpoint after epoch" in resumed.output, resumed.output


def test_status_says_when_the_default_store_does_not_exist_here(tmp_path, monkeypatch):
    """Started from another folder than the one the runs are in: not 24 silent "not started"
    cells, but a line naming the store it looked for."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RKREPRO_RUNS_DIR")
    result = CliRunner().invoke(app, ["status", "table4"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert f"no MLflow store at {tmp_path / 'runs' / 'mlflow.db'}" in result.stderr
    assert not (tmp_path / "runs").exists()  # looking creates nothing
    given = CliRunner().invoke(
        app, ["status", "table4", "--tracking-uri", f"sqlite:///{tmp_path}/x.db"]
    )
    assert "no MLflow store" not in given.stderr  # a store named on purpose is the user's choice
