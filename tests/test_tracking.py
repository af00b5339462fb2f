"""Tracking against servers: bounded waits and one clear line when a server stops answering;
and the suite's own guard against reaching a cluster or server it did not start."""

from __future__ import annotations

import os
import shutil

import pytest

from rkrepro import tracking
from rkrepro.errors import TrackingError

SLURM_COMMANDS = ("srun", "sbatch", "squeue", "scancel", "scontrol", "sinfo")


def test_the_suite_hides_every_slurm_command_and_variable() -> None:
    assert all(shutil.which(name) is None for name in SLURM_COMMANDS)
    assert not any(name.startswith("SLURM_") for name in os.environ)
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert shutil.which("git") is not None or shutil.which("python3") is not None  # PATH works


def test_a_server_store_bounds_mlflow_http_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in tracking.HTTP_LIMITS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")  # the user's own choice wins
    tracking.Tracker("http://127.0.0.1:9")
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"


def test_a_server_that_stops_answering_is_one_line_that_says_what_to_do() -> None:
    from mlflow.exceptions import MlflowException

    uri = "http://127.0.0.1:9"
    with pytest.raises(TrackingError) as caught, tracking.wrap_errors(uri):
        raise MlflowException(
            "API request to http://127.0.0.1:9/api/2.0/mlflow/runs/log-batch failed with "
            "exception HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded\n"
            "more detail"
        )
    message = str(caught.value)
    assert "is unreachable" in message and "rerun the same command" in message
    assert "\n" not in message
