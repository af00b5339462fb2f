"""What runs have trained, read back from the store: each run's epoch times and where it ran
(its device tag and processes), for the campaign's hours spent. A local store is read with one
read-only query; a server through the MLflow client with rkrepro's HTTP bounds.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rkrepro.errors import TrackingError
from rkrepro.paths import sqlite_path
from rkrepro.tracking import keys as mlflow_keys
from rkrepro.tracking import store


@dataclass(frozen=True)
class Spent:
    """What one run has trained: its epochs' seconds, and where (device tag, processes)."""

    seconds: float
    epochs: int
    device: str
    processes: int

    @property
    def on_cpu(self) -> bool:
        return self.device.strip().lower().startswith("cpu")

    @property
    def device_hours(self) -> float:
        return self.seconds * self.processes / 3600


def spent_by_run(tracking_uri: str, run_ids: Sequence[str]) -> dict[str, Spent]:
    """Run id -> what it has trained, read from the store (a local store read-only)."""
    if not run_ids:
        return {}
    path = sqlite_path(tracking_uri)
    if path is not None:
        return _spent_sqlite(path, run_ids) if path.exists() else {}
    return _spent_mlflow(tracking_uri, run_ids)


def _spent(series: Iterable[tuple[int, float]], tags: dict[str, str]) -> Spent:
    per_epoch: dict[int, float] = {}
    for step, value in series:  # an epoch logged twice (a retried write) counts once
        if value == value:
            per_epoch[step] = max(per_epoch.get(step, 0.0), value)
    world = tags.get(mlflow_keys.TAG_WORLD_SIZE, "1")
    return Spent(
        sum(per_epoch.values()),
        len(per_epoch),
        tags.get(mlflow_keys.TAG_DEVICE, ""),
        int(world) if world.isdigit() and int(world) > 0 else 1,
    )


def _spent_sqlite(path, run_ids: Sequence[str]) -> dict[str, Spent]:
    try:
        con = store.connect_read_only(path)
    except sqlite3.Error as error:
        raise TrackingError(f"cannot open MLflow store {path}: {error}") from None
    series: dict[str, list[tuple[int, float]]] = {}
    tags: dict[str, dict[str, str]] = {}
    try:
        for start in range(0, len(run_ids), 500):  # SQLite's limit on parameters
            chunk = list(run_ids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            rows = con.execute(
                "SELECT run_uuid, step, value FROM metrics WHERE key = ? AND is_nan = 0 AND "
                f"run_uuid IN ({marks})",
                [mlflow_keys.M_EPOCH_SECONDS, *chunk],
            )
            for run_id, step, value in rows:
                series.setdefault(run_id, []).append((int(step), float(value)))
            rows = con.execute(
                f"SELECT run_uuid, key, value FROM tags WHERE key IN (?, ?) AND run_uuid IN "
                f"({marks})",
                [mlflow_keys.TAG_DEVICE, mlflow_keys.TAG_WORLD_SIZE, *chunk],
            )
            for run_id, key, value in rows:
                tags.setdefault(run_id, {})[key] = value
    except sqlite3.Error as error:
        raise TrackingError(f"cannot read MLflow store {path}: {error}") from None
    finally:
        con.close()
    return {run_id: _spent(series.get(run_id, ()), tags.get(run_id, {})) for run_id in run_ids}


def _spent_mlflow(uri: str, run_ids: Sequence[str]) -> dict[str, Spent]:
    store.bound_http_calls(uri)
    client = store.client(uri)
    out = {}
    with store.wrap_errors(uri, "cannot read MLflow store"):
        for run_id in run_ids:
            history = client.get_metric_history(run_id, mlflow_keys.M_EPOCH_SECONDS)
            tags = client.get_run(run_id).data.tags
            out[run_id] = _spent(((m.step, m.value) for m in history), tags)
    return out
