"""rkrepro.paper.claims: the ``claims:`` block of a table file, checked at load time: one
line naming file and claim. (Judging claims: tests/test_claims.py.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from rkrepro.errors import TableError
from rkrepro.paper.loader import load_tables

SHIPPED = Path(__file__).resolve().parents[2] / "tables"


GOOD_CLAIM = """
claims:
  - id: c1
    text: t
    quantity: params
    relation: less
    left: {model: one-stage}
"""


def _tables_with(tmp_path: Path, claim_yaml: str) -> Path:
    folder = tmp_path / "tables"
    shutil.copytree(SHIPPED, folder)
    path = folder / "table4.yaml"
    text = path.read_text(encoding="utf-8")
    path.write_text(text[: text.index("claims:")] + claim_yaml, encoding="utf-8")
    return folder


def test_a_minimal_claim_loads(tmp_path):
    tables = load_tables(_tables_with(tmp_path, GOOD_CLAIM))
    (claim,) = tables["table4"].claims
    assert claim.right.model == "original" and claim.pairs == "row"
    assert claim.left.tables == ("table4",)


@pytest.mark.bad_input
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("quantity: params", "quantity: accuracy"), "field 'quantity' must be one of"),
        (("relation: less", "relation: about"), "field 'relation' must be one of"),
        (("{model: one-stage}", "{model: one-stage, tables: [Table 9]}"), "must list table"),
        (("{model: one-stage}", "{model: one-stage, family: densenet}"), "selects no cell"),
        (("{model: one-stage}", "{model: one-stage, shared: true}"), "did you mean 'share'"),
        (("id: c1", "id: C 1"), "claim id must be"),
        (("    text: t\n", ""), "missing required field 'text'"),
    ],
)
def test_bad_claims_are_one_line(tmp_path, change, message):
    folder = _tables_with(tmp_path, GOOD_CLAIM.replace(*change))
    with pytest.raises(TableError) as error:
        load_tables(folder)
    text = str(error.value)
    assert message in text and "table4.yaml" in text and "\n" not in text
