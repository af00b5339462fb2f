"""Addressing the tables: a table, row or variant by the name a user typed (with the closest
names when it is unknown), and the cells a selection means.
"""

from __future__ import annotations

import difflib

from rkrepro.errors import TableError
from rkrepro.paper.limits import short_repr
from rkrepro.paper.model import Cell, Reported, Row, Table, Variant, normalise_name
from rkrepro.spec import ModelSpec

SHARE_CHOICES = ("both", "share", "no-share")


def _no_match(kind: str, wanted: str, known: list[str], context: str = "") -> TableError:
    close = difflib.get_close_matches(wanted, known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(known)}"
    return TableError(f"unknown {kind} {short_repr(wanted)}{context}{hint}")


def find_table(tables: dict[str, Table], table_id: str) -> Table:
    key = table_id.strip().lower()
    if key in tables:
        return tables[key]
    if key.isdigit() and f"table{key}" in tables:
        return tables[f"table{key}"]
    raise _no_match("table", table_id, list(tables))


def find_row(table: Table, row_id: str) -> Row:
    key = row_id.strip().lower()
    for row in table.rows:
        if key == row.id or key in row.aliases:
            return row
    known = [row.id for row in table.rows]
    raise _no_match("row", row_id, known, f" in {table.id}")


def find_variant(table: Table, row: Row, name: str) -> Variant:
    try:
        wanted = normalise_name(name)
    except TableError:
        wanted = name
    for variant in row.variants:
        if variant.name.lower() == wanted.lower():
            return variant
    known = [v.name for v in row.variants]
    raise _no_match("variant", name, known, f" in {table.id} row {row.id}")


def _spec(
    table: Table,
    row: Row,
    periods: tuple[tuple[int, int], ...] | None,
    share: bool,
    readings: dict[str, str],
) -> ModelSpec:
    return ModelSpec(
        resnet_stages=readings["resnet_stages"],  # type: ignore[arg-type]
        family=row.family,  # type: ignore[arg-type]
        dataset=table.dataset,  # type: ignore[arg-type]
        depth=row.depth,
        growth_rate=row.growth_rate,
        periods=periods,
        m=row.m if periods is not None else None,
        share=share,
    )


def _cell(table: Table, row: Row, variant: Variant | None, share: bool) -> Cell:
    if variant is None:
        reported, model, printed = row.original, "original", "original"
        periods = None
    else:
        reported = (variant.share or Reported()) if share else variant.reported
        model, printed, periods = variant.name, variant.printed_name, variant.periods
    protocol = table.star_protocol if reported.star and table.star_protocol else table.protocol
    readings = {**dict(table.readings), **dict(row.readings)}
    return Cell(
        readings=tuple(readings.items()),
        table=table.id,
        row=row.id,
        model=model,
        share=share,
        spec=_spec(table, row, periods, share, readings),
        protocol=protocol,
        reported_params_m=reported.params_m,
        reported_error=reported.error,
        reported_top5=reported.top5,
        bold=reported.bold,
        star=reported.star,
        printed_model=printed,
        params_equal_original=bool(variant and variant.params_equal_original and not share),
    )


def row_cells(table: Table, row: Row) -> list[Cell]:
    """The row's original, then each variant, each followed by its "with share" cell if printed."""
    cells = [_cell(table, row, None, False)]
    for variant in row.variants:
        cells.append(_cell(table, row, variant, False))
        if variant.share is not None:
            cells.append(_cell(table, row, variant, True))
    return cells


def all_cells(tables: dict[str, Table], table_id: str | None = None) -> list[Cell]:
    """Every cell of one table (or all tables) in the paper's order."""
    chosen = [find_table(tables, table_id)] if table_id else list(tables.values())
    return [cell for table in chosen for row in table.rows for cell in row_cells(table, row)]


def select_cells(
    tables: dict[str, Table], table_id: str | None = None, row_id: str | None = None
) -> list[Cell]:
    """``[TABLE] [--row ROW]`` of the listing commands: everything, one table, or one row."""
    if row_id is None:
        return all_cells(tables, table_id)
    if table_id is None:
        raise TableError("--row needs a TABLE argument (e.g. table1 --row densenet-bc-k12)")
    table = find_table(tables, table_id)
    return row_cells(table, find_row(table, row_id))


def resolve_cells(
    tables: dict[str, Table],
    table_id: str,
    row_id: str,
    variants: list[str] | None = None,
    share: str = "both",
) -> list[Cell]:
    """The cells ``rkrepro run TABLE --row ROW [--variant …] [--share/--no-share/--both]`` means.

    With no variants: the original and every variant, shared where the paper reports sharing.
    ``--share`` asks for the shared cell of each chosen variant, also one the paper did not print.
    """
    if share not in SHARE_CHOICES:
        raise TableError(
            f"share must be one of {', '.join(SHARE_CHOICES)}, got {short_repr(share)}"
        )
    table = find_table(tables, table_id)
    row = find_row(table, row_id)
    if not variants:
        cells = row_cells(table, row)
        if share == "share":
            return [c for c in cells if c.share]
        if share == "no-share":
            return [c for c in cells if not c.share]
        return cells
    cells: list[Cell] = []
    for name in variants:
        if name.strip().lower() == "original":
            if share != "share":
                cells.append(_cell(table, row, None, False))
            continue
        variant = find_variant(table, row, name)
        if share in ("both", "no-share"):
            cells.append(_cell(table, row, variant, False))
        if share == "share" or (share == "both" and variant.share is not None):
            cells.append(_cell(table, row, variant, True))
    unique = list(dict.fromkeys(cells))
    return unique


ALL_TABLES = "all"


def campaign_cells(
    tables: dict[str, Table],
    table_id: str,
    row_ids: list[str] | None = None,
    variants: list[str] | None = None,
    share: str = "both",
) -> list[Cell]:
    """The cells ``rkrepro run TABLE|all [--row ROW]... [--variant ...]`` means, in the paper's
    order of the rows given: every row of the table without ``--row``, every table with
    ``all`` (which takes no ``--row``: rows belong to one table)."""
    if table_id.strip().lower() == ALL_TABLES:
        if row_ids:
            raise TableError(
                f"run all takes no --row ({short_repr(row_ids[0])}): rows belong to one table; "
                "use TABLE --row ROW"
            )
        chosen = list(tables.values())
    else:
        chosen = [find_table(tables, table_id)]
    cells: list[Cell] = []
    for table in chosen:
        rows = [find_row(table, r).id for r in row_ids] if row_ids else [r.id for r in table.rows]
        for row_id in dict.fromkeys(rows):
            cells += resolve_cells(tables, table.id, row_id, variants, share)
    return list(dict.fromkeys(cells))
