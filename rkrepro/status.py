"""Which cells have runs, and in what state: the runs read back by :mod:`rkrepro.tracking.reader`
summed up per cell as a state a person can act on (done, running, failed, killed, not started),
and ``rkrepro status``'s output.

Reads a local ``sqlite:///`` store without importing mlflow, so ``rkrepro list`` answers
instantly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rkrepro import paper, screen
from rkrepro.liveness import STALE_WORD, Health
from rkrepro.textsafe import rich_text  # run ids, seeds and states come from the store
from rkrepro.tracking import keys as mlflow_keys
from rkrepro.tracking.reader import RunRecord, fetch_runs

if TYPE_CHECKING:
    from rich.table import Table as RichTable
    from rich.text import Text

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
# ``rkrepro status`` output: every cell's state and runs, each RUNNING run's progress (epoch,
# speed, ETA) or staleness (:mod:`rkrepro.liveness`), in a layout that fits the terminal.


def status_records(
    statuses: Mapping[str, CellStatus], health: Mapping[str, Health] | None = None
) -> list[dict[str, object]]:
    """JSON-ready: one record per cell, with every run's id, seed, protocol and status, and a
    RUNNING run's ``progress`` (epoch, epochs, images/s, ETA, stale)."""
    health = health or {}
    out = []
    for key, status in statuses.items():
        table, row, model, share = status.cell_id
        runs = []
        for r in status.runs:
            run: dict[str, object] = {
                "run_id": r.run_id,
                "seed": r.seed,
                "protocol": r.protocol,
                "status": r.status,
            }
            if r.run_id in health:
                run["progress"] = health[r.run_id].record()
            runs.append(run)
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
                "runs": runs,
            }
        )
    return out


_STATE_STYLE = {
    "done": "green",
    "running": "cyan",
    "failed": "red",
    "killed": "yellow",
    "stale": "bold yellow",
    NOT_STARTED: "dim",
}
STATE_COLUMN = "state"
RUNS_COLUMN = "runs (id, seed, status)"


def stale_cell(status: CellStatus, health: Mapping[str, Health]) -> bool:
    """Running only in runs whose process is gone: nothing trains this cell."""
    active = [r for r in status.runs if r.status in ACTIVE]
    return bool(active) and all(r.run_id in health and health[r.run_id].stale for r in active)


def _state_text(status: CellStatus, health: Mapping[str, Health], hidden: int) -> Text:

    label, word = status.label, status.state
    if stale_cell(status, health):
        label, word = label.replace("running", STALE_WORD, 1), "stale"
    if hidden:
        label += f" (+{hidden} shortened hidden)"
    return rich_text(label, style=_STATE_STYLE[word])


def _run_text(run: RunRecord, health: Mapping[str, Health]) -> str:
    """``seed 0 RUNNING: epoch 12/300, 412 images/s, ETA 5 h 3 min`` (no run id)."""
    text = f"seed {run.seed} {run.status}"
    if run.protocol == mlflow_keys.PROTOCOL_SHORTENED:
        text += f" [shortened{': ' + run.size_text if run.size_text else ''}]"
    if run.run_id in health:
        text += ": " + health[run.run_id].text()
    return text


def status_layouts(
    table_id: str,
    statuses: Mapping[str, CellStatus],
    cells: Iterable[Cell],
    hidden: Mapping[str, int],
    health: Mapping[str, Health],
) -> list[Callable[[], object]]:
    """One paper table's status, widest layout first (for :func:`rkrepro.screen.first_fitting`):
    a column per field with each cell's runs in one column; then each row id above its cells and
    each run on a line of its own below its cell (the id, then its seed, status and progress)."""
    chosen = [cell for cell in cells if cell.table == table_id]
    return [
        lambda: _wide_status(table_id, statuses, chosen, hidden, health),
        lambda: screen.stacked(_narrow_status(table_id, statuses, chosen, hidden, health)),
    ]


def _status_table(table_id: str, statuses, chosen, hidden) -> RichTable:
    from rich.table import Table as RichTable

    counts: dict[str, int] = {}
    for cell in chosen:
        state = statuses[cell.key].state
        counts[state] = counts.get(state, 0) + 1
    caption = ", ".join(f"{state} {n}" for state, n in sorted(counts.items()))
    hidden_total = sum(hidden.get(cell.key, 0) for cell in chosen)
    if hidden_total:
        caption += (
            f"; {hidden_total} shortened run{'s' * (hidden_total != 1)} hidden "
            "(--include-shortened)"
        )
    return RichTable(
        title=f"{table_id}: reproduction status",
        header_style="bold",
        title_justify="left",
        caption=rich_text(caption),
        caption_justify="left",
    )


def _wide_status(table_id, statuses, chosen, hidden, health) -> RichTable:

    out = _status_table(table_id, statuses, chosen, hidden)
    for header in ("row", "model", "share", STATE_COLUMN, RUNS_COLUMN):
        out.add_column(header)
    previous_row = None
    for cell in chosen:
        if previous_row is not None and cell.row != previous_row:
            out.add_section()
        status = statuses[cell.key]
        runs = "\n".join(f"{r.run_id} {_run_text(r, health)}" for r in status.runs)
        out.add_row(
            rich_text(cell.row if cell.row != previous_row else ""),
            rich_text(cell.printed_model),
            "yes" if cell.share else "",
            _state_text(status, health, hidden.get(cell.key, 0)),
            rich_text(runs),
        )
        previous_row = cell.row
    return out


def _narrow_status(table_id, statuses, chosen, hidden, health) -> RichTable:

    out = _status_table(table_id, statuses, chosen, hidden)
    out.add_column("row")
    out.add_column("model, run id")
    out.add_column(STATE_COLUMN)
    previous_row = None
    for cell in chosen:
        status = statuses[cell.key]
        label = cell.printed_model + (" share" if cell.share else "")
        out.add_row(
            rich_text(cell.row if cell.row != previous_row else ""),
            rich_text(label),
            _state_text(status, health, hidden.get(cell.key, 0)),
        )
        for run in status.runs:
            style = "bold yellow" if run.run_id in health and health[run.run_id].stale else ""
            out.add_row(
                "", rich_text(screen.INDENT + run.run_id), rich_text(_run_text(run, health), style)
            )
        previous_row = cell.row
    return out


def stale_runs(statuses: Mapping[str, CellStatus], health: Mapping[str, Health]) -> list[RunRecord]:
    """The RUNNING runs whose process is gone, in the order of their cells."""
    return [
        run
        for status in statuses.values()
        for run in status.runs
        if run.run_id in health and health[run.run_id].stale
    ]


def store_note(tracking_uri: str | None) -> str | None:
    """A line for a reader of a default store that does not exist here (started from another
    folder than the one it trained in): without it, every cell reads "not started"."""
    from rkrepro.paths import resolve_tracking_uri, sqlite_path
    from rkrepro.tracking.store import store_exists

    if tracking_uri:
        return None
    uri = resolve_tracking_uri(None)
    if store_exists(uri):
        return None
    path = sqlite_path(uri)
    return (
        f"note: no MLflow store at {path} (the default store of this folder): nothing has run "
        "here. Run rkrepro in the folder you trained in, or point RKREPRO_RUNS_DIR or "
        "--tracking-uri at its store."
    )
