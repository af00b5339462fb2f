"""Where runs and data live: one rule for the writer (training) and the readers (list, report,
status).

Free of torch and mlflow, so the fast commands can use it.
"""

from __future__ import annotations

import os
from pathlib import Path

RUNS_DIR_ENV = "RKREPRO_RUNS_DIR"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
DATA_DIR_ENV = "RKREPRO_DATA_DIR"


def runs_dir() -> Path:
    """``$RKREPRO_RUNS_DIR``, else ``./runs``: the local store, artifacts and checkpoints."""
    return Path(os.environ.get(RUNS_DIR_ENV) or "runs").absolute()


def default_data_dir() -> Path:
    """``$RKREPRO_DATA_DIR``, else ``./data``: where the data sets are read from."""
    return Path(os.environ.get(DATA_DIR_ENV) or "data")


def local_store_uri() -> str:
    """The embedded default: an SQLite store under :func:`runs_dir`, no server needed."""
    return f"sqlite:///{runs_dir() / 'mlflow.db'}"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else :func:`local_store_uri`."""
    return uri or os.environ.get(TRACKING_URI_ENV) or local_store_uri()


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///FILE`` URI; ``None`` for any other kind of store.

    SQLAlchemy spelling: three slashes then a relative path, four for an absolute one.
    """
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None
    path = tracking_uri[len(prefix) :].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path)
