"""Rich renderables for a terminal: per table the grid in the paper's layout, its notes and bold
claims; the paper's claims as one table. Text from table files and the store is never parsed as
markup, and reaches the terminal without control characters (:mod:`rkrepro.textsafe`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rkrepro.report.build import (
    BETTER,
    DATASET_NAMES,
    FAILED_VERDICT,
    MISSING,
    RUNNING,
    UNREPORTED,
    WITHIN,
    WORSE,
    Report,
)
from rkrepro.report.claims import FAILS, HOLDS, UNDECIDED, ClaimResult
from rkrepro.report.render.content import (
    BOLD_CLAIMS_HEADERS,
    PAPER_CLAIMS_NOTE,
    Item,
    bold_claim_rows,
    layout,
    paper_claim_failures,
    paper_claim_texts,
    summary_text,
    table_notes,
)
from rkrepro.textsafe import clean, rich_text

VERDICT_STYLE = {
    WITHIN: "green",
    BETTER: "cyan",
    WORSE: "bold red",
    MISSING: "dim",
    RUNNING: "yellow",
    FAILED_VERDICT: "red",
    UNREPORTED: "dim",
}


def to_rich(report: Report) -> list[Any]:
    """Renderables for a rich Console: per table, the grid and its claims."""
    from rich import box
    from rich.table import Table as RichTable
    from rich.text import Text

    out: list[Any] = [rich_text(f"Metric: {report.metric_label}", style="bold")]
    hidden = sum(t.hidden_shortened for t in report.tables)
    if hidden:
        out.append(
            Text(f"{hidden} shortened run{'s' * (hidden != 1)} hidden (--include-shortened)")
        )
    for table_report in report.tables:
        table = table_report.table
        grid = layout(table_report)
        title = f"{table.title} ({DATASET_NAMES[table.dataset]}) - reported / reproduced / diff"
        rich_table = RichTable(
            title=rich_text(title), box=box.SIMPLE_HEAD, header_style="bold", padding=(0, 1)
        )
        for header in grid.headers:
            # Headers break at spaces; labels and variant names stay on one line.
            label = header in ("Original model", "Variant")
            rich_table.add_column(header.replace(" ", "\n"), no_wrap=label, overflow="fold")
        for index, line in enumerate(grid.lines):
            if index in grid.group_starts and index:
                rich_table.add_section()
            rich_table.add_row(*(_rich_item(item) for item in line))
        rich_table.caption = rich_text("\n".join(table_notes(report, table_report)[1:]))
        out.append(rich_table)
        out.append(rich_text(f"Verdicts: {summary_text(table_report) or 'none'}"))
        claims = bold_claim_rows(table_report)
        if claims:
            claim_table = RichTable(
                title=rich_text(f"{table.title}: bold claims"), header_style="bold"
            )
            for header in BOLD_CLAIMS_HEADERS:
                claim_table.add_column(header)
            for row in claims:
                claim_table.add_row(*(rich_text(value) for value in row))
            out.append(claim_table)
    return out


def _rich_item(item: Item):
    if item is None:
        return ""
    if isinstance(item, str):
        return rich_text(item)  # labels come from the table files: never rich markup
    text = rich_text(item.reported, style="bold" if item.bold else "")
    text.append("\n" + clean(item.reproduced))
    if item.diff or item.verdict:
        text.append("\n" + clean(item.diff))
    if item.verdict is not None:
        gap = " " if item.diff else ""
        text.append(gap + item.verdict, style=VERDICT_STYLE.get(item.verdict, ""))
    for note in item.notes:  # notes carry the store's tags (precision): no control character
        text.append("\n" + clean(note), style="dim")
    return text


CLAIM_STYLE = {HOLDS: "green", FAILS: "bold red", UNDECIDED: "yellow"}


def claims_rich(results: Sequence[ClaimResult]) -> list[Any]:
    from rich import box
    from rich.table import Table as RichTable

    table = RichTable(
        title="The paper's claims", box=box.SIMPLE_HEAD, header_style="bold", show_lines=True
    )
    table.add_column("Claim", overflow="fold", ratio=2)
    table.add_column("Statement", ratio=4)
    table.add_column("Paper", ratio=2)
    table.add_column("Reproduction", ratio=3)
    for result in results:
        name, section, text, paper, reproduced = paper_claim_texts(result)
        repro = rich_text(reproduced, style=CLAIM_STYLE[result.on_reproduced])
        for line in paper_claim_failures(result):
            repro.append("\n" + clean(line), style="dim")
        table.add_row(
            rich_text(f"{name}\n§{section}"),
            rich_text(text),
            rich_text(paper, style=CLAIM_STYLE[result.on_paper]),
            repro,
        )
    return [table, rich_text(PAPER_CLAIMS_NOTE, style="dim")]


def print_tables(report: Report, out: Path | None) -> None:
    """The tables on this terminal, or without colours and 220 columns wide in ``out`` (wide
    enough for every column of the paper's layout)."""
    from rich.console import Console

    if out is None:
        console = Console()
        for renderable in to_rich(report):
            console.print(renderable)
        return
    with out.open("w", encoding="utf-8") as handle:
        console = Console(file=handle, width=220, color_system=None)
        for renderable in to_rich(report):
            console.print(renderable)


def print_claims(results: Sequence[ClaimResult], out: Path | None) -> None:
    """The paper's claims on this terminal, or 160 columns wide in ``out``."""
    from rich.console import Console

    handle = out.open("w", encoding="utf-8") if out else None
    try:
        console = Console(file=handle, width=160 if handle else None)
        for renderable in claims_rich(results):
            console.print(renderable)
    finally:
        if handle:
            handle.close()
