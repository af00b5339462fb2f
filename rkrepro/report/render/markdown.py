"""Markdown for GitHub: the tables in the paper's layout with their notes and bold claims, and
the paper's claims (``report --claims``)."""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

from rkrepro.report.build import DATASET_NAMES, Report, TableReport
from rkrepro.report.claims import ClaimResult
from rkrepro.report.render.content import (
    BOLD_CLAIMS_HEADERS,
    BOLD_CLAIMS_TITLE,
    PAPER_CLAIMS_COLUMNS,
    PAPER_CLAIMS_NOTE,
    Entry,
    Item,
    bold_claim_rows,
    entry_text,
    layout,
    paper_claim_failures,
    paper_claim_texts,
    summary_text,
    table_notes,
)


def to_markdown(report: Report) -> str:
    out = ["# rkrepro report", ""]
    out += [f"Metric: {report.metric_label}.", ""]
    for table_report in report.tables:
        table = table_report.table
        grid = layout(table_report)
        out += [f"## {table.title} ({DATASET_NAMES[table.dataset]})", ""]
        out += [f"> {table.caption}", ""]
        out += [f"- {note}" for note in table_notes(report, table_report)] + [""]
        out.append("| " + " | ".join(grid.headers) + " |")
        out.append("|" + "|".join("---" for _ in grid.headers) + "|")
        for line in grid.lines:
            out.append("| " + " | ".join(_md_item(item) for item in line) + " |")
        out += ["", f"Verdicts: {summary_text(table_report) or 'none'}.", ""]
        out += _md_claims(table_report)
    return "\n".join(out).rstrip() + "\n"


def plots_markdown(images: Sequence[Path], folder: Path) -> str:
    """A section linking each plot (``report --plots``), relative to ``folder`` (where the
    Markdown file is), as images that GitHub and editors show in place."""
    if not images:
        return ""
    out = ["", "## Plots", ""]
    for image in images:
        try:
            target = os.path.relpath(Path(image).absolute(), Path(folder).absolute())
        except ValueError:  # another drive
            target = str(Path(image).absolute())
        link = urllib.parse.quote(Path(target).as_posix())
        name = Path(image).stem.replace("_", " ")
        out += [f"![{name}]({link})", ""]
    return "\n".join(out)


def _md_item(item: Item) -> str:
    if item is None:
        return ""
    if isinstance(item, str):
        return item.replace("|", "\\|")
    reported = f"**{item.reported}**" if item.bold else item.reported
    text = entry_text(Entry(reported, item.reproduced, item.diff, item.verdict))
    return "<br>".join([text, *item.notes]).replace("|", "\\|")


def _md_claims(table_report: TableReport) -> list[str]:
    rows = bold_claim_rows(table_report)
    title = f"{BOLD_CLAIMS_TITLE}:"
    if not rows:
        return [title + " none in the paper, none on the reproduced numbers.", ""]
    out = [title, "", "| " + " | ".join(BOLD_CLAIMS_HEADERS) + " |"]
    out.append("|" + "|".join("---" for _ in BOLD_CLAIMS_HEADERS) + "|")
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return [*out, ""]


def claims_markdown(results: Sequence[ClaimResult]) -> str:
    out = ["# rkrepro report: the paper's claims", "", PAPER_CLAIMS_NOTE, ""]
    out.append("| " + " | ".join(PAPER_CLAIMS_COLUMNS) + " |")
    out.append("|" + "|".join("---" for _ in PAPER_CLAIMS_COLUMNS) + "|")
    for result in results:
        cells = list(paper_claim_texts(result))
        failures = paper_claim_failures(result)
        if failures:
            cells[-1] += "<br>" + "<br>".join(failures)
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(out) + "\n"
