"""Markdown (:mod:`rkrepro.report.render.markdown`): golden files and well-formed tables.

Set ``RKREPRO_UPDATE_GOLDEN=1`` to rewrite the golden files after an intended change.
"""

from __future__ import annotations

import os

import pytest

from rkrepro.report.render.markdown import to_markdown

from ..helpers_report import GOLDEN, report_of


@pytest.mark.parametrize(
    ("name", "table", "options"),
    [
        ("table4", "table4", {}),
        ("table3", "table3", {}),
        ("table1_best_shortened", "table1", {"best": True, "include_shortened": True}),
    ],
)
def test_golden_markdown(store, name, table, options):
    text = to_markdown(report_of(store[0], table, **options))
    path = GOLDEN / f"{name}.md"
    if os.environ.get("RKREPRO_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8")


def test_markdown_tables_are_well_formed(store):
    for line in to_markdown(report_of(store[0], None)).splitlines():
        if line.startswith("|"):
            assert line.endswith("|")
