"""What the formats share (:mod:`rkrepro.report.render.content`): the paper's layout."""

from __future__ import annotations

from rkrepro.report.render.content import layout

from ..helpers_report import report_of


def test_layout_lines_have_one_item_per_header(store):
    for table_report in report_of(store[0], None).tables:
        grid = layout(table_report)
        assert {len(line) for line in grid.lines} == {len(grid.headers)}
