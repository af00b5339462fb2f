"""Which cells have runs, and in what state, read from the MLflow store.

Two readers return the same :class:`RunRecord` list: a read-only ``sqlite3`` query of a local
``sqlite:///`` store (no mlflow import, so ``rkrepro list`` answers instantly) and
``mlflow.search_runs`` for every other URI (servers). Both fill the same records, and tests check
that they agree on the same store, so a local report need not pay for importing mlflow.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from rkrepro import mlflow_keys
from rkrepro.errors import TrackingError
from rkrepro.paper import cell_key, readings
from rkrepro.paths import resolve_tracking_uri, sqlite_path

if TYPE_CHECKING:
    from rkrepro.paper import Cell
    from rkrepro.spec import ModelSpec

NOT_STARTED = "not started"
Reader = Literal["auto", "sqlite", "mlflow"]

# MLflow run statuses, and the cell state each one stands for.
ACTIVE = ("RUNNING", "SCHEDULED")
FINISHED = "FINISHED"
FAILED = "FAILED"
KILLED = "KILLED"

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


def default_tracking_uri() -> str:
    """What every command uses without ``--tracking-uri`` (see :mod:`rkrepro.paths`)."""
    return resolve_tracking_uri(None)


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
        """Trained before readings existed (and so before issue 13's protocol changes)."""
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


def cell_id_of(cell: Cell) -> tuple[str, str, str, bool]:
    return (cell.table, cell.row, cell.model, cell.share)


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
    text = {key: str(value) if isinstance(value, str) else "" for key, value in values.items()}
    return RunRecord(
        run_id=run_id,
        status=status,
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
        experiment_id=str(experiment_id or ""),
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
    uri = tracking_uri or default_tracking_uri()
    table_ids = list(dict.fromkeys(table_ids))
    path = sqlite_path(uri)
    if reader == "sqlite" and path is None:
        raise TrackingError(f"{uri} is not a sqlite:/// store")
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
        con = sqlite3.connect(f"file:{path.resolve().as_posix()}?mode=ro", uri=True, timeout=5)
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
    """``mlflow.search_runs`` into pandas, one search per table's experiment."""
    from rkrepro import tracking

    # Before mlflow: a server that does not answer fails in seconds (not after mlflow's
    # retries), a database URI without its driver in one line (not an ImportError traceback).
    # The same HTTP bounds as for writing, unless the user set them.
    tracking.bound_http_calls(uri)
    tracking.check_reachable(uri, write=False)
    import mlflow
    from mlflow.exceptions import MlflowException

    records: list[RunRecord] = []
    try:
        client = mlflow.MlflowClient(tracking_uri=uri)
        mlflow.set_tracking_uri(uri)
        for table_id in table_ids:
            experiment = client.get_experiment_by_name(mlflow_keys.experiment_name(table_id))
            if experiment is None or experiment.lifecycle_stage != "active":
                continue
            frame = mlflow.search_runs(
                experiment_ids=[experiment.experiment_id],
                filter_string=f"tags.`{mlflow_keys.TAG_TABLE}` = '{table_id}'",
                output_format="pandas",
            )
            records.extend(_records_from_frame(frame))
    except MlflowException as error:
        raise TrackingError(f"cannot read MLflow store {uri}: {error.message}") from None
    except OSError as error:
        raise TrackingError(f"cannot reach MLflow store {uri}: {error}") from None
    return _sorted(records)


def _records_from_frame(frame) -> list[RunRecord]:
    if frame.empty:
        return []
    columns = set(frame.columns)
    tag_cols = {key: f"tags.{key}" for key in _CELL_TAGS if f"tags.{key}" in columns}
    metric_cols = {key: f"metrics.{key}" for key in REPORT_METRICS if f"metrics.{key}" in columns}
    starts = frame["start_time"]
    # search_runs gives datetimes; the sqlite reader gives epoch ms: compare as epoch ms.
    millis = [None if t is None or t != t else round(t.timestamp() * 1000) for t in starts]
    records = []
    for index, (_, row) in enumerate(frame.iterrows()):
        tags = {key: row[col] for key, col in tag_cols.items()}
        metrics = {}
        for key, col in metric_cols.items():
            value = row[col]
            if value is not None and value == value:
                metrics[key] = float(value)
        start = millis[index]
        experiment = row["experiment_id"] if "experiment_id" in columns else ""
        sizes = {k: row[f"params.{k}"] for k in _SIZE_PARAMS if f"params.{k}" in columns}
        record = _record(
            str(row["run_id"]), str(row["status"]), start, tags, metrics, experiment, sizes
        )
        if record is not None:
            records.append(record)
    return records


def _sorted(records: list[RunRecord]) -> list[RunRecord]:
    return sorted(records, key=lambda r: (r.table, r.row, r.model, r.share, r.start_time, r.run_id))


# --------------------------------------------------------------------------------------------
# Cell states.


@dataclass(frozen=True)
class CellStatus:
    """The runs of one cell (one protocol) summed up as a state a person can act on."""

    cell_id: tuple[str, str, str, bool]
    runs: tuple[RunRecord, ...]

    @property
    def seeds_done(self) -> tuple[str, ...]:
        done = {r.seed for r in self.runs if r.status == FINISHED}
        return tuple(sorted(done, key=seed_order))

    def count(self, *statuses: str) -> int:
        return sum(r.status in statuses for r in self.runs)

    @property
    def state(self) -> str:
        """running > done > failed > killed > not started: what needs attention first."""
        if self.count(*ACTIVE):
            return "running"
        if self.seeds_done:
            return "done"
        if self.count(FAILED):
            return "failed"
        if self.count(KILLED):
            return "killed"
        return NOT_STARTED

    @property
    def label(self) -> str:
        """``done (3 seeds)``, ``running (2 runs, 1 seed done)``: the state word comes first.
        Shortened runs are named as such, with how short they were."""
        paper = [r for r in self.runs if r.protocol != mlflow_keys.PROTOCOL_SHORTENED]
        short = [r for r in self.runs if r.protocol == mlflow_keys.PROTOCOL_SHORTENED]
        if not short:
            return self._label()
        sizes = "; ".join(sorted({r.size_text for r in short if r.size_text}))
        text = "[shortened" + (f": {sizes}" if sizes else "") + "] "
        text += CellStatus(self.cell_id, tuple(short))._label()
        if paper:
            text = CellStatus(self.cell_id, tuple(paper))._label() + "; " + text
        return text

    def _label(self) -> str:
        state, parts = self.state, []
        active = self.count(*ACTIVE)
        if state == "running" and active > 1:
            parts.append(f"{active} runs")
        n = len(self.seeds_done)
        if n:
            parts.append(f"{n} seed{'s' if n != 1 else ''}" + ("" if state == "done" else " done"))
        for status in (FAILED, KILLED):
            if self.count(status) and state != status.lower():
                parts.append(f"{self.count(status)} {status.lower()}")
        return state + (f" ({', '.join(parts)})" if parts else "")


def seed_order(seed: str) -> tuple[int, str]:
    return (int(seed), "") if seed.lstrip("-").isdigit() else (1 << 30, seed)


def cell_statuses(
    records: Iterable[RunRecord],
    cells: Iterable[Cell],
    protocols: Iterable[str] = (mlflow_keys.PROTOCOL_PAPER,),
) -> dict[str, CellStatus]:
    """Cell key -> its status, from the runs of the given protocols (every cell present)."""
    wanted = set(protocols)
    by_cell: dict[tuple[str, str, str, bool], list[RunRecord]] = {}
    for record in records:
        if record.protocol in wanted:
            by_cell.setdefault(record.cell_id, []).append(record)
    return {
        cell.key: CellStatus(cell_id_of(cell), tuple(by_cell.get(cell_id_of(cell), ())))
        for cell in cells
    }


def cell_status_map(
    tracking_uri: str | None,
    table_ids: Iterable[str],
    *,
    protocols: Iterable[str] = (mlflow_keys.PROTOCOL_PAPER,),
) -> dict[str, str]:
    """Cell key -> status label for every cell with runs; absent keys are not started.

    For ``rkrepro list``: needs neither the tables, nor torch, nor (for a local store) mlflow.
    """
    return _status_view(fetch_runs(tracking_uri, table_ids), protocols)[0]


def cell_status_view(
    tracking_uri: str | None,
    table_ids: Iterable[str],
    *,
    protocols: Iterable[str] = (mlflow_keys.PROTOCOL_PAPER,),
) -> tuple[dict[str, str], dict[str, int]]:
    """:func:`cell_status_map`, and per cell the runs of other protocols it leaves out (so that
    a shortened run is never invisible)."""
    return _status_view(fetch_runs(tracking_uri, table_ids), protocols)


def _status_view(records, protocols) -> tuple[dict[str, str], dict[str, int]]:
    wanted = set(protocols)
    by_cell: dict[tuple[str, str, str, bool], list[RunRecord]] = {}
    hidden: dict[str, int] = {}
    for record in records:
        if record.protocol in wanted:
            by_cell.setdefault(record.cell_id, []).append(record)
        else:
            key = cell_key(*record.cell_id)
            hidden[key] = hidden.get(key, 0) + 1
    labels = {cell_key(*cid): CellStatus(cid, tuple(runs)).label for cid, runs in by_cell.items()}
    return labels, hidden


def hidden_runs(
    records: Iterable[RunRecord], protocols: Iterable[str] = (mlflow_keys.PROTOCOL_PAPER,)
) -> dict[str, int]:
    """Cell key -> runs of other protocols than ``protocols`` (shortened runs left out)."""
    return _status_view(records, protocols)[1]


# --------------------------------------------------------------------------------------------
# ``rkrepro status`` output.


def status_records(statuses: Mapping[str, CellStatus]) -> list[dict[str, object]]:
    """JSON-ready: one record per cell, with every run's id, seed, protocol and status."""
    out = []
    for key, status in statuses.items():
        table, row, model, share = status.cell_id
        out.append(
            {
                "key": key,
                "table": table,
                "row": row,
                "model": model,
                "share": share,
                "state": status.state,
                "label": status.label,
                "seeds_done": list(status.seeds_done),
                "runs": [
                    {"run_id": r.run_id, "seed": r.seed, "protocol": r.protocol, "status": r.status}
                    for r in status.runs
                ],
            }
        )
    return out


_STATE_STYLE = {
    "done": "green",
    "running": "cyan",
    "failed": "red",
    "killed": "yellow",
    NOT_STARTED: "dim",
}


def status_tables(
    statuses: Mapping[str, CellStatus],
    cells: Iterable[Cell],
    hidden: Mapping[str, int] | None = None,
) -> list[object]:
    """One rich table per paper table: cell, state, and its runs (id, seed, MLflow status);
    ``hidden``: shortened runs per cell left out, said in the state and the caption."""
    hidden = hidden or {}
    from rich.table import Table as RichTable
    from rich.text import Text

    by_table: dict[str, list[Cell]] = {}
    for cell in cells:
        by_table.setdefault(cell.table, []).append(cell)
    out: list[object] = []
    for table_id, table_cells in by_table.items():
        rich_table = RichTable(title=f"{table_id}: reproduction status", header_style="bold")
        for header in ("row", "model", "share", "state", "runs (id, seed, status)"):
            rich_table.add_column(header, overflow="fold")
        counts: dict[str, int] = {}
        previous_row = None
        for cell in table_cells:
            status = statuses[cell.key]
            counts[status.state] = counts.get(status.state, 0) + 1
            runs = "\n".join(
                f"{r.run_id} seed {r.seed} {r.status}"
                + (
                    f" [shortened{': ' + r.size_text if r.size_text else ''}]"
                    if r.protocol == mlflow_keys.PROTOCOL_SHORTENED
                    else ""
                )
                for r in status.runs
            )
            label = status.label
            if hidden.get(cell.key):
                label += f" (+{hidden[cell.key]} shortened hidden)"
            rich_table.add_row(
                Text(cell.row if cell.row != previous_row else ""),
                Text(cell.printed_model),
                "yes" if cell.share else "",
                Text(label, style=_STATE_STYLE[status.state]),
                Text(runs),
            )
            previous_row = cell.row
        caption = ", ".join(f"{state} {n}" for state, n in sorted(counts.items()))
        hidden_total = sum(hidden.get(cell.key, 0) for cell in table_cells)
        if hidden_total:
            caption += (
                f"; {hidden_total} shortened run{'s' * (hidden_total != 1)} hidden "
                "(--include-shortened)"
            )
        rich_table.caption = Text(caption)
        out.append(rich_table)
    return out
