"""CSV at full precision: one line per record (:data:`~.content.RECORD_FIELDS`), and one per
claim of the paper.

A spreadsheet runs a cell that begins with ``=``, ``+``, ``-`` or ``@`` (or a tab or carriage
return) as a formula (``=HYPERLINK(...)``, ``+cmd|' /C calc'!A0``), and labels, claims and a
store's tags are data. Numbers and text are told apart by their type in the records, not by
how they look: a number (``int``/``float``, e.g. a difference of ``-0.12``) is written as a
number; every text cell that begins with one of those characters gets a leading ``'``, as OWASP
recommends (a text that merely looks like a negative number is text, and is quoted too).

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

# What makes a spreadsheet read a cell as a formula (OWASP, "CSV Injection").
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def to_csv(report: Report) -> str:
    rows = records(report)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RECORD_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {
                key: csv_text(";".join(value)) if isinstance(value, list) else csv_value(value)
                for key, value in row.items()
            }
        )
    return buffer.getvalue()


def csv_value(value: Any) -> Any:
    """A record's value as a cell: a number as a number, text as inert text."""
    if isinstance(value, float):
        return repr(value)  # shortest round-tripping form: full precision
    if isinstance(value, str):
        return csv_text(value)
    return "" if value is None else value


def csv_text(text: str) -> str:
    """Text that no spreadsheet reads as a formula: a leading ``'`` where it would."""
    return "'" + text if text.startswith(FORMULA_START) else text


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
        writer.writerow({key: csv_value(value) for key, value in claim_record(result).items()})
    return buffer.getvalue()
