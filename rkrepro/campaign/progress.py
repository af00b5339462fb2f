"""How far the campaign has come, per table and for the paper: runs done, running, failed and
stopped, cells not started, device-hours spent (each run's logged epoch times x its processes)
and the estimate still to go; ``status --watch`` redraws it in place until interrupted.

Reads the store only: the run records :mod:`rkrepro.status` reads, plus each run's
``epoch_seconds`` series and its device tags (one read-only query on a local store, the MLflow
client on a server).
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rkrepro import mlflow_keys
from rkrepro.errors import TrackingError
from rkrepro.paths import sqlite_path
from rkrepro.status import ACTIVE, FAILED, FINISHED, KILLED, RunRecord, cell_id_of

if TYPE_CHECKING:
    from rkrepro.estimate.cost import Estimate
    from rkrepro.paper import Cell


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
        con = sqlite3.connect(f"file:{path.resolve().as_posix()}?mode=ro", uri=True, timeout=5)
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
    import mlflow
    from mlflow.exceptions import MlflowException

    out = {}
    try:
        client = mlflow.MlflowClient(tracking_uri=uri)
        for run_id in run_ids:
            history = client.get_metric_history(run_id, mlflow_keys.M_EPOCH_SECONDS)
            tags = client.get_run(run_id).data.tags
            out[run_id] = _spent(((m.step, m.value) for m in history), tags)
    except MlflowException as error:
        raise TrackingError(f"cannot read MLflow store {uri}: {error.message}") from None
    except OSError as error:
        raise TrackingError(f"cannot reach MLflow store {uri}: {error}") from None
    return out


@dataclass(frozen=True)
class Progress:
    """One table (or the paper): run counts, cells not started, hours spent and left."""

    name: str
    cells: int
    done: int
    running: int
    failed: int
    stopped: int
    not_started: int  # cells without any run
    gpu_hours: float
    cpu_hours: float
    hours_left: float

    def __add__(self, other: Progress) -> Progress:
        return Progress(
            "paper",
            *(getattr(self, f) + getattr(other, f) for f in _SUMMED),
        )


_SUMMED = (
    "cells",
    "done",
    "running",
    "failed",
    "stopped",
    "not_started",
    "gpu_hours",
    "cpu_hours",
    "hours_left",
)


def progress(
    cells: Sequence[Cell],
    records: Sequence[RunRecord],
    spent: dict[str, Spent],
    estimates: dict[str, Estimate],
) -> list[Progress]:
    """One :class:`Progress` per table of ``cells``, then the paper's (when several). Runs are
    the paper-protocol ones; hours spent count every run; the estimate left is one seed of
    each cell without a finished one, less the epochs its latest run has trained."""
    by_cell: dict[tuple, list[RunRecord]] = {}
    for record in records:
        by_cell.setdefault(record.cell_id, []).append(record)
    tables: dict[str, list[Cell]] = {}
    for cell in cells:
        tables.setdefault(cell.table, []).append(cell)
    out = []
    for table, table_cells in tables.items():
        counts: dict[str, Any] = dict.fromkeys(_SUMMED, 0)
        counts["gpu_hours"] = counts["cpu_hours"] = counts["hours_left"] = 0.0
        for cell in table_cells:
            runs = by_cell.get(cell_id_of(cell), [])
            paper = [r for r in runs if r.protocol == mlflow_keys.PROTOCOL_PAPER]
            counts["cells"] += 1
            counts["done"] += sum(r.status == FINISHED for r in paper)
            counts["running"] += sum(r.status in ACTIVE for r in paper)
            counts["failed"] += sum(r.status == FAILED for r in paper)
            counts["stopped"] += sum(r.status == KILLED for r in paper)
            counts["not_started"] += not runs
            for run in runs:
                used = spent.get(run.run_id)
                if used is not None:
                    counts["cpu_hours" if used.on_cpu else "gpu_hours"] += used.device_hours
            if not any(r.status == FINISHED for r in paper):
                counts["hours_left"] += _left(cell, paper, spent, estimates.get(cell.key))
        out.append(Progress(table, **counts))
    if len(out) > 1:
        total = out[0]
        for item in out[1:]:
            total = total + item
        out.append(total)
    return out


def _left(
    cell: Cell, paper: list[RunRecord], spent: dict[str, Spent], est: Estimate | None
) -> float:
    if est is None:
        return math.nan
    trained = max((spent[r.run_id].epochs for r in paper if r.run_id in spent), default=0)
    return est.gpu_hours * max(0.0, 1 - trained / cell.protocol.epochs)


def progress_table(rows: Sequence[Progress], where: str):
    """The rich table ``rkrepro status`` ends with."""
    from rich.table import Table
    from rich.text import Text

    from rkrepro.estimate.cost import format_hours

    out = Table(title="Campaign progress", header_style="bold")
    headers = (
        "table", "cells", "runs done", "running", "failed", "stopped", "cells not started",
        "GPU-h spent", "GPU-h left (est.)",
    )  # fmt: skip
    cpu = any(r.cpu_hours for r in rows)
    for header in headers[:-1] + (("CPU-h spent",) if cpu else ()) + headers[-1:]:
        out.add_column(header, justify="left" if header == "table" else "right")
    for row in rows:
        cells = [
            row.name, str(row.cells), str(row.done), str(row.running), str(row.failed),
            str(row.stopped), str(row.not_started), format_hours(row.gpu_hours),
        ]  # fmt: skip
        if cpu:
            cells.append(format_hours(row.cpu_hours))
        cells.append(format_hours(row.hours_left))
        out.add_row(*cells, style="bold" if row.name == "paper" else None)
    out.caption = Text(
        "spent: logged epoch times x processes (paper and shortened runs); left: one seed of "
        f"each cell without a finished run, less the epochs already trained, on {where}"
    )
    return out


def load_progress(
    tracking_uri: str | None,
    cells: Sequence[Cell],
    gpu: str | None = None,
    records: Sequence[RunRecord] | None = None,
):
    """The progress table of ``cells`` read from the store now (``records``: already read)."""
    from rkrepro.estimate import cost, target
    from rkrepro.paths import resolve_tracking_uri
    from rkrepro.status import fetch_runs

    chosen = target.elsewhere(gpu)  # an unknown --gpu is one line before the store is read
    uri = resolve_tracking_uri(tracking_uri)
    if records is None:
        records = fetch_runs(uri, list(dict.fromkeys(c.table for c in cells)))
    spent = spent_by_run(uri, [r.run_id for r in records])
    estimates = {e.cell.key: e for e in cost.estimate(list(cells), chosen)}
    where = f"{chosen.label} in fp32 ({cost.describe_sources(list(estimates.values()))})"
    return progress_table(progress(cells, records, spent, estimates), where)


def watch(render: Callable[[], object], interval: float, console) -> None:
    """Redraw ``render()`` every ``interval`` seconds until interrupted (Ctrl-C): in place on a
    terminal, one after the other elsewhere (a log)."""
    if console.is_terminal:
        from rich.live import Live

        with Live(render(), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                live.update(render(), refresh=True)
    while True:
        console.print(render())
        console.file.flush()
        time.sleep(interval)
