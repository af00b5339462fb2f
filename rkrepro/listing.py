"""The paper's tables as a listing: ``rkrepro list`` and ``rkrepro show``.

Torch- and mlflow-free: these commands must start instantly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.console import Group
from rich.table import Table as RichTable
from rich.text import Text

from rkrepro.paper import Cell, Printed, Row, Table, row_cells
from rkrepro.screen import INDENT
from rkrepro.textsafe import rich_text

NOT_STARTED = "not started"


def statuses(tracking_uri: str | None, cells: list[Cell]) -> dict[str, str]:
    """Cell key -> reproduction status, read from the tracking store (cheaply)."""
    return statuses_and_hidden(tracking_uri, cells)[0]


def statuses_and_hidden(
    tracking_uri: str | None, cells: list[Cell], include_shortened: bool = False
) -> tuple[dict[str, str], dict[str, int]]:
    """(cell key -> status, cell key -> shortened runs not counted), one read: the status of
    paper-protocol runs, and of shortened ones too with ``include_shortened``."""
    from rkrepro.status import cell_status_view
    from rkrepro.tracking import keys as mlflow_keys

    table_ids = list(dict.fromkeys(cell.table for cell in cells))
    protocols = [mlflow_keys.PROTOCOL_PAPER]
    if include_shortened:
        protocols.append(mlflow_keys.PROTOCOL_SHORTENED)
    return cell_status_view(tracking_uri, table_ids, protocols=protocols)


def _number(value: Printed | None) -> float | None:
    return None if value is None else float(value)


def cell_record(
    cell: Cell, status: dict[str, str], hidden: dict[str, int] | None = None
) -> dict[str, Any]:
    """One model cell as a JSON object (documented in the README)."""
    record: dict[str, Any] = {
        "table": cell.table,
        "row": cell.row,
        "model": cell.model,
        "printed_model": cell.printed_model,
        "share": cell.share,
        "family": cell.spec.family,
        "dataset": cell.spec.dataset,
        "depth": cell.spec.depth,
        "growth_rate": cell.spec.growth_rate,
        "periods": [list(p) for p in cell.spec.periods] if cell.spec.periods else None,
        "m": list(cell.spec.m) if cell.spec.m else None,
        "params_m": _number(cell.reported_params_m),
        "params_decimals": cell.reported_params_m.decimals if cell.reported_params_m else None,
    }
    if cell.spec.dataset == "imagenet":
        record["top1"] = _number(cell.reported_error)
        record["top5"] = _number(cell.reported_top5)
    else:
        record["error"] = _number(cell.reported_error)
    record.update(
        {
            "bold": cell.bold,
            "star": cell.star,
            "batch_size": cell.protocol.batch_size,
            "epochs": cell.protocol.epochs,
            "readings": cell.applicable_readings(),
            "status": status.get(cell.key, NOT_STARTED),
            "shortened_runs": (hidden or {}).get(cell.key, 0),
        }
    )
    return record


def _fmt(value: Printed | None) -> str:
    return "-" if value is None else repr(value)


_STATUS_STYLE = {
    "done": "green",
    "running": "cyan",
    "failed": "red",
    "killed": "yellow",
    NOT_STARTED: "dim",
}


def _model_label(cell: Cell) -> str:
    return cell.printed_model + (" share" if cell.share else "")


def _hidden_text(count: int) -> str:
    return f"{count} shortened run{'s' * (count != 1)} hidden (--include-shortened)"


def cells_tables(
    tables: dict[str, Table],
    cells: list[Cell],
    status: dict[str, str],
    hidden: dict[str, int] | None = None,
) -> list[RichTable]:
    """One rich table per paper table: rows -> models, reported numbers, reproduction status.
    ``hidden``: shortened runs per cell, which the status leaves out but the user must see.
    Printed through :func:`rkrepro.screen.show` (the status wraps, nothing else does)."""
    hidden = hidden or {}
    rendered = []
    for table_id in dict.fromkeys(cell.table for cell in cells):
        table = tables[table_id]
        chosen = [cell for cell in cells if cell.table == table_id]
        imagenet = table.dataset == "imagenet"
        out = RichTable(
            title=rich_text(f"{table.title} ({table.dataset})"),
            header_style="bold",
            title_justify="left",
        )
        out.add_column("row")
        out.add_column("model")
        out.add_column("M params", justify="right")
        for column in ("top-1 %", "top-5 %") if imagenet else ("error %",):
            out.add_column(column, justify="right")
        out.add_column(STATUS_COLUMN)
        previous_row = None
        for cell in chosen:
            if previous_row is not None and previous_row != cell.row:
                out.add_section()
            star = "*" if cell.star else ""
            errors = [_fmt(cell.reported_error) + star]
            if imagenet:
                errors.append(_fmt(cell.reported_top5) + star)
            state = status.get(cell.key, NOT_STARTED)
            shown = "-" if state == NOT_STARTED else state
            if hidden.get(cell.key):
                shown += f" (+{hidden[cell.key]} shortened)"
            out.add_row(
                rich_text(cell.row if previous_row != cell.row else ""),
                rich_text(_model_label(cell), style="bold" if cell.bold else ""),
                _fmt(cell.reported_params_m),
                *errors,
                Text(shown, style=_STATUS_STYLE.get(state.split(" ")[0], "dim")),
            )
            previous_row = cell.row
        notes = ["bold: the paper's bold claims", "status -: not started"]
        if table.star_note and any(cell.star for cell in chosen):
            notes.insert(0, table.star_note)
        hidden_total = sum(hidden.get(cell.key, 0) for cell in chosen)
        if hidden_total:
            notes.append(_hidden_text(hidden_total))
        out.caption = rich_text("; ".join(notes))
        rendered.append(out)
    return rendered


STATUS_COLUMN = "status"


def row_structures(table: Table, row: Row) -> list[Callable[[], RichTable]]:
    """A row's models with s, r and the state channels of every period: the layouts of
    :func:`rkrepro.screen.first_fitting`, widest first (one column per field; then the
    share folded into the name and each period as two short lines under a legend)."""
    return [lambda: _row_structure(table, row, False), lambda: _row_structure(table, row, True)]


def _row_structure(table: Table, row: Row, narrow: bool) -> RichTable:
    from rkrepro.models.summary import describe_periods

    out = RichTable(
        title=rich_text(f"{table.id} / {row.id}: {row.label}, depth {row.depth} ({table.dataset})"),
        header_style="bold",
        show_lines=True,
        title_justify="left",
    )
    out.add_column("model")
    if not narrow:
        out.add_column("share", justify="center")
    out.add_column("params (M)", justify="right")
    periods = describe_periods(row_cells(table, row)[0].spec)
    for index in range(len(periods)):
        header = f"P{index + 1}" if narrow else f"period {index + 1}\ns×r · channels"
        out.add_column(header, justify="center")
    for cell in row_cells(table, row):
        parts = []
        for period in describe_periods(cell.spec):
            shape = f"{period['s']}×{period['r']}" if cell.spec.is_rknet else "orig."
            parts.append(f"{shape}{chr(10) if narrow else ' · '}{period['state_channels']}")
        name = cell.printed_model + (" share" if narrow and cell.share else "")
        out.add_row(
            rich_text(name, style="bold" if cell.bold else ""),
            *([] if narrow else ["yes" if cell.share else ""]),
            _fmt(cell.reported_params_m),
            *parts,
        )
    if narrow:
        out.caption = Text(
            "Pn: period n as s×r (orig.: the original's block), then its state channels"
        )
        out.caption_justify = "left"
    return out


def row_readings(table: Table, row: Row) -> Group:
    """The row's readings (rkrepro.paper.readings), each with its one-line justification and where
    it applies, then the learning-rate rule the protocol follows; a long explanation wraps
    under its own start."""
    from rkrepro.paper import readings

    cells = row_cells(table, row)
    values = cells[0].reading
    grid = RichTable.grid()
    grid.add_column(width=len(INDENT), no_wrap=True)
    grid.add_column()
    for name, value in values.items():
        reading = readings.READINGS[name]
        applies = [c for c in cells if reading.applies(c.spec)]
        where = "all models" if len(applies) == len(cells) else f"{len(applies)} of the models"
        if not applies:
            where = "no model of this row"
        source = " (row)" if name in dict(row.readings) else ""
        text = Text(readings.describe(name, value) + source + " ")
        text.append(f"[{reading.kind}; {where}]", style="dim")
        grid.add_row("", text)
    schedule = table.protocol.lr_schedule
    rule = schedule.describe() if schedule else "explicit milestones"
    lr = Text(
        f"LR: {table.protocol.lr:g}, /10 after epochs {list(table.protocol.lr_milestones)} of "
        f"{table.protocol.epochs} (0-based milestones; {rule})",
    )
    title = Text("Readings (override with rkrepro run --reading NAME=VALUE):", style="bold")
    return Group(title, grid, lr)
