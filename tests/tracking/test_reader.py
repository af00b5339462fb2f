"""Reading runs back: both readers (the read-only ``sqlite3`` query and MLflow's client) give the
same records from one store, and neither changes MLflow's process-wide tracking URI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers_store import RUNS, fill

from rkrepro.tracking import reader


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, dict[str, list[str]]]:
    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    return uri, fill(uri)


def test_sqlite_fast_path_agrees_with_mlflow(store):
    uri, _ = store
    tables = ["table1", "table3", "table4", "table2"]
    fast = reader.fetch_runs(uri, tables, reader="sqlite")
    slow = reader.fetch_runs(uri, tables, reader="mlflow")
    assert fast == slow and len(fast) == len(RUNS)
    assert [dict(r.metrics) for r in fast] == [dict(r.metrics) for r in slow]
    assert reader.fetch_runs("sqlite:///" + str(Path(uri[10:]).parent / "none.db"), tables) == []


def test_reading_through_mlflow_leaves_the_process_wide_tracking_uri_alone(store, monkeypatch):
    """A later run in the same process (a test, a notebook) must not write to the store that
    an earlier read named."""
    import mlflow

    uri, _ = store
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before = mlflow.get_tracking_uri()
    assert reader.fetch_runs(uri, ["table4"], reader="mlflow")
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert mlflow.get_tracking_uri() == before != uri


def test_metric_history_is_each_epochs_test_error(store):
    uri, ids = store
    history = reader.metric_history(uri)
    assert history(ids["table4/resnet-20/original/noshare"][1]) == [(1, 20.0), (2, 10.0), (3, 7.2)]
