"""rkrepro.paper.lookup: tables, rows and variants by name (closest names when unknown), and
the cells a selection means."""

from __future__ import annotations

from pathlib import Path

import pytest

from rkrepro.errors import TableError
from rkrepro.paper.loader import load_tables
from rkrepro.paper.lookup import find_row, find_table, resolve_cells

SHIPPED = Path(__file__).resolve().parents[2] / "tables"


@pytest.fixture(scope="module")
def tables():
    return load_tables(SHIPPED)


def test_row_ids_resolve(tables):
    row = find_row(tables["table1"], "densenet-bc-k12")
    assert (row.family, row.growth_rate, row.depth) == ("densenet-bc", 12, 100)
    assert find_row(tables["table1"], "densenet-bc-k12-d100") is row
    assert find_row(tables["table1"], "densenet-bc-k24-d250").depth == 250
    assert find_row(tables["table4"], "resnet-56").depth == 56
    assert find_row(tables["table3"], "densenet-121").growth_rate == 32
    assert find_table(tables, "1") is tables["table1"]


def test_unknown_names_suggest_close_matches(tables):
    with pytest.raises(TableError, match="did you mean densenet-bc-k12"):
        find_row(tables["table1"], "densenet-bc-k21")
    with pytest.raises(TableError, match="did you mean table1"):
        find_table(tables, "tabel1")
    with pytest.raises(TableError, match="RKNet-1x8_1x2_1x2"):
        resolve_cells(tables, "table1", "densenet-bc-k12", ["RKNet-1x8_1x2_1x3"])


def test_resolve_cells_selects_variants_and_sharing(tables):
    everything = resolve_cells(tables, "table1", "densenet-bc-k12")
    assert [c.key.split("/", 2)[2] for c in everything] == [
        "original/noshare",
        "RKNet-8x1_2x1_2x1/noshare",
        "RKNet-1x8_1x2_1x2/noshare",
        "RKNet-1x8_1x2_1x2/share",
        "RKNet-2x4_2x1_2x1/noshare",
    ]
    one = resolve_cells(tables, "table1", "densenet-bc-k12", ["RKNet-1×8_1×2_1×2"], "share")
    assert [(c.model, c.share, c.reported_params_m) for c in one] == [
        ("RKNet-1x8_1x2_1x2", True, 0.33)
    ]
    unprinted = resolve_cells(tables, "table1", "densenet-bc-k12", ["RKNet-2x4_2x1_2x1"], "share")
    assert unprinted[0].share and unprinted[0].reported_params_m is None
    assert unprinted[0].spec.share and unprinted[0].spec.periods == ((2, 4), (2, 1), (2, 1))
