"""``rkrepro params``: every model's parameter count against the paper's printed value.

The paper counts convolution and fully-connected weights and biases, not BatchNorm's affine
parameters (see :mod:`rkrepro.models.counting`); a count *matches* when it prints as the paper's
number at the paper's precision (0.75 means [0.745, 0.755) million).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rkrepro.paper import Cell


def param_records(cells: list[Cell], with_flops: bool = True) -> list[dict[str, Any]]:
    """One record per cell, counted from the model spec without building the model
    (:mod:`rkrepro.models.analytic`, checked against the built models by the tests)."""
    from rkrepro.models.analytic import model_cost

    originals: dict[tuple[str, str], int] = {}
    records = []
    for cell in cells:
        cost = model_cost(cell.spec)
        paper, total = cost.params_paper, cost.params_total
        if cell.model == "original":
            originals[(cell.table, cell.row)] = paper
        match: bool | None = None
        claim = None
        if cell.reported_params_m is not None:
            match = cell.reported_params_m.matches_count(paper)
        elif cell.params_equal_original and (cell.table, cell.row) in originals:
            claim = "equal to the original (caption)"
            match = paper == originals[(cell.table, cell.row)]
        flops = cost.forward_flops if with_flops else None
        records.append(
            {
                "table": cell.table,
                "row": cell.row,
                "model": cell.model,
                "printed_model": cell.printed_model,
                "share": cell.share,
                "params_paper": paper,
                "params_total": total,
                "reported_params_m": (
                    None if cell.reported_params_m is None else float(cell.reported_params_m)
                ),
                "reported_decimals": (
                    None if cell.reported_params_m is None else cell.reported_params_m.decimals
                ),
                "claim": claim,
                "match": match,
                "flops": flops,
            }
        )
    return records


def _reported(record: dict[str, Any]) -> str:
    if record["reported_params_m"] is None:
        return "= original" if record["claim"] else "-"
    return f"{record['reported_params_m']:.{record['reported_decimals']}f}"


def _match(record: dict[str, Any]) -> str:
    return {True: "yes", False: "NO", None: ""}[record["match"]]


def _flops(record: dict[str, Any]) -> str:
    return "" if record["flops"] is None else f"{record['flops'] / 1e6:,.1f}"


_HEADERS = (
    "table",
    "row",
    "model",
    "share",
    "paper count",
    "all params",
    "reported (M)",
    "match",
    "MFLOPs",
)


def _headers(records: list[dict[str, Any]]) -> tuple[str, ...]:
    """Without FLOPs (``--no-flops``), no empty FLOPs column."""
    with_flops = any(r["flops"] is not None for r in records)
    return _HEADERS if with_flops else _HEADERS[:-1]


def _cells(record: dict[str, Any], width: int = len(_HEADERS)) -> tuple[str, ...]:
    return (
        record["table"],
        record["row"],
        record["printed_model"],
        "yes" if record["share"] else "",
        f"{record['params_paper']:,}",
        f"{record['params_total']:,}",
        _reported(record),
        _match(record),
        _flops(record),
    )[:width]


def to_markdown(records: list[dict[str, Any]]) -> str:
    headers = _headers(records)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cells(r, len(headers))) + " |" for r in records]
    return "\n".join(lines)


def rich_layouts(records: list[dict[str, Any]]) -> list[Callable[[], Any]]:
    """Layouts of one table's records for :func:`rkrepro.screen.first_fitting`, widest first:
    one column per field; the row id on a line of its own above its models (the share folded
    into the name); then without the all-parameter count, which the caption names."""
    from rkrepro import screen

    return [
        lambda: _rich(records),
        lambda: screen.stacked(_rich(records, narrow=True)),
        lambda: screen.stacked(_rich(records, narrow=True, totals=False)),
    ]


def _rich(records: list[dict[str, Any]], narrow: bool = False, totals: bool = True):
    from rich.table import Table

    table = Table(
        title=f"{records[0]['table']}: Parameter counts (paper rule: conv + FC weights and biases)",
        header_style="bold",
        title_justify="left",
    )
    headers = list(_headers(records))
    short = {"paper count": "paper", "all params": "all", "reported (M)": "printed (M)"}
    dropped = {"table"} | ({"share"} if narrow else set()) | (set() if totals else {"all params"})
    for index, header in enumerate(headers):
        if header not in dropped:
            table.add_column(short.get(header, header), justify="right" if index >= 4 else "left")
    previous = None
    for record in records:
        style = "red" if record["match"] is False else None
        cells = dict(zip(headers, _cells(record, len(headers)), strict=True))
        if narrow and record["share"]:
            cells["model"] += " share"
        if record["row"] == previous:
            cells["row"] = ""
        else:
            if previous is not None:
                table.add_section()
            previous = record["row"]
        table.add_row(*(v for k, v in cells.items() if k not in dropped), style=style)
    checked = [r for r in records if r["match"] is not None]
    good = sum(1 for r in checked if r["match"])
    table.caption = f"{good} of {len(checked)} checked cells within the paper's rounding"
    if not totals:
        table.caption += "; all-parameter counts: --format json or a wider terminal"
    return table
