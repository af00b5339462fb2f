"""Which cells have runs, and in what state: the runs read back by :mod:`rkrepro.tracking.reader`
summed up per cell as a state a person can act on (done, running, failed, killed, not started),
and ``rkrepro status``'s output.

Reads a local ``sqlite:///`` store without importing mlflow, so ``rkrepro list`` answers
instantly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rkrepro import paper
from rkrepro.tracking import keys as mlflow_keys
from rkrepro.tracking.reader import RunRecord, fetch_runs

if TYPE_CHECKING:
    from rkrepro.paper import Cell

NOT_STARTED = "not started"

# MLflow run statuses, and the cell state each one stands for.
ACTIVE = ("RUNNING", "SCHEDULED")
FINISHED = "FINISHED"
FAILED = "FAILED"
KILLED = "KILLED"


def cell_id_of(cell: Cell) -> tuple[str, str, str, bool]:
    return (cell.table, cell.row, cell.model, cell.share)


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
            key = paper.cell_key(*record.cell_id)
            hidden[key] = hidden.get(key, 0) + 1
    labels = {
        paper.cell_key(*cid): CellStatus(cid, tuple(runs)).label for cid, runs in by_cell.items()
    }
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

    from rkrepro.textsafe import rich_text  # run ids, seeds and states come from the store

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
                rich_text(cell.row if cell.row != previous_row else ""),
                rich_text(cell.printed_model),
                "yes" if cell.share else "",
                rich_text(label, style=_STATE_STYLE[status.state]),
                rich_text(runs),
            )
            previous_row = cell.row
        caption = ", ".join(f"{state} {n}" for state, n in sorted(counts.items()))
        hidden_total = sum(hidden.get(cell.key, 0) for cell in table_cells)
        if hidden_total:
            caption += (
                f"; {hidden_total} shortened run{'s' * (hidden_total != 1)} hidden "
                "(--include-shortened)"
            )
        rich_table.caption = rich_text(caption)
        out.append(rich_table)
    return out
