"""JSON at full precision: the records per table with its summary and bold claims, and the
paper's claims.

``import json`` below is the standard library's (imports are absolute); this module is only
ever imported by its full name, ``rkrepro.report.render.json``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from rkrepro.report.build import Claim, Report, TableReport
from rkrepro.report.claims import ClaimResult, claim_record
from rkrepro.report.render.content import records


def _bold_claim_record(claim: Claim) -> dict[str, Any]:
    cell = claim.result.cell
    return {
        "table": cell.table,
        "row": cell.row,
        "model": cell.model,
        "share": cell.share,
        "paper_bold": claim.paper_bold,
        "on_paper_numbers": claim.on_paper,
        "on_reproduced_numbers": claim.on_reproduced,
    }


def to_json(report: Report) -> str:
    tables = []
    for table_report in report.tables:
        table = table_report.table
        tables.append(
            {
                "id": table.id,
                "title": table.title,
                "dataset": table.dataset,
                "tolerance_pp": table_report.tolerance,
                "summary": table_report.summary(),
                "cells": [r for r in records(_only(report, table_report))],
                "claims": [_bold_claim_record(c) for c in table_report.claims],
            }
        )
    document = {
        "metric": report.metric,
        "metric_label": report.metric_label,
        "include_shortened": report.include_shortened,
        "readings": dict(report.readings),
        "compare": dict(report.compare),
        "tables": tables,
    }
    return json.dumps(document, indent=2, allow_nan=False) + "\n"


def _only(report: Report, table_report: TableReport) -> Report:
    return replace(report, tables=(table_report,))


def claims_json(results: Sequence[ClaimResult]) -> str:
    return json.dumps({"claims": [claim_record(r) for r in results]}, indent=2) + "\n"
