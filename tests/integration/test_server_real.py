"""Tracking against a real ``mlflow server`` (SQLite and PostgreSQL backends) on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import helpers_workspace as hw
import pytest
import services
from services import real_env

pytestmark = pytest.mark.integration


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "rkrepro", *args]


def _run_args(uri: str, epochs: int) -> list[str]:
    return _cmd("run", "tiny", "--row", "bc-k4", "--variant", "original", "--no-share",
                "--epochs", str(epochs), "--device", "cpu", "--tracking-uri", uri)  # fmt: skip


def _epochs(uri: str) -> tuple[str, list[int], int]:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    (run,) = [r for e in c.search_experiments() for r in c.search_runs([e.experiment_id])]
    steps = [m.step for m in c.get_metric_history(run.info.run_id, "test_error")]
    params = len(c.get_metric_history(run.info.run_id, "params_paper"))
    return run.info.status, sorted(steps), params


def test_server_outage_is_said_at_once_and_the_rerun_logs_every_epoch_once(
    sqlite_server, tmp_path: Path
) -> None:
    env = real_env(hw.make_workspace(tmp_path, n_train=512))
    uri = sqlite_server.uri
    proc = subprocess.Popen(_run_args(uri, 3), env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    hw.wait_for_epoch(
        tmp_path / "runs", 1, lambda: proc.poll() is None, 180, lambda: proc.stdout.read()
    )
    services.kill_mlflow(sqlite_server)
    killed = time.monotonic()
    try:
        out, _ = proc.communicate(timeout=90)  # bounded: MLflow's retries are capped
    finally:
        services.restart_mlflow(sqlite_server)
    waited = time.monotonic() - killed
    assert proc.returncode != 0, out
    assert "unreachable" in out.lower() or "connection" in out.lower(), out
    assert "Traceback" not in out, out
    print(f"[outage noticed and exited in {waited:.1f} s]", file=sys.stderr)
    rerun = subprocess.run(_run_args(uri, 3), env=env, cwd=tmp_path, capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "resum" in rerun.stdout.lower(), rerun.stdout
    assert _epochs(uri) == ("FINISHED", [1, 2, 3], 1)  # every epoch once; params once


def test_report_status_list_against_a_postgresql_backed_server(
    postgres_server, tmp_path: Path
) -> None:
    assert postgres_server.env["_BACKEND"].startswith("postgresql+psycopg2://")  # README's form
    env = real_env(hw.make_workspace(tmp_path))
    uri = postgres_server.uri
    first = subprocess.run(_run_args(uri, 1), env=env, cwd=tmp_path, capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert first.returncode == 0, first.stdout + first.stderr
    assert _epochs(uri) == ("FINISHED", [1], 1)
    report = ("report", "tiny", "--tracking-uri", uri, "--out", str(tmp_path / "r.md"))
    for args in (("status", "--tracking-uri", uri), ("list",), report):
        done = subprocess.run(_cmd(*args), env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, (args, done.stdout + done.stderr)
        assert "Traceback" not in done.stderr
