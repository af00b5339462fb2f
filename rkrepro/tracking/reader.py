"""Reading runs back from a store: the records that ``status``, ``report`` and ``list`` work on,
the metric histories the report's plots draw, and the experiments ``rkrepro ui`` links to.

Two readers return the same :class:`RunRecord` list: a read-only ``sqlite3`` query of a local
``sqlite:///`` store (no mlflow import, so ``rkrepro list`` answers instantly) and MLflow's client
for every other URI (servers, databases). Both fill the same records, and tests check that they
agree on the same store, so a local report need not pay for importing mlflow. Neither sets
MLflow's process-wide tracking URI: each read names its store.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rkrepro.errors import TrackingError
from rkrepro.paper import readings
from rkrepro.paths import resolve_tracking_uri, sqlite_path
from rkrepro.textsafe import one_line
from rkrepro.tracking import keys as mlflow_keys
from rkrepro.tracking import store

if TYPE_CHECKING:
    from mlflow.entities import Run

    from rkrepro.spec import ModelSpec

Reader = Literal["auto", "sqlite", "mlflow"]

# Metrics a report needs; both readers return only these (latest value of each).
REPORT_METRICS = (
    mlflow_keys.M_FINAL_TEST_ERROR,
    mlflow_keys.M_BEST_TEST_ERROR,
    mlflow_keys.M_FINAL_TEST_TOP5,
    mlflow_keys.M_PARAMS_PAPER,
    mlflow_keys.M_PARAMS_TOTAL,
)
_CELL_TAGS = (
    mlflow_keys.TAG_TABLE,
    mlflow_keys.TAG_ROW,
    mlflow_keys.TAG_MODEL,
    mlflow_keys.TAG_SHARE,
    mlflow_keys.TAG_SEED,
    mlflow_keys.TAG_PROTOCOL,
    mlflow_keys.TAG_PRECISION,
    mlflow_keys.TAG_SUPERSEDED,  # a run replaced by a newer one is not read at all
    *(readings.TAG_PREFIX + name for name in readings.READINGS),
)


# Params that say how short a shortened run was (``protocol.*`` of the run's config).
P_EPOCHS = "protocol.epochs"
P_TRAIN_SUBSET = "protocol.train_subset"
_SIZE_PARAMS = (P_EPOCHS, P_TRAIN_SUBSET)


@dataclass(frozen=True)
class RunRecord:
    """One MLflow run of a cell: its identity tags, MLflow status and latest metric values."""

    run_id: str
    status: str
    table: str
    row: str
    model: str
    share: bool
    seed: str
    protocol: str
    start_time: int  # ms since the epoch; orders reruns of a seed
    metrics: Mapping[str, float] = field(default_factory=dict, compare=False, hash=False)
    # Runs logged before the tag existed all trained in fp32 (no GPU had run bf16 yet).
    precision: str = mlflow_keys.PRECISION_FP32
    # (name, value) of the run's rkrepro.reading.* tags; empty for runs logged before readings
    # existed, which :meth:`resolved_readings` resolves to what they were trained as.
    readings: tuple[tuple[str, str], ...] = ()

    @property
    def legacy(self) -> bool:
        """Records no readings: trained by a version of rkrepro before readings, and so before the
        Torch-exact protocol."""
        return not self.readings

    def resolved_readings(self, spec: ModelSpec | None = None) -> dict[str, str]:
        tags = {readings.TAG_PREFIX + k: v for k, v in self.readings}
        tags[mlflow_keys.TAG_PRECISION] = self.precision
        return readings.from_tags(tags, spec)

    experiment_id: str = field(default="", compare=False)  # for links into the MLflow UI
    epochs: int | None = field(default=None, compare=False)  # as trained (shortened runs)
    train_subset: int | None = field(default=None, compare=False)  # images; None: all

    @property
    def size_text(self) -> str:
        """``2 epochs, 512 images``: how much a run trained, for shortened numbers."""
        parts = [f"{self.epochs} epochs"] if self.epochs else []
        return ", ".join(parts + ([f"{self.train_subset} images"] if self.train_subset else []))

    @property
    def cell_id(self) -> tuple[str, str, str, bool]:
        """(table, row, model, share): what a :class:`~rkrepro.paper.Cell` is made of."""
        return (self.table, self.row, self.model, self.share)

    def metric(self, name: str) -> float | None:
        value = self.metrics.get(name)
        return None if value is None or math.isnan(value) else value


def _record(
    run_id: str,
    status: str,
    start: object,
    tags: Mapping[str, object],
    metrics,
    experiment_id: object = "",
    params: Mapping[str, object] | None = None,
):
    """A RunRecord from raw values, or ``None`` when the run lacks the cell tags."""
    values = {key: tags.get(key) for key in _CELL_TAGS}
    needed = (mlflow_keys.TAG_TABLE, mlflow_keys.TAG_ROW, mlflow_keys.TAG_MODEL)
    if any(not isinstance(values[key], str) or not values[key] for key in needed):
        return None
    if isinstance(values[mlflow_keys.TAG_SUPERSEDED], str) and values[mlflow_keys.TAG_SUPERSEDED]:
        return None
    # As untrusted as a table file: every string shown later is one line, no control character.
    text = {key: one_line(value) if isinstance(value, str) else "" for key, value in values.items()}
    return RunRecord(
        run_id=one_line(str(run_id)),
        status=one_line(str(status)),
        table=text[mlflow_keys.TAG_TABLE],
        row=text[mlflow_keys.TAG_ROW],
        model=text[mlflow_keys.TAG_MODEL],
        share=text[mlflow_keys.TAG_SHARE].lower() == "true",
        seed=text[mlflow_keys.TAG_SEED],
        protocol=text[mlflow_keys.TAG_PROTOCOL] or mlflow_keys.PROTOCOL_PAPER,
        start_time=int(start) if isinstance(start, int | float) and not math.isnan(start) else 0,
        metrics=metrics,
        precision=text[mlflow_keys.TAG_PRECISION] or mlflow_keys.PRECISION_FP32,
        readings=tuple(
            (name, text[readings.TAG_PREFIX + name])
            for name in readings.READINGS
            if text[readings.TAG_PREFIX + name]
        ),
        experiment_id=one_line(str(experiment_id or "")),
        epochs=_int_param((params or {}).get(P_EPOCHS)),
        train_subset=_int_param((params or {}).get(P_TRAIN_SUBSET)),
    )


def _int_param(value: object) -> int | None:
    if isinstance(value, str) and value.isdigit() and len(value) < 12:
        return int(value)
    return None


def fetch_runs(
    tracking_uri: str | None, table_ids: Iterable[str], reader: Reader = "auto"
) -> list[RunRecord]:
    """Every active run with cell tags in the experiments of ``table_ids``.

    ``auto`` reads a local SQLite file directly and asks mlflow for anything else. A SQLite
    file that does not exist yet holds no runs (and is not created, unlike mlflow would).
    """
    uri = resolve_tracking_uri(tracking_uri)
    table_ids = list(dict.fromkeys(table_ids))
    path = sqlite_path(uri)
    if reader == "sqlite" and path is None:
        raise TrackingError(f"{store.shown_uri(uri)} is not a sqlite:/// store")
    if path is not None and not path.exists():
        return []
    if path is not None and reader in ("auto", "sqlite"):
        return _fetch_sqlite(path, table_ids)
    return _fetch_mlflow(uri, table_ids)


def _fetch_sqlite(path: Path, table_ids: list[str]) -> list[RunRecord]:
    """One query per kind of data, on a read-only connection; never imports mlflow."""
    names = [mlflow_keys.experiment_name(t) for t in table_ids]
    if not names:
        return []
    try:
        con = store.connect_read_only(path)
    except sqlite3.Error as error:
        raise TrackingError(f"cannot open MLflow store {path}: {error}") from None
    try:
        marks = ",".join("?" * len(names))
        runs_sql = (
            "SELECT r.run_uuid, r.status, r.start_time, e.name, e.experiment_id FROM runs r "
            "JOIN experiments e ON e.experiment_id = r.experiment_id "
            f"WHERE e.name IN ({marks}) AND e.lifecycle_stage = 'active' "
            "AND r.lifecycle_stage = 'active'"
        )
        runs = con.execute(runs_sql, names).fetchall()
        run_filter = f"run_uuid IN (SELECT r.run_uuid FROM ({runs_sql}) r)"
        tags: dict[str, dict[str, str]] = {}
        tag_marks = ",".join("?" * len(_CELL_TAGS))
        tag_sql = f"SELECT run_uuid, key, value FROM tags WHERE key IN ({tag_marks}) AND "
        for run_id, key, value in con.execute(tag_sql + run_filter, [*_CELL_TAGS, *names]):
            tags.setdefault(run_id, {})[key] = value
        params: dict[str, dict[str, str]] = {}
        param_sql = "SELECT run_uuid, key, value FROM params WHERE key IN (?, ?) AND "
        for run_id, key, value in con.execute(param_sql + run_filter, [*_SIZE_PARAMS, *names]):
            params.setdefault(run_id, {})[key] = value
        metrics: dict[str, dict[str, float]] = {}
        metric_marks = ",".join("?" * len(REPORT_METRICS))
        metric_sql = (
            "SELECT run_uuid, key, value, is_nan FROM latest_metrics "
            f"WHERE key IN ({metric_marks}) AND "
        )
        rows = con.execute(metric_sql + run_filter, [*REPORT_METRICS, *names])
        for run_id, key, value, is_nan in rows:
            metrics.setdefault(run_id, {})[key] = math.nan if is_nan else float(value)
    except sqlite3.Error as error:
        raise TrackingError(f"cannot read MLflow store {path}: {error}") from None
    finally:
        con.close()
    records = []
    for run_id, status, start, experiment, experiment_id in runs:
        tag_values, metric_values = tags.get(run_id, {}), metrics.get(run_id, {})
        record = _record(
            run_id, status, start, tag_values, metric_values, experiment_id, params.get(run_id)
        )
        if record is not None and mlflow_keys.experiment_name(record.table) == experiment:
            records.append(record)
    return _sorted(records)


def _fetch_mlflow(uri: str, table_ids: list[str]) -> list[RunRecord]:
    """MLflow's client on ``uri``, one search per table's experiment, every page of it."""
    # Before mlflow: a server that does not answer fails in seconds (not after mlflow's
    # retries), a database URI without its driver in one line (not an ImportError traceback).
    # The same HTTP bounds and lock retries as for writing, unless the user set them.
    records: list[RunRecord] = []
    try:
        with store.wrap_errors(uri, "cannot read MLflow store"):
            client = store.connect(uri, write=False)  # a store MLflow refuses: one line too
            for table_id in table_ids:
                experiment = client.get_experiment_by_name(mlflow_keys.experiment_name(table_id))
                if experiment is None or experiment.lifecycle_stage != "active":
                    continue
                token = None
                while True:
                    page = client.search_runs(
                        [experiment.experiment_id],
                        filter_string=f"tags.`{mlflow_keys.TAG_TABLE}` = '{table_id}'",
                        page_token=token,
                    )
                    records.extend(_records_from_runs(page))
                    token = page.token
                    if not token:
                        break
    except OSError as error:
        shown, reason = store.shown_uri(uri), store.hide_passwords(str(error), uri)
        raise TrackingError(f"cannot reach MLflow store {shown}: {reason}") from None
    return _sorted(records)


def _records_from_runs(runs: Iterable[Run]) -> list[RunRecord]:
    records = []
    for run in runs:
        # A metric logged as NaN is left out: RunRecord.metric reads it as missing either way.
        metrics = {k: float(v) for k, v in run.data.metrics.items() if k in REPORT_METRICS}
        metrics = {k: v for k, v in metrics.items() if v == v}
        sizes = {k: run.data.params[k] for k in _SIZE_PARAMS if k in run.data.params}
        record = _record(
            run.info.run_id,
            run.info.status,
            run.info.start_time,
            run.data.tags,
            metrics,
            run.info.experiment_id,
            sizes,
        )
        if record is not None:
            records.append(record)
    return records


def _sorted(records: list[RunRecord]) -> list[RunRecord]:
    return sorted(records, key=lambda r: (r.table, r.row, r.model, r.share, r.start_time, r.run_id))


# --------------------------------------------------------------------------------------------
# How far a running run is: its latest per-epoch metrics, and the process writing it.

PROGRESS_METRICS = (
    mlflow_keys.M_TEST_ERROR,  # its step is the last epoch logged
    mlflow_keys.M_IMAGES_PER_S,
    mlflow_keys.M_EPOCH_SECONDS,
)
# Run params (the flattened config) that name a run's configuration beyond its tags: what a
# command that resumes it must repeat.
PROGRESS_PARAMS = ("memory_efficient", "sync_bn", "gpu_decode")


@dataclass(frozen=True)
class RunProgress:
    """A run's latest epoch metrics and the process that writes it (for ``status``)."""

    run_id: str
    epoch: int | None = None  # epochs logged (the step of the newest test error)
    images_per_s: float | None = None
    epoch_seconds: float | None = None
    last_logged_ms: int | None = None  # when the newest of these metrics was logged
    process: str = ""  # rkrepro.processes.this_process() of the writer, "" for older runs
    params: Mapping[str, str] = field(default_factory=dict)


def fetch_progress(tracking_uri: str | None, run_ids: Iterable[str]) -> dict[str, RunProgress]:
    """Run id -> :class:`RunProgress` for each of ``run_ids`` (read-only, like
    :func:`fetch_runs`: a local SQLite store without mlflow)."""
    run_ids = list(dict.fromkeys(run_ids))
    if not run_ids:
        return {}
    uri = resolve_tracking_uri(tracking_uri)
    path = sqlite_path(uri)
    if path is not None:
        return _progress_sqlite(path, run_ids) if path.exists() else {}
    return _progress_mlflow(uri, run_ids)


def _progress_record(run_id: str, latest: Mapping[str, tuple[float, int, int]], tags, params):
    """``latest``: metric key -> (value, step, timestamp ms)."""
    epoch = latest.get(mlflow_keys.M_TEST_ERROR)
    speed = latest.get(mlflow_keys.M_IMAGES_PER_S)
    seconds = latest.get(mlflow_keys.M_EPOCH_SECONDS)
    stamps = [int(entry[2]) for entry in latest.values() if entry[2] is not None]
    process = tags.get(mlflow_keys.TAG_PROCESS)
    return RunProgress(
        run_id=run_id,
        epoch=int(epoch[1]) if epoch else None,
        images_per_s=_finite(speed[0]) if speed else None,
        epoch_seconds=_finite(seconds[0]) if seconds else None,
        last_logged_ms=max(stamps) if stamps else None,
        process=process if isinstance(process, str) else "",
        params={k: str(v) for k, v in params.items() if k in PROGRESS_PARAMS},
    )


def _finite(value: object) -> float | None:
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _progress_sqlite(path: Path, run_ids: list[str]) -> dict[str, RunProgress]:
    try:
        con = store.connect_read_only(path)
    except sqlite3.Error as error:
        raise TrackingError(f"cannot open MLflow store {path}: {error}") from None
    marks = ",".join("?" * len(run_ids))
    latest: dict[str, dict[str, tuple[float, int, int]]] = {}
    tags: dict[str, dict[str, str]] = {}
    params: dict[str, dict[str, str]] = {}
    try:
        metric_sql = (
            "SELECT run_uuid, key, value, step, timestamp FROM latest_metrics "
            f"WHERE key IN ({','.join('?' * len(PROGRESS_METRICS))}) AND run_uuid IN ({marks})"
        )
        for run_id, key, value, step, stamp in con.execute(
            metric_sql, [*PROGRESS_METRICS, *run_ids]
        ):
            latest.setdefault(run_id, {})[key] = (value, step, stamp)
        tag_sql = f"SELECT run_uuid, key, value FROM tags WHERE key = ? AND run_uuid IN ({marks})"
        for run_id, key, value in con.execute(tag_sql, [mlflow_keys.TAG_PROCESS, *run_ids]):
            tags.setdefault(run_id, {})[key] = value
        param_sql = (
            "SELECT run_uuid, key, value FROM params "
            f"WHERE key IN ({','.join('?' * len(PROGRESS_PARAMS))}) AND run_uuid IN ({marks})"
        )
        for run_id, key, value in con.execute(param_sql, [*PROGRESS_PARAMS, *run_ids]):
            params.setdefault(run_id, {})[key] = value
    except sqlite3.Error as error:
        raise TrackingError(f"cannot read MLflow store {path}: {error}") from None
    finally:
        con.close()
    return {
        run_id: _progress_record(
            run_id, latest.get(run_id, {}), tags.get(run_id, {}), params.get(run_id, {})
        )
        for run_id in run_ids
    }


def _progress_mlflow(uri: str, run_ids: list[str]) -> dict[str, RunProgress]:
    client = store.connect(uri, write=False)
    out = {}
    try:
        with store.wrap_errors(uri, "cannot read MLflow store"):
            for run_id in run_ids:
                run = client.get_run(run_id)
                latest = {}
                for key in PROGRESS_METRICS:
                    history = client.get_metric_history(run_id, key)
                    if history:
                        newest = max(history, key=lambda m: (m.step, m.timestamp))
                        latest[key] = (newest.value, newest.step, newest.timestamp)
                out[run_id] = _progress_record(run_id, latest, run.data.tags, run.data.params)
    except OSError as error:
        shown = store.shown_uri(uri)
        raise TrackingError(f"cannot reach MLflow store {shown}: {error}") from None
    return out


def metric_history(tracking_uri: str | None) -> Callable[[str], list[tuple[int, float]]]:
    """``history(run_id)``: a run's (epoch, test error) pairs, for the report's curves."""
    uri = resolve_tracking_uri(tracking_uri)
    clients: list[Any] = []  # made for the first run asked for: no run, no store created

    def history(run_id: str) -> list[tuple[int, float]]:
        if not clients:
            store.bound_http_calls(uri)
            clients.append(store.client(uri))
        with store.wrap_errors(uri, "cannot read MLflow store"):
            metrics = clients[0].get_metric_history(run_id, mlflow_keys.M_TEST_ERROR)
        return sorted((m.step, m.value) for m in metrics)

    return history


def experiments(tracking_uri: str) -> list[tuple[str, str]]:
    """(table id, experiment id) of each rkrepro experiment of a local SQLite store, in the
    order they were made; empty for any other store or one that cannot be read."""
    path = sqlite_path(tracking_uri)
    if path is None or not path.exists():
        return []
    try:
        con = store.connect_read_only(path)
        try:
            rows = con.execute(
                "SELECT experiment_id, name FROM experiments WHERE lifecycle_stage = 'active' "
                "ORDER BY experiment_id"
            ).fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return []
    prefix = mlflow_keys.EXPERIMENT_PREFIX
    return [
        (name.removeprefix(prefix), str(exp_id)) for exp_id, name in rows if name.startswith(prefix)
    ]
