"""Rich renderables for a terminal: per table the grid in the paper's layout, its notes and bold
claims; the paper's claims as one table. Text from table files and the store is never parsed as
markup, and reaches the terminal without control characters (:mod:`rkrepro.textsafe`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rkrepro import screen
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
    TableReport,
)
from rkrepro.report.claims import FAILS, HOLDS, UNDECIDED, ClaimResult
from rkrepro.report.render.content import (
    BOLD_CLAIMS_HEADERS,
    PAPER_CLAIMS_NOTE,
    Entry,
    Item,
    bold_claim_rows,
    layout,
    paper_claim_failures,
    paper_claim_texts,
    summary_text,
    table_notes,
)
from rkrepro.textsafe import clean, rich_text

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table as RichTable

VERDICT_STYLE = {
    WITHIN: "green",
    BETTER: "cyan",
    WORSE: "bold red",
    MISSING: "dim",
    RUNNING: "yellow",
    FAILED_VERDICT: "red",
    UNREPORTED: "dim",
}


def to_rich(report: Report, console: Console | None = None) -> list[Any]:
    """Renderables for a rich Console: per table, the grid and its claims, each in the widest
    layout that fits ``console`` (:mod:`rkrepro.screen`): the paper's layout where it fits,
    else each row's models one per line."""
    from rich.console import Console

    console = console or Console()
    out: list[Any] = [rich_text(f"Metric: {report.metric_label}", style="bold")]
    hidden = sum(t.hidden_shortened for t in report.tables)
    if hidden:
        out.append(
            rich_text(f"{hidden} shortened run{'s' * (hidden != 1)} hidden (--include-shortened)")
        )
    for table_report in report.tables:
        table = table_report.table
        layouts = [
            lambda t=table_report: _paper_layout(report, t),
            lambda t=table_report: _stacked_layout(report, t),
        ]
        out.append(screen.first_fitting(console, layouts, wrap={MODEL_COLUMN}))
        out.append(rich_text(f"Verdicts: {summary_text(table_report) or 'none'}"))
        claims = bold_claim_rows(table_report)
        if claims:
            out.append(
                screen.first_fitting(
                    console,
                    [
                        lambda t=table, c=claims: _bold_claims(t.title, c),
                        lambda t=table, c=claims: screen.stacked(_bold_claims(t.title, c, True)),
                    ],
                )
            )
    return out


MODEL_COLUMN = "Model"


def _table(report: Report, table_report: TableReport, title: str) -> RichTable:
    from rich import box
    from rich.table import Table as RichTable

    return RichTable(
        title=rich_text(title),
        box=box.SIMPLE_HEAD,
        header_style="bold",
        padding=(0, 1),
        title_justify="left",
        caption=rich_text("\n".join(table_notes(report, table_report)[1:])),
        caption_justify="left",
    )


def _paper_layout(report: Report, table_report: TableReport) -> RichTable:
    """The paper's layout: per row its original, and per variant a line with its unshared and
    shared cells side by side."""
    table = table_report.table
    grid = layout(table_report)
    title = f"{table.title} ({DATASET_NAMES[table.dataset]}) - reported / reproduced / diff"
    rich_table = _table(report, table_report, title)
    for header in grid.headers:
        rich_table.add_column(header.replace(" ", "\n"))  # headers break at spaces
    for index, line in enumerate(grid.lines):
        if index in grid.group_starts and index:
            rich_table.add_section()
        rich_table.add_row(*(_rich_item(item) for item in line))
    return rich_table


def _stacked_layout(report: Report, table_report: TableReport) -> RichTable:
    """For a narrow terminal: per row a heading (its label, depth and m), then its original,
    each variant and each shared variant on a line of its own: model, parameters, error(s).
    Notes go under the model's name, where they may wrap."""

    table = table_report.table
    grid = layout(table_report)
    headers = grid.headers
    metrics = 2 if table.dataset == "imagenet" else 1
    original = headers.index("Params (M)")
    variant = headers.index("Variant")
    plain = headers.index("Params (M)", variant)
    shared = headers.index("Params with share (M)")
    m_columns = [i for i, h in enumerate(headers) if h.startswith("m") and h.endswith("(k)")]
    title = f"{table.title} ({DATASET_NAMES[table.dataset]}) - reported / reproduced / diff"
    out = _table(report, table_report, title)
    out.show_edge = False
    out.pad_edge = False
    names = [str(line[variant]) for line in grid.lines] + [str(line[0]) for line in grid.lines]
    widest = max(len(name) for name in names) + len(" share")
    out.add_column(MODEL_COLUMN, min_width=widest)
    for header in headers[original : original + 1 + metrics]:
        out.add_column(header.replace(" ", "\n"))
    for index, line in enumerate(grid.lines):
        if index in grid.group_starts:
            if index:
                out.add_section()
            heading = str(line[0])
            if "Depth" in headers and line[headers.index("Depth")]:
                heading += f", depth {line[headers.index('Depth')]}"
            heading += "".join(
                f"; {headers[i].split(' ')[0]} = {line[i]}k" for i in m_columns if line[i]
            )
            out.add_row(rich_text(heading, style="bold"), *([""] * (1 + metrics)))
            entries = line[original : original + 1 + metrics]
            out.add_row(*_stacked_row("original", entries))
        name = str(line[variant])
        for suffix, start in (("", plain), (" share", shared)):
            entries = line[start : start + 1 + metrics]
            if name and any(entry is not None for entry in entries):
                out.add_row(*_stacked_row(name + suffix, entries))
    return out


def _stacked_row(name: str, entries: Sequence[Item]) -> list[Any]:

    label = rich_text(screen.INDENT + name)
    cells = []
    for entry in entries:
        if isinstance(entry, Entry) and entry.notes:
            for note in entry.notes:
                label.append("\n" + screen.INDENT * 2 + clean(note), style="dim")
            entry = replace(entry, notes=())
        cells.append(_rich_item(entry))
    return [label, *cells]


def _bold_claims(title: str, rows, narrow: bool = False) -> RichTable:
    from rich.table import Table as RichTable

    claim_table = RichTable(
        title=rich_text(f"{title}: bold claims"), header_style="bold", title_justify="left"
    )
    headers = list(BOLD_CLAIMS_HEADERS)
    if narrow:  # the share joins the variant's name; headers take two lines
        headers.remove("Share")
    broken = {"Rule on paper numbers": "Rule on\npaper numbers", "On reproduced": "On\nreproduced"}
    for header in headers:
        claim_table.add_column(broken.get(header, header) if narrow else header)
    for row in rows:
        values = list(row)
        if narrow:
            values[1] += " share" if values[2] == "yes" else ""
            del values[2]
        claim_table.add_row(*(rich_text(value) for value in values))
    return claim_table


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


def claims_rich(results: Sequence[ClaimResult], console: Console | None = None) -> list[Any]:
    """The paper's claims: one line each with statement and verdicts where it fits, else the
    claim's id and section above them."""
    from rich.console import Console

    console = console or Console()
    layouts = [lambda: _claims_table(results), lambda: screen.stacked(_claims_table(results))]
    free = {"Statement", "Paper", "Reproduction"}
    return [
        screen.first_fitting(console, layouts, wrap=free),
        rich_text(PAPER_CLAIMS_NOTE, style="dim"),
    ]


def _claims_table(results: Sequence[ClaimResult]) -> RichTable:
    from rich import box
    from rich.table import Table as RichTable

    table = RichTable(
        title="The paper's claims",
        box=box.SIMPLE_HEAD,
        header_style="bold",
        show_lines=True,
        title_justify="left",
    )
    table.add_column("Claim")
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
    return table


# The first line of a report written with --out in this format: what tells rkrepro later that
# the file is its own report (and so may be replaced).
FILE_MARK = "rkrepro report"


def print_tables(report: Report, out: Path | None) -> None:
    """The tables on this terminal (as wide as it is), or without colours and 220 columns wide
    in ``out`` (wide enough for every column of the paper's layout), after a first line that
    marks the file as an rkrepro report."""
    _print(lambda console: to_rich(report, console), out, 220)


def print_claims(results: Sequence[ClaimResult], out: Path | None) -> None:
    """The paper's claims on this terminal, or 160 columns wide in ``out``."""
    _print(lambda console: claims_rich(results, console), out, 160)


def _print(renderables, out: Path | None, file_width: int) -> None:
    from rich.console import Console

    if out is None:
        console = Console()
        for renderable in renderables(console):
            console.print(renderable)
        return
    with out.open("w", encoding="utf-8") as handle:
        console = Console(file=handle, width=file_width, color_system=None)
        console.print(FILE_MARK, markup=False, highlight=False)
        for renderable in renderables(console):
            console.print(renderable)
