"""The report tests' store, filled once for the package, and their isolation from the user's
environment."""

from __future__ import annotations

import pytest
from helpers_store import filled_store


@pytest.fixture(scope="package")
def store(tmp_path_factory) -> tuple[str, dict[str, list[str]]]:
    """``(uri, run ids per cell key)`` of a SQLite MLflow store holding ``RUNS``."""
    return filled_store(tmp_path_factory)


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    """The tests' tracking env stays out of the user's."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RKREPRO_TABLES_DIR", raising=False)
