"""Reaching a store: bounded waits and one clear line (no password in it) when a server stops
answering, SQLite's lock waited out; and the suite's own guard against reaching a cluster or
server it did not start."""

from __future__ import annotations

import os
import shutil
import sqlite3

import pytest

from rkrepro.errors import TrackingError
from rkrepro.tracking import runs as tracking
from rkrepro.tracking import store

SLURM_COMMANDS = ("srun", "sbatch", "squeue", "scancel", "scontrol", "sinfo")


def test_the_suite_hides_every_slurm_command_and_variable() -> None:
    assert all(shutil.which(name) is None for name in SLURM_COMMANDS)
    assert not any(name.startswith("SLURM_") for name in os.environ)
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert shutil.which("git") is not None or shutil.which("python3") is not None  # PATH works


def test_a_server_store_bounds_mlflow_http_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in store.HTTP_LIMITS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")  # the user's own choice wins
    tracking.Tracker("http://127.0.0.1:9")
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"


def test_a_server_that_stops_answering_is_one_line_that_says_what_to_do() -> None:
    from mlflow.exceptions import MlflowException

    uri = "http://127.0.0.1:9"
    with pytest.raises(TrackingError) as caught, store.wrap_errors(uri):
        raise MlflowException(
            "API request to http://127.0.0.1:9/api/2.0/mlflow/runs/log-batch failed with "
            "exception HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded\n"
            "more detail"
        )
    message = str(caught.value)
    assert "is unreachable" in message and "rerun the same command" in message
    assert "\n" not in message


def test_a_password_in_the_uri_never_reaches_a_message() -> None:
    from mlflow.exceptions import MlflowException

    uri = "http://user:secret@127.0.0.1:9"
    with pytest.raises(TrackingError) as caught, store.wrap_errors(uri):
        raise MlflowException("Max retries exceeded")
    assert "secret" not in str(caught.value) and "user:***@127.0.0.1:9" in str(caught.value)
    with pytest.raises(TrackingError) as caught, store.wrap_errors(uri, "cannot read"):
        raise MlflowException("RESOURCE_DOES_NOT_EXIST: no such run\ndetail")
    assert (
        str(caught.value)
        == "cannot read http://user:***@127.0.0.1:9: RESOURCE_DOES_NOT_EXIST: no such run"
    )
    shown = store.shown_uri("postgresql+psycopg2://mlflow:p/w:d@db:5432/mlflow")
    assert shown == "postgresql+psycopg2://mlflow:***@db:5432/mlflow"
    assert store.shown_uri("sqlite:////tmp/a:b@c/mlflow.db") == "sqlite:////tmp/a:b@c/mlflow.db"


# --------------------------------------------------------------------------------------------
# SQLite: lock contention is waited out, not lost.


def test_locked_calls_are_retried_then_succeed(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.exceptions import MlflowException

    monkeypatch.setattr(store, "LOCK_BACKOFF_S", 0.001)
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            try:
                raise sqlite3.OperationalError("database is locked")
            except sqlite3.OperationalError as cause:
                raise MlflowException("(sqlite3.OperationalError) database is locked") from cause
        return "ok"

    assert store.retry_locked(flaky) == "ok" and len(calls) == 3
    with pytest.raises(ValueError):  # anything else is not retried
        store.retry_locked(lambda: (_ for _ in ()).throw(ValueError("no")))


@pytest.mark.bad_input
def test_a_password_inside_mlflows_own_message_is_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow names the URL it failed on, password and all; any such message is shown with
    ``***`` (a message without the markers of an unreachable server included)."""
    import socket

    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    uri = f"http://user:p%40ss-word@127.0.0.1:{port}/"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(MlflowException) as raised:
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    said = raised.value.message
    assert "p%40ss-word" in said  # what MLflow itself says
    assert "ss-word" not in store.hide_passwords(said, uri)
    assert "user:***@127.0.0.1" in store.hide_passwords(said)  # even not knowing the URI
    with pytest.raises(TrackingError) as caught, store.wrap_errors(uri):
        raise MlflowException(said.replace("Max retries exceeded", "failed"))
    assert "ss-word" not in str(caught.value) and "user:***@" in str(caught.value)


@pytest.mark.bad_input
def test_a_store_lock_planted_as_a_link_is_refused(tmp_path) -> None:
    from rkrepro.safe_write import PlantedLink

    victim = tmp_path / "victim"
    (tmp_path / "mlflow.db.init-lock").symlink_to(victim)
    with pytest.raises(PlantedLink), store.creation_lock(tmp_path / "mlflow.db"):
        pass
    assert not victim.exists()


def test_a_settled_store_opens_while_another_process_holds_its_creation_lock(tmp_path) -> None:
    """Parallel jobs on a store that exists start together: only a store still being created
    waits for the creation lock (held here by a real second process)."""
    import subprocess
    import sys
    import time

    db = tmp_path / "mlflow.db"
    assert not store.settled(db) and not db.exists()  # asking creates nothing
    store.client(f"sqlite:///{db}")
    assert store.settled(db)
    half = tmp_path / "half.db"  # tables but no default experiment: being created
    sqlite3.connect(half).execute("CREATE TABLE experiments (experiment_id INTEGER)")
    assert not store.settled(half)
    locks = [str(db) + ".init-lock", str(half) + ".init-lock"]
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            "for lock in sys.argv[1:]:\n"
            "    fcntl.flock(os.open(lock, os.O_RDWR | os.O_CREAT), fcntl.LOCK_EX)\n"
            "print('held', flush=True); time.sleep(60)",
            *locks,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        started = time.monotonic()
        store.client(f"sqlite:///{db}").search_experiments()
        assert time.monotonic() - started < 10  # no wait for the holder's 60 s
        waited = pytest.raises(TrackingError, match="held .* while opening")
        with waited, store.creation_lock(half, wait_s=0.5):
            pass
    finally:
        holder.kill()
        holder.wait()
