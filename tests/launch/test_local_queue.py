"""The local queue (:mod:`rkrepro.launch.local_queue`): real parallel jobs on one SQLite store."""

from __future__ import annotations

import sqlite3
import threading
import time

import helpers_cifar as h
import pytest
from helpers_launch import series, start_run
from helpers_run import VARIANT, Workspace

from rkrepro.tracking import keys as mlflow_keys
from rkrepro.tracking import store


@pytest.mark.fault
def test_four_concurrent_jobs_lose_nothing(ws: Workspace) -> None:
    """4 real subprocesses write 4 runs to one SQLite store at the same time."""
    h.write_random_cifar10(ws.data, n_train=640, n_test=64)  # epochs outlast the start-up
    epochs = 6
    proc = start_run(
        ws,
        *("--variant", "original", "--variant", VARIANT, "--no-share", "--seeds", "2"),
        *("--epochs", str(epochs), "--cpu-jobs", "4"),
    )
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output
    assert "4/4 jobs done" in output
    runs = ws.runs_of()
    assert len(runs) == 4
    for run in runs:
        assert run.info.status == "FINISHED", run.info
        for name in (
            mlflow_keys.M_TRAIN_LOSS,
            mlflow_keys.M_TEST_ERROR,
            mlflow_keys.M_LR,
            mlflow_keys.M_TRAIN_ERROR,
        ):
            steps = [s for s, _ in series(ws, run.info.run_id, name)]
            assert steps == list(range(1, epochs + 1)), (name, steps)
        assert mlflow_keys.M_FINAL_TEST_ERROR in run.data.metrics
        assert run.data.params["protocol.epochs"] == str(epochs)
    # They did overlap: every run started before any of them ended.
    assert max(r.info.start_time for r in runs) < min(r.info.end_time for r in runs)
    logs = sorted(p.name for p in (ws.runs / "logs" / "tiny" / "bc-k4").glob("*.log"))
    assert len(logs) == 4 and all(
        "finished" in (ws.runs / "logs" / "tiny" / "bc-k4" / n).read_text() for n in logs
    )


@pytest.mark.fault
def test_a_writer_waits_for_a_held_lock(ws: Workspace) -> None:
    db = ws.runs / "mlflow.db"
    client = store.client(f"sqlite:///{db}")
    client.search_experiments()  # the store is open before another process locks it
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    threading.Timer(1.0, lambda: holder.execute("COMMIT")).start()
    started = time.monotonic()
    exp = client.create_experiment("locked-out")
    assert time.monotonic() - started >= 0.9 and client.get_experiment(exp).name == "locked-out"
    holder.close()
