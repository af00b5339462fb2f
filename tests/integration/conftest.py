"""Session fixtures that start the real services the integration tests use (services.py).

Each skips with the reason when its binaries are not installed here; anything else that goes
wrong in a bring-up is an error, not a skip.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import services  # noqa: E402

REPO = HERE.parent.parent
TIMINGS: dict[str, float] = {}


def _up(kind: str) -> Iterator[services.Service]:
    started = time.monotonic()
    try:
        with services.running(kind) as svc:
            TIMINGS[kind] = time.monotonic() - started
            print(f"\n[{kind} up in {TIMINGS[kind]:.1f} s]", file=sys.stderr)
            yield svc
    except services.Unavailable as error:
        pytest.skip(f"{kind}: {error}")


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[services.Service]:
    yield from _up("slurm")


@pytest.fixture(scope="session")
def sqlite_server() -> Iterator[services.Service]:
    yield from _up("sqlite")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[services.Service]:
    pytest.importorskip("psycopg2", reason="pip install 'rkrepro[postgres]' (psycopg2-binary)")
    yield from _up("postgres")


@pytest.fixture(scope="session")
def store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite store, migrated once: each test's store starts as a copy (a new
    store's migrations take seconds per ``rkrepro run``)."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("store-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path
