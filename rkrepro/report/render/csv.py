"""CSV at full precision: one line per record (:data:`~.content.RECORD_FIELDS`), and one per
claim of the paper.

``import csv`` below is the standard library's (imports are absolute); this module is only
ever imported by its full name, ``rkrepro.report.render.csv``."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

from rkrepro.report.build import Report
from rkrepro.report.claims import ClaimResult, claim_record
from rkrepro.report.render.content import RECORD_FIELDS, records


def to_csv(report: Report) -> str:
    rows = records(report)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RECORD_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {
                key: ";".join(value) if isinstance(value, list) else _csv_value(value)
                for key, value in row.items()
            }
        )
    return buffer.getvalue()


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return repr(value)  # shortest round-tripping form: full precision
    return "" if value is None else value


CLAIM_CSV_FIELDS = (
    "id",
    "table",
    "section",
    "on_paper",
    "on_reproduced",
    "pairs",
    "pairs_not_printed",
    "pairs_decided",
    "seeds_min",
    "seeds_max",
    "text",
)


def claims_csv(results: Sequence[ClaimResult]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=CLAIM_CSV_FIELDS, lineterminator="\n", extrasaction="ignore"
    )
    writer.writeheader()
    for result in results:
        writer.writerow(claim_record(result))
    return buffer.getvalue()
