"""``rkrepro status`` and the cell states of :mod:`rkrepro.status`, read back from real stores:
the paper's cells written through the MLflow client (``helpers_store.py``), and a shortened run
trained for real (``helpers_workspace.py``)."""

from __future__ import annotations

import json
import subprocess
import sys

import helpers_workspace as wsh
import pytest
from helpers_store import R20_V, fill
from typer.testing import CliRunner

from rkrepro import paper, status
from rkrepro.cli.app import app

HIDDEN, MARK = wsh.HIDDEN, wsh.MARK


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, dict[str, list[str]]]:
    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    return uri, fill(uri)


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
