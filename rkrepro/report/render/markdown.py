"""Markdown for GitHub: the tables in the paper's layout with their notes and bold claims, and
the paper's claims (``report --claims``).

Every text goes through :func:`md_text` (inline) or :func:`md_block` (at the start of a line):
a table file's title or label and a run's tags are data, and a Markdown renderer with HTML
enabled would run a ``<script>`` in them, follow a ``javascript:`` link, or start a row or a
heading at a newline.
"""

from __future__ import annotations

import html
import os
import re
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
from rkrepro.textsafe import one_line

# A ``]`` right before ``(``, ``[`` or ``:`` closes a link text, a reference or a definition;
# escaped, no link can form (``[x](javascript:...)``), while rkrepro's own ``[shortened]`` stays.
_LINK_CLOSE = re.compile(r"\](?=[(\[:])")
# What makes a line a heading, quote, list item, rule, fence or setext underline (CommonMark).
_BLOCK_START = re.compile(r"#{1,6}(\s|$)|>|[-+*](\s|$)|([-*_=]\s*){3,}$|`{3}|~{3}|=+\s*$")
_ORDERED_ITEM = re.compile(r"(\d{1,9})([.)])(?=\s|$)")


def md_text(text: str) -> str:
    """``text`` inline in Markdown, as text only: one line (a newline would end a table row),
    ``\\`` and ``|`` escaped, ``<``, ``>`` and ``&`` as HTML entities (no raw HTML), and no
    ``]`` that could close a link."""
    text = one_line(text).replace("\\", "\\\\")
    text = html.escape(text, quote=False).replace("|", "\\|")
    return _LINK_CLOSE.sub(r"\\]", text)


def md_block(text: str) -> str:
    """:func:`md_text` at the start of a line (a paragraph, a list item, a quote): a leading
    ``#``, ``>``, list marker or fence is escaped, so it starts no heading, quote or list."""
    text = md_text(text).strip()
    if _BLOCK_START.match(text):
        return "\\" + text
    return _ORDERED_ITEM.sub(r"\1\\\2", text, count=1) if _ORDERED_ITEM.match(text) else text


def to_markdown(report: Report) -> str:
    out = ["# rkrepro report", ""]
    out += [f"Metric: {md_text(report.metric_label)}.", ""]
    for table_report in report.tables:
        table = table_report.table
        grid = layout(table_report)
        out += [f"## {md_text(table.title)} ({DATASET_NAMES[table.dataset]})", ""]
        out += [f"> {md_block(table.caption)}", ""]
        out += [f"- {md_block(note)}" for note in table_notes(report, table_report)] + [""]
        out.append(_md_row(grid.headers))
        out.append("|" + "|".join("---" for _ in grid.headers) + "|")
        for line in grid.lines:
            out.append("| " + " | ".join(_md_item(item) for item in line) + " |")
        summary = md_text(summary_text(table_report) or "none")
        out += ["", f"Verdicts: {summary}.", ""]
        out += _md_claims(table_report)
    return "\n".join(out).rstrip() + "\n"


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(md_text(cell) for cell in cells) + " |"


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
        return md_text(item)
    reported = md_text(item.reported)
    reported = f"**{reported}**" if item.bold else reported
    entry = Entry(reported, md_text(item.reproduced), md_text(item.diff), item.verdict)
    return "<br>".join([entry_text(entry), *(md_text(note) for note in item.notes)])


def _md_claims(table_report: TableReport) -> list[str]:
    rows = bold_claim_rows(table_report)
    title = f"{BOLD_CLAIMS_TITLE}:"
    if not rows:
        return [title + " none in the paper, none on the reproduced numbers.", ""]
    out = [title, "", _md_row(BOLD_CLAIMS_HEADERS)]
    out.append("|" + "|".join("---" for _ in BOLD_CLAIMS_HEADERS) + "|")
    out += [_md_row(row) for row in rows]
    return [*out, ""]


def claims_markdown(results: Sequence[ClaimResult]) -> str:
    out = ["# rkrepro report: the paper's claims", "", md_block(PAPER_CLAIMS_NOTE), ""]
    out.append(_md_row(PAPER_CLAIMS_COLUMNS))
    out.append("|" + "|".join("---" for _ in PAPER_CLAIMS_COLUMNS) + "|")
    for result in results:
        cells = [md_text(cell) for cell in paper_claim_texts(result)]
        failures = [md_text(line) for line in paper_claim_failures(result)]
        if failures:
            cells[-1] += "<br>" + "<br>".join(failures)
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"
