"""``rkrepro params``: every model's parameter count against the paper's printed value.

The paper counts convolution and fully-connected weights and biases, not BatchNorm's affine
parameters (see :mod:`rkrepro.models.counting`); a count *matches* when it prints as the paper's
number at the paper's precision (0.75 means [0.745, 0.755) million).
"""

from __future__ import annotations

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


def to_rich(records: list[dict[str, Any]]):
    from rich.table import Table

    table = Table(title="Parameter counts (paper rule: conv + FC weights and biases)")
    headers = list(_headers(records))
    # Readable at 80 columns: one table goes into the title, a row id is printed once per row,
    # and headers are short; names wrap (fold) instead of being cut to "densen…".
    tables = list(dict.fromkeys(r["table"] for r in records))
    short = {"paper count": "paper", "all params": "all", "reported (M)": "printed (M)"}
    skip = 1 if len(tables) == 1 else 0
    if skip:
        table.title = f"{tables[0]}: {table.title}"
    for index, header in enumerate(headers[skip:], skip):
        table.add_column(
            short.get(header, header),
            justify="right" if index >= 4 else "left",
            overflow="fold",
            no_wrap=index == 2,
        )
    previous = None
    for record in records:
        style = "red" if record["match"] is False else None
        cells = list(_cells(record, len(headers)))
        if (record["table"], record["row"]) == previous:
            cells[1] = ""
        else:
            if previous is not None:
                table.add_section()
            previous = (record["table"], record["row"])
        table.add_row(*cells[skip:], style=style)
    checked = [r for r in records if r["match"] is not None]
    good = sum(1 for r in checked if r["match"])
    table.caption = f"{good} of {len(checked)} checked cells within the paper's rounding"
    return table
