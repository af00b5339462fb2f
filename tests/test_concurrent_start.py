"""A campaign's first minute: its parallel jobs start at once on a store that does not exist yet.

Each ``rkrepro run`` creates and migrates a missing SQLite store when it opens it; two doing so
at once broke one of them in MLflow's schema migration (``CommandError: Online migration
expected to match one row``, or ``duplicate column name``). Real processes, a fresh store each
round, several rounds (the race needs no luck: a store's migrations take seconds).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import helpers_workspace as ws
import pytest

REPO = Path(__file__).resolve().parent.parent
ROUNDS = 3
RUN = ("run", "tiny", "--row", "bc-k4", "--variant", "original", "--no-share", "--epochs", "1")


@pytest.mark.fault
def test_concurrent_first_starts_on_a_new_store_all_succeed(tmp_path: Path) -> None:
    for attempt in range(ROUNDS):
        root = tmp_path / f"round{attempt}"
        env = {**os.environ, **ws.make_workspace(root, n_train=10, n_test=10)}
        env.update({"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
        env.pop("MLFLOW_TRACKING_URI", None)
        assert not (root / "runs").exists()
        jobs = [
            subprocess.Popen(
                [sys.executable, "-m", "rkrepro", *RUN, "--device", "cpu", "--seed", str(seed)],
                env=env,
                cwd=root,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for seed in (0, 1)
        ]
        for job in jobs:
            out, err = job.communicate(timeout=600)
            assert job.returncode == 0, (attempt, out[-2000:], err[-3000:])
            assert "Traceback" not in err and "migration" not in err.lower(), err[-3000:]
            assert "INFO" not in err, err[-3000:]  # MLflow's store-creation lines are quiet
        with sqlite3.connect(root / "runs" / "mlflow.db") as con:
            states = con.execute("SELECT status FROM runs ORDER BY status").fetchall()
        assert states == [("FINISHED",), ("FINISHED",)], (attempt, states)
