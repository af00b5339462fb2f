"""How far the campaign has come, per table and for the paper: runs done, running, failed and
stopped, cells not started, device-hours spent (each run's logged epoch times x its processes)
and the estimate still to go; ``status --watch`` redraws it in place until interrupted.

Reads the store only, through :mod:`rkrepro.tracking`: the run records :mod:`rkrepro.status`
reads, plus each run's epoch times and where it ran (:mod:`rkrepro.tracking.epochs`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rkrepro.status import ACTIVE, FAILED, FINISHED, KILLED, cell_id_of
from rkrepro.tracking import keys as mlflow_keys
from rkrepro.tracking.epochs import Spent, spent_by_run
from rkrepro.tracking.reader import RunRecord

if TYPE_CHECKING:
    from rkrepro.estimate.cost import Estimate
    from rkrepro.paper import Cell


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
    from rkrepro.tracking.reader import fetch_runs

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
