"""The report tests' store, filled once for the package, and their isolation from the user's
caches and environment."""

from __future__ import annotations

import pytest

from rkrepro import report as reporting

from .helpers_report import fill


@pytest.fixture(scope="package")
def store(tmp_path_factory) -> tuple[str, dict[str, list[str]]]:
    """``(uri, run ids per cell key)`` of a SQLite MLflow store holding ``RUNS``."""
    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    return uri, fill(uri)


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    """Parameter-count cache and tracking env of the tests stay out of the user's."""
    monkeypatch.setenv(reporting.CACHE_DIR_ENV, str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RKREPRO_TABLES_DIR", raising=False)
