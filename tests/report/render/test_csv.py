"""CSV (:mod:`rkrepro.report.render.csv`)."""

from __future__ import annotations

import io

from rkrepro.report.render.content import RECORD_FIELDS
from rkrepro.report.render.csv import to_csv

from ..helpers_report import PAPER, R20_V, report_of


def test_csv_keeps_full_precision(store):
    result = report_of(store[0], "table4", include_shortened=True)
    frame = __import__("pandas").read_csv(io.StringIO(to_csv(result)))
    assert list(frame.columns) == list(RECORD_FIELDS)
    assert len(frame) == 24 + 1  # every cell, plus the one with shortened runs
    row = frame[(frame["model"] == R20_V) & ~frame["share"] & (frame["protocol"] == PAPER)]
    assert row["error_mean"].item() == (8.10 + 8.30) / 2
    assert row["verdict"].item() == "worse"
