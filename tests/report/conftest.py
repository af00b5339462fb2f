"""The report tests' store, filled once for the package, and their isolation from the user's
caches and environment."""

from __future__ import annotations

import pytest
from helpers_store import filled_store

from rkrepro import report as reporting


@pytest.fixture(scope="package")
def store(tmp_path_factory) -> tuple[str, dict[str, list[str]]]:
    """``(uri, run ids per cell key)`` of a SQLite MLflow store holding ``RUNS``."""
    return filled_store(tmp_path_factory)


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    """Parameter-count cache and tracking env of the tests stay out of the user's."""
    monkeypatch.setenv(reporting.CACHE_DIR_ENV, str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RKREPRO_TABLES_DIR", raising=False)
