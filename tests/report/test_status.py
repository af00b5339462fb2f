"""The store readers of :mod:`rkrepro.status` and ``rkrepro status`` on the report tests' store:
the sqlite3 fast path agrees with mlflow, cell states need neither mlflow nor torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from rkrepro import status, targets

from .helpers_store import R20_V, RUNS, invoke


def test_cli_status_lists_states_and_run_ids(store):
    uri, ids = store
    result = invoke("status", "table4", "--format", "json", "--tracking-uri", uri)
    assert result.exit_code == 0, result.output
    records = {r["key"]: r for r in json.loads(result.output)}
    assert len(records) == 24
    original = records["table4/resnet-20/original/noshare"]
    assert original["label"] == "done (3 seeds)"
    assert [r["run_id"] for r in original["runs"]] == ids["table4/resnet-20/original/noshare"]
    assert records["table4/resnet-20/RKNet-3x1_2x1_2x1/noshare"]["state"] == "running"
    assert records["table4/resnet-32/original/noshare"]["label"] == "failed (1 killed)"
    assert records["table4/resnet-44/original/noshare"]["state"] == status.NOT_STARTED
    rich = invoke("status", "table4", "--tracking-uri", uri)
    assert rich.exit_code == 0 and ids[f"table4/resnet-20/{R20_V}/share"][0] in rich.output


# --------------------------------------------------------------------------------------------
# The sqlite3 fast path.


def test_sqlite_fast_path_agrees_with_mlflow(store):
    uri, _ = store
    tables = ["table1", "table3", "table4", "table2"]
    fast = status.fetch_runs(uri, tables, reader="sqlite")
    slow = status.fetch_runs(uri, tables, reader="mlflow")
    assert fast == slow and len(fast) == len(RUNS)
    assert [dict(r.metrics) for r in fast] == [dict(r.metrics) for r in slow]
    assert status.fetch_runs("sqlite:///" + str(Path(uri[10:]).parent / "none.db"), tables) == []


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
    cells = {c.key for c in targets.all_cells(targets.load_tables())}
    assert set(labels) <= cells  # status keys are Cell.key


def test_default_tracking_uri(monkeypatch, tmp_path):
    monkeypatch.setenv("RKREPRO_RUNS_DIR", str(tmp_path))
    assert status.default_tracking_uri() == f"sqlite:///{tmp_path}/mlflow.db"
    assert status.sqlite_path(status.default_tracking_uri()) == tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert status.default_tracking_uri() == "http://tracking:5000"
    assert status.sqlite_path("http://tracking:5000") is None
