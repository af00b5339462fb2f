"""The paper's tables as validated data: ``tables/*.yaml`` -> :class:`Table` -> :class:`Cell`.

A *cell* is one thing that can be trained and compared with the paper: a row's original network
or one RKNet variant, with or without weight sharing. Everything downstream (models, training,
tracking, reports) works on cells, so this package is the single place that knows the YAML
layout:

- :mod:`.model`: tables, rows, variants, cells, claims; printed numbers and their rounding rule;
- :mod:`.readings`: the choices the paper leaves open, as data;
- :mod:`.limits`, :mod:`.schema`: what a table file may hold, and the checks on each field;
- :mod:`.loader`: a tables folder read safely and validated; :mod:`.claims`: its ``claims:``;
- :mod:`.lookup`: a table, row or variant by name, and the cells a selection means.

Torch-free on purpose: ``rkrepro list`` imports it and must answer in well under a second.
"""

from __future__ import annotations

from rkrepro.paper.loader import (
    TABLES_DIR_ENV,
    default_tables_dir,
    load_table_file,
    load_tables,
    parse_table,
)
from rkrepro.paper.lookup import (
    ALL_TABLES,
    SHARE_CHOICES,
    all_cells,
    campaign_cells,
    find_row,
    find_table,
    find_variant,
    resolve_cells,
    row_cells,
    select_cells,
)
from rkrepro.paper.model import (
    Cell,
    CellSelector,
    ClaimSpec,
    Printed,
    Reported,
    Row,
    Table,
    Variant,
    cell_key,
    format_variant_name,
    normalise_name,
    parse_variant_name,
    with_readings,
)

__all__ = [
    "ALL_TABLES",
    "SHARE_CHOICES",
    "TABLES_DIR_ENV",
    "Cell",
    "CellSelector",
    "ClaimSpec",
    "Printed",
    "Reported",
    "Row",
    "Table",
    "Variant",
    "all_cells",
    "campaign_cells",
    "cell_key",
    "default_tables_dir",
    "find_row",
    "find_table",
    "find_variant",
    "format_variant_name",
    "load_table_file",
    "load_tables",
    "normalise_name",
    "parse_table",
    "parse_variant_name",
    "resolve_cells",
    "row_cells",
    "select_cells",
    "with_readings",
]
