"""Renderers of a :class:`~rkrepro.report.build.Report`: records (CSV, JSON), the paper's layout,
Markdown for GitHub, LaTeX with booktabs, one self-contained HTML file, and rich for terminals.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rkrepro import mlflow_keys
from rkrepro.report.build import (
    BETTER,
    DATASET_NAMES,
    FAILED_VERDICT,
    MISSING,
    RUNNING,
    SHORTENED,
    UNREPORTED,
    VERDICTS,
    WITHIN,
    WORSE,
    CellResult,
    Claim,
    Report,
    Reproduced,
    Stat,
    TableReport,
    difference,
    verdict_of,
)
from rkrepro.report.claims import (
    FAILS,
    HOLDS,
    UNDECIDED,
    ClaimResult,
    claim_record,
    pair_text,
    verdict_texts,
)
from rkrepro.status import (
    ACTIVE,
    FAILED,
    KILLED,
)

if TYPE_CHECKING:
    from rkrepro.targets import Row, Table


# --------------------------------------------------------------------------------------------
# Flat records: CSV and JSON, full precision.


def records(report: Report) -> list[dict[str, Any]]:
    """One record per cell, plus one per cell with shortened runs when asked; paper order."""
    out = []
    for table_report in report.tables:
        labels = {row.id: row.label for row in table_report.table.rows}
        for result in table_report.results:
            shortened = result.shortened
            for reproduced in (result.paper, shortened if shortened and shortened.runs else None):
                if reproduced is not None:
                    out.append(_record(report, result, reproduced, labels[result.cell.row]))
    return out


RECORD_FIELDS = (
    "table",
    "row",
    "row_label",
    "model",
    "printed_model",
    "share",
    "protocol",
    "metric",
    "reported_params_m",
    "params_paper",
    "params_total",
    "reported_error",
    "error_mean",
    "error_std",
    "n",
    "seeds",
    "precision",
    "readings",
    "legacy_runs",
    "other_reading_runs",
    "compare_readings",
    "compare_error_mean",
    "compare_error_std",
    "compare_n",
    "trained_as",
    "diff",
    "tolerance_pp",
    "verdict",
    "reported_top5",
    "top5_mean",
    "top5_std",
    "top5_n",
    "top5_diff",
    "bold",
    "star",
    "running",
    "failed",
    "killed",
    "run_ids",
)


def _record(report: Report, result: CellResult, rep: Reproduced, label: str) -> dict[str, Any]:
    cell = result.cell
    paper = rep.protocol == mlflow_keys.PROTOCOL_PAPER
    error, top5 = rep.error, rep.top5
    compare = result.compare if paper else None
    return {
        "table": cell.table,
        "row": cell.row,
        "row_label": label,
        "model": cell.model,
        "printed_model": cell.printed_model,
        "share": cell.share,
        "protocol": rep.protocol,
        "metric": report.metric,
        "reported_params_m": _float(cell.reported_params_m),
        "params_paper": result.params_paper,
        "params_total": result.params_total,
        "reported_error": _float(cell.reported_error),
        "error_mean": error.mean if error else None,
        "error_std": error.std if error else None,
        "n": error.n if error else 0,
        "seeds": list(error.seeds) if error else [],
        "precision": ",".join(rep.precisions),
        "readings": rep.reading_text,
        "legacy_runs": rep.legacy,
        "other_reading_runs": len(result.other_readings) if paper else 0,
        "compare_readings": compare.reading_text if compare else "",
        "compare_error_mean": compare.error.mean if compare and compare.error else None,
        "compare_error_std": compare.error.std if compare and compare.error else None,
        "compare_n": compare.error.n if compare and compare.error else 0,
        "trained_as": shortened_size(rep),
        "diff": difference(error, cell.reported_error),
        "tolerance_pp": result.tolerance,
        "verdict": verdict_of(rep, cell.reported_error, result.tolerance) if paper else SHORTENED,
        "reported_top5": _float(cell.reported_top5),
        "top5_mean": top5.mean if top5 else None,
        "top5_std": top5.std if top5 else None,
        "top5_n": top5.n if top5 else 0,
        "top5_diff": difference(top5, cell.reported_top5),
        "bold": cell.bold,
        "star": cell.star,
        "running": rep.count(*ACTIVE),
        "failed": rep.count(FAILED),
        "killed": rep.count(KILLED),
        "run_ids": [r.run_id for r in rep.runs],
    }


def shortened_size(reproduced: Reproduced) -> str:
    """``2 epochs, 512 images`` for shortened runs (their epochs and subset), else ``""``."""
    if reproduced.protocol != mlflow_keys.PROTOCOL_SHORTENED:
        return ""
    return "; ".join(sorted({r.size_text for r in reproduced.runs if r.size_text}))


def _float(value: float | None) -> float | None:
    return None if value is None else float(value)


def _claim_record(claim: Claim) -> dict[str, Any]:
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
                "claims": [_claim_record(c) for c in table_report.claims],
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


# --------------------------------------------------------------------------------------------
# The paper's layout: one line per variant, the row's original on its first line.


@dataclass(frozen=True)
class Entry:
    """One numeric cell of the layout: reported / reproduced / difference, and a verdict."""

    reported: str
    reproduced: str
    diff: str
    verdict: str | None = None  # None: not judged (parameters, top-5)
    bold: bool = False
    notes: tuple[str, ...] = ()  # extra lines, e.g. shortened-protocol numbers


Item = str | Entry | None


@dataclass(frozen=True)
class Layout:
    headers: tuple[str, ...]
    lines: tuple[tuple[Item, ...], ...]
    group_starts: frozenset[int] = field(default_factory=frozenset)


def layout(table_report: TableReport) -> Layout:
    """The grid of :func:`to_markdown` & co, in the column order the paper prints."""
    table = table_report.table
    imagenet = table.dataset == "imagenet"
    metrics = ("Top-1 (%)", "Top-5 (%)") if imagenet else ("Error (%)",)
    show_depth = any(str(row.depth) not in row.label for row in table.rows)
    m_columns = _m_columns(table)
    headers = ["Original model", *(["Depth"] if show_depth else []), "Params (M)", *metrics]
    headers += ["Variant", *(f"m{i} (k)" for i in m_columns), "Params (M)", *metrics]
    headers += ["Params with share (M)", *(f"{m[:-4]} with share (%)" for m in metrics)]
    results = {(r.cell.row, r.cell.model, r.cell.share): r for r in table_report.results}
    lines: list[tuple[Item, ...]] = []
    starts = set()
    for row in table.rows:
        starts.add(len(lines))
        original = results[(row.id, "original", False)]
        variants = list(dict.fromkeys(v.name for v in row.variants)) or [None]
        for index, name in enumerate(variants):
            first = index == 0
            line: list[Item] = [row.label if first else ""]
            if show_depth:
                line.append(str(row.depth) if first else "")
            line += _model_items(original, imagenet) if first else [None] * (1 + len(metrics))
            plain = results.get((row.id, name, False)) if name else None
            shared = results.get((row.id, name, True)) if name else None
            line.append(plain.cell.printed_model if plain else "")
            # m is a property of the row: printed once, on its first line, as in the paper.
            line += [_m_value(row, i) if first and plain else "" for i in m_columns]
            line += _model_items(plain, imagenet) if plain else [None] * (1 + len(metrics))
            line += _model_items(shared, imagenet) if shared else [None] * (1 + len(metrics))
            lines.append(tuple(line))
    return Layout(tuple(headers), tuple(lines), frozenset(starts))


def _m_columns(table: Table) -> list[int]:
    """Widths m1.. that vary across the table's rows; constant ones (m1 = 4k on ImageNet) are
    stated in the caption and, as in the paper, not listed."""
    widths = [row.m for row in table.rows if row.m is not None and row.variants]
    if not widths:
        return []
    count = min(len(m) for m in widths)
    return [i for i in range(1, count) if len({m[i] for m in widths}) > 1]


def _m_value(row: Row, index: int) -> str:
    return str(row.m[index]) if row.m is not None and index < len(row.m) else ""


def _model_items(result: CellResult, imagenet: bool) -> list[Item]:
    """Params, then error (or top-1 and top-5) entries of one cell."""
    cell = result.cell
    params = Entry(
        _printed(cell.reported_params_m),
        f"{result.params_m:.2f}",
        _signed(result.params_m - float(cell.reported_params_m))
        if cell.reported_params_m is not None
        else "",
    )
    items: list[Item] = [params, _error_entry(result)]
    if imagenet:
        items.append(
            Entry(
                _printed(cell.reported_top5) + ("*" if cell.star else ""),
                _stat_text(result.paper.top5),
                _signed(result.top5_diff),
            )
        )
    return items


def _error_entry(result: CellResult) -> Entry:
    cell = result.cell
    notes = ()
    if result.shortened is not None and result.shortened.runs:
        short = result.shortened
        text = _stat_text(short.error) if short.error else _state_text(short)
        diff = _signed(difference(short.error, cell.reported_error))
        size = shortened_size(short)
        mark = f"[shortened: {size}]" if size else "[shortened]"
        notes = (f"{mark} {text}" + (f" / {diff}" if diff else ""),)
    if result.paper.not_fp32:  # the paper trained in fp32: say when a number did not
        notes = (*notes, f"[{', '.join(result.paper.not_fp32)}]")
    if "resnet_stages" in dict(result.paper.readings):  # the reading this number is under
        notes = (*notes, f"[resnet_stages={dict(result.paper.readings)['resnet_stages']}]")
    if result.paper.legacy:
        notes = (*notes, f"[{result.paper.legacy} run(s) before the Torch-exact protocol]")
    if result.compare is not None:
        alt = result.compare
        text = _stat_text(alt.error) if alt.error else _state_text(alt)
        diff = _signed(difference(alt.error, cell.reported_error))
        notes = (*notes, f"[{alt.reading_text}] {text}" + (f" / {diff}" if diff else ""))
    verdict = result.verdict
    reproduced = _stat_text(result.paper.error) if result.paper.error else "-"
    return Entry(
        _printed(cell.reported_error) + ("*" if cell.star else ""),
        reproduced,
        _signed(result.diff),
        verdict,
        cell.bold,
        notes,
    )


def _printed(value: float | None) -> str:
    if value is None:
        return "-"
    decimals = getattr(value, "decimals", 2)
    return f"{float(value):.{decimals}f}"


def _signed(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:+.2f}" if round(value, 2) != 0 else "+0.00"  # never "-0.00"


def _stat_text(stat: Stat | None) -> str:
    if stat is None:
        return "-"
    if stat.std is None:
        return f"{stat.mean:.2f} (n=1)"
    return f"{stat.mean:.2f} ± {stat.std:.2f} (n={stat.n})"


def _state_text(reproduced: Reproduced) -> str:
    return verdict_of(reproduced, None, 0.0) if reproduced.error is None else "-"


def entry_text(entry: Entry, separator: str = " / ") -> str:
    """``4.51 / 4.60 ± 0.12 (n=3) / +0.09 within``; parameters omit the verdict."""
    parts = [entry.reported, entry.reproduced]
    if entry.diff:
        parts.append(entry.diff)
    text = separator.join(parts)
    if entry.verdict is not None:
        text += f" {entry.verdict}"
    return text


# --------------------------------------------------------------------------------------------
# Text around the tables.


def _tolerance_text(report: Report, table_report: TableReport) -> str:
    dataset = DATASET_NAMES[table_report.table.dataset]
    source = "--tolerance" if report.tolerance_override is not None else f"{dataset} default"
    judged = "top-1" if table_report.table.dataset == "imagenet" else "error"
    return f"±{table_report.tolerance:.2f} pp on {judged} ({source})"


def _notes(report: Report, table_report: TableReport) -> list[str]:
    table = table_report.table
    notes = [
        f"Error: {report.metric_label}, in %, mean ± sample std over seeds (n = seeds).",
        "Each cell: reported / reproduced / difference (reproduced - reported), then the verdict "
        f"for errors; tolerance {_tolerance_text(report, table_report)}.",
        "Params: reported / counted from the model (millions; conv and FC weights and biases).",
        "Only paper-protocol runs count"
        + (
            "; [shortened] lines are shortened-protocol runs, never judged."
            if report.include_shortened
            else "."
        ),
    ]
    if table_report.hidden_shortened:
        n = table_report.hidden_shortened
        notes.append(f"{n} shortened run{'s' * (n != 1)} hidden (--include-shortened).")
    if table.dataset == "imagenet":
        notes.append("Top-5 is the final-epoch value in every mode and is not judged.")
    chosen = {**dict(table.readings), **dict(report.readings)}
    if report.best:
        chosen["reported_error"] = "best"
    from rkrepro.readings import READINGS  # only those that apply to a model of the table

    used = {n for r in table_report.results for n in READINGS if READINGS[n].applies(r.cell.spec)}
    chosen = {k: v for k, v in chosen.items() if k in used}
    notes.append(
        "Readings: "
        + ", ".join(f"{k}={v}" for k, v in chosen.items())
        + (" (--reading)" if report.readings else " (the table's)")
        + "; only runs trained under them count, [name=value] notes say which."
    )
    if report.compare:
        compare = ", ".join(f"{k}={v}" for k, v in report.compare)
        notes.append(f"[{compare}] lines: the same cell under --compare {compare}, not judged.")
    if table.star_note:
        notes.append(table.star_note)
    return notes


def _summary_text(table_report: TableReport) -> str:
    counts = table_report.summary()
    return ", ".join(f"{name} {counts[name]}" for name in VERDICTS if counts[name])


def _claim_rows(table_report: TableReport) -> list[tuple[str, str, str, str, str, str]]:
    labels = {row.id: row.label for row in table_report.table.rows}
    rows = []
    for claim in table_report.claims:
        cell = claim.result.cell
        rows.append(
            (
                labels[cell.row],
                cell.printed_model,
                "yes" if cell.share else "no",
                "bold" if claim.paper_bold else "-",
                _yes_no(claim.on_paper),
                _yes_no(claim.on_reproduced),
            )
        )
    return rows


CLAIM_TITLE = (
    "Bold claims: fewer parameters and lower error than the row's original "
    "(reproduced: counted parameters and seed means)"
)
CLAIM_HEADERS = ("Row", "Variant", "Share", "Paper", "Rule on paper numbers", "On reproduced")


def _yes_no(value: bool | None) -> str:
    return {True: "holds", False: "fails", None: "undecided"}[value]


# --------------------------------------------------------------------------------------------
# Markdown (GitHub), LaTeX (booktabs), HTML (one self-contained file).


def to_markdown(report: Report) -> str:
    out = ["# rkrepro report", ""]
    out += [f"Metric: {report.metric_label}.", ""]
    for table_report in report.tables:
        table = table_report.table
        grid = layout(table_report)
        out += [f"## {table.title} ({DATASET_NAMES[table.dataset]})", ""]
        out += [f"> {table.caption}", ""]
        out += [f"- {note}" for note in _notes(report, table_report)] + [""]
        out.append("| " + " | ".join(grid.headers) + " |")
        out.append("|" + "|".join("---" for _ in grid.headers) + "|")
        for line in grid.lines:
            out.append("| " + " | ".join(_md_item(item) for item in line) + " |")
        out += ["", f"Verdicts: {_summary_text(table_report) or 'none'}.", ""]
        out += _md_claims(table_report)
    return "\n".join(out).rstrip() + "\n"


def _md_item(item: Item) -> str:
    if item is None:
        return ""
    if isinstance(item, str):
        return item.replace("|", "\\|")
    reported = f"**{item.reported}**" if item.bold else item.reported
    text = entry_text(Entry(reported, item.reproduced, item.diff, item.verdict))
    return "<br>".join([text, *item.notes]).replace("|", "\\|")


def _md_claims(table_report: TableReport) -> list[str]:
    rows = _claim_rows(table_report)
    title = f"{CLAIM_TITLE}:"
    if not rows:
        return [title + " none in the paper, none on the reproduced numbers.", ""]
    out = [title, "", "| " + " | ".join(CLAIM_HEADERS) + " |"]
    out.append("|" + "|".join("---" for _ in CLAIM_HEADERS) + "|")
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return [*out, ""]


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def _tex(text: str) -> str:
    escaped = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)
    return escaped.replace("±", r"$\pm$").replace("\u00d7", r"$\times$")


def to_latex(report: Report) -> str:
    out = ["% rkrepro report: needs \\usepackage{booktabs}", ""]
    for table_report in report.tables:
        table = table_report.table
        grid = layout(table_report)
        caption = (
            f"{table.title} reproduced ({DATASET_NAMES[table.dataset]}): {report.metric_label}"
        )
        caption += f"; tolerance {_tolerance_text(report, table_report)}."
        out += [r"\begin{table}[ht]", r"\centering", r"\scriptsize"]
        out += [rf"\caption{{{_tex(caption)}}}", rf"\label{{tab:rkrepro-{table.id}}}"]
        out.append(r"\begin{tabular}{" + "l" * len(grid.headers) + "}")
        out += [r"\toprule", " & ".join(_tex(h) for h in grid.headers) + r" \\", r"\midrule"]
        for index, line in enumerate(grid.lines):
            if index in grid.group_starts and index:
                out.append(r"\addlinespace")
            out.append(" & ".join(_tex_item(item) for item in line) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(out)


def _tex_item(item: Item) -> str:
    if item is None:
        return ""
    if isinstance(item, str):
        return _tex(item)
    reported = _tex(item.reported)
    if item.bold:
        reported = rf"\textbf{{{reported}}}"
    parts = [reported, _tex(item.reproduced), *([_tex(item.diff)] if item.diff else [])]
    text = " / ".join(parts)
    if item.verdict is not None:
        text += rf" \textit{{{item.verdict}}}"
    return "; ".join([text, *(_tex(note) for note in item.notes)])


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:110em}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:4px 6px;vertical-align:top;text-align:left}
th{background:#f3f3f3} tr.group td{border-top:2px solid #888}
td.v-within{background:#dafbe1}td.v-better{background:#ddf4ff}td.v-worse{background:#ffebe9}
td.v-running{background:#fff8c5}td.v-failed{background:#ffebe9}
.within{color:#1a7f37}.better{color:#0969da}.worse{color:#cf222e;font-weight:bold}
.missing,.unreported{color:#888}.running{color:#9a6700}.failed{color:#cf222e}
.note{color:#666;font-size:12px} img{max-width:100%} figure{margin:1em 0}
td.holds{background:#dafbe1}td.fails{background:#ffebe9}td.undecided{background:#fff8c5}
.legend span{padding:1px 6px;margin-right:6px;border:1px solid #ccc}
td.name{white-space:nowrap}
nav ul{display:flex;gap:1.5em;list-style:none;padding:0}
"""

_LEGEND = (
    '<p class="legend">Verdicts: <span class="within" style="background:#dafbe1">within '
    'tolerance</span><span class="better" style="background:#ddf4ff">better</span>'
    '<span class="worse" style="background:#ffebe9">worse</span>'
    '<span class="running" style="background:#fff8c5">running</span>'
    '<span class="missing">missing / unreported</span>; '
    "<b>bold</b>: the paper's bold cells; *: the starred protocol.</p>"
)


def to_html(
    report: Report | None,
    images: Sequence[Path] = (),
    *,
    claims: Sequence[ClaimResult] = (),
    ui_url: str | None = None,
) -> str:
    """One self-contained page: inline CSS, the tables in the paper's layout with verdict
    colours, the paper's claims, and the plots inlined as data URIs (no request leaves it).
    With ``ui_url`` (the MLflow UI), run ids link to their runs."""
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>rkrepro report</title>',
        f"<style>{_CSS}</style></head><body>",
        "<h1>rkrepro report</h1>",
    ]
    tables = report.tables if report is not None else ()
    if report is not None:
        out.append(f"<p>Metric: {html.escape(report.metric_label)}.</p>")
        out.append(_LEGEND)
    if tables or claims:
        out.append('<nav><ul class="toc">')
        out += [
            f'<li><a href="#{html.escape(t.table.id)}">{html.escape(t.table.title)}</a></li>'
            for t in tables
        ]
        if claims:
            out.append('<li><a href="#claims">The paper\'s claims</a></li>')
        if images:
            out.append('<li><a href="#plots">Plots</a></li>')
        out.append("</ul></nav>")
    for table_report in tables:
        out += _html_table(report, table_report, ui_url)
    if claims:
        out += claims_html(claims)
    if images:
        out.append('<h2 id="plots">Plots</h2>')
    for image in images:
        data = base64.b64encode(Path(image).read_bytes()).decode("ascii")
        name = html.escape(Path(image).name)
        out.append(f'<figure><img alt="{name}" src="data:image/png;base64,{data}">')
        out.append(f"<figcaption>{name}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _html_table(report: Report, table_report: TableReport, ui_url: str | None) -> list[str]:
    table = table_report.table
    grid = layout(table_report)
    out = [f'<h2 id="{html.escape(table.id)}">{html.escape(table.title)} '
           f"({DATASET_NAMES[table.dataset]})</h2>"]  # fmt: skip
    out.append(f"<p><em>{html.escape(table.caption)}</em></p><ul>")
    out += [f"<li>{html.escape(note)}</li>" for note in _notes(report, table_report)]
    out.append(f'</ul><table class="paper" data-table="{html.escape(table.id)}"><thead><tr>')
    out += [f"<th>{html.escape(h)}</th>" for h in grid.headers]
    out.append("</tr></thead><tbody>")
    for index, line in enumerate(grid.lines):
        group = ' class="group"' if index in grid.group_starts and index else ""
        cells = "".join(_html_item(item) for item in line)
        out.append(f"<tr{group}>{cells}</tr>")
    out.append("</tbody></table>")
    out.append(f"<p>Verdicts: {html.escape(_summary_text(table_report) or 'none')}.</p>")
    out += _html_claims(table_report)
    out += _html_runs(table_report, ui_url)
    return out


def _html_runs(table_report: TableReport, ui_url: str | None) -> list[str]:
    """The runs behind the table's numbers; ids link to the MLflow UI when its URL is known."""
    runs = [
        (result, run)
        for result in table_report.results
        for reproduced in (result.paper, result.shortened)
        if reproduced is not None
        for run in reproduced.runs
    ]
    if not runs:
        return ['<p class="note">No reproduced runs yet for this table.</p>']
    out = ["<details><summary>Runs</summary><table><thead><tr>"]
    out += [f"<th>{h}</th>" for h in ("Cell", "Seed", "Protocol", "Status", "Run id")]
    out.append("</tr></thead><tbody>")
    for result, run in runs:
        run_id = html.escape(run.run_id)
        link = run_id
        if ui_url and run.experiment_id:
            href = f"{ui_url.rstrip('/')}/#/experiments/{run.experiment_id}/runs/{run.run_id}"
            link = f'<a href="{html.escape(href)}">{run_id}</a>'
        out.append(
            f"<tr><td>{html.escape(result.cell.key)}</td><td>{html.escape(str(run.seed))}</td>"
            f"<td>{html.escape(run.protocol)}</td><td>{html.escape(run.status)}</td>"
            f"<td>{link}</td></tr>"
        )
    out.append("</tbody></table></details>")
    return out


def _html_item(item: Item) -> str:
    if item is None:
        return "<td></td>"
    if isinstance(item, str):
        return f'<td class="name">{html.escape(item)}</td>'
    reported = html.escape(item.reported)
    if item.bold:
        reported = f"<b>{reported}</b>"
    parts = [
        reported,
        html.escape(item.reproduced),
        *([html.escape(item.diff)] if item.diff else []),
    ]
    text = " / ".join(parts)
    if item.verdict is not None:
        text += f' <span class="{item.verdict}">{item.verdict}</span>'
    notes = "".join(f'<br><span class="note">{html.escape(n)}</span>' for n in item.notes)
    verdict = f' class="v-{item.verdict}"' if item.verdict is not None else ""
    return f"<td{verdict}>{text}{notes}</td>"


def _html_claims(table_report: TableReport) -> list[str]:
    rows = _claim_rows(table_report)
    title = CLAIM_TITLE
    if not rows:
        return [f"<p>{title}: none in the paper, none on the reproduced numbers.</p>"]
    out = [f"<p>{title}:</p><table><thead><tr>"]
    out += [f"<th>{html.escape(h)}</th>" for h in CLAIM_HEADERS]
    out.append("</tr></thead><tbody>")
    out += ["<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>" for row in rows]
    out.append("</tbody></table>")
    return out


# --------------------------------------------------------------------------------------------
# Rich (terminal).

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

    out: list[Any] = [Text(f"Metric: {report.metric_label}", style="bold")]
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
            title=Text(title), box=box.SIMPLE_HEAD, header_style="bold", padding=(0, 1)
        )
        for header in grid.headers:
            # Headers break at spaces; labels and variant names stay on one line.
            label = header in ("Original model", "Variant")
            rich_table.add_column(header.replace(" ", "\n"), no_wrap=label, overflow="fold")
        for index, line in enumerate(grid.lines):
            if index in grid.group_starts and index:
                rich_table.add_section()
            rich_table.add_row(*(_rich_item(item) for item in line))
        rich_table.caption = Text("\n".join(_notes(report, table_report)[1:]))
        out.append(rich_table)
        out.append(Text(f"Verdicts: {_summary_text(table_report) or 'none'}"))
        claims = _claim_rows(table_report)
        if claims:
            claim_table = RichTable(title=Text(f"{table.title}: bold claims"), header_style="bold")
            for header in CLAIM_HEADERS:
                claim_table.add_column(header)
            for row in claims:
                claim_table.add_row(*(Text(value) for value in row))
            out.append(claim_table)
    return out


def _rich_item(item: Item):
    from rich.text import Text

    if item is None:
        return ""
    if isinstance(item, str):
        return Text(item)  # labels come from the table files: never rich markup
    text = Text(item.reported, style="bold" if item.bold else "")
    text.append("\n" + item.reproduced)
    if item.diff or item.verdict:
        text.append("\n" + item.diff)
    if item.verdict is not None:
        gap = " " if item.diff else ""
        text.append(gap + item.verdict, style=VERDICT_STYLE.get(item.verdict, ""))
    for note in item.notes:
        text.append("\n" + note, style="dim")
    return text


# --------------------------------------------------------------------------------------------
# The paper's claims (``report --claims``).

CLAIM_COLUMNS = ("Claim", "Section", "Statement", "On the paper's numbers", "On the reproduction")


def _claim_lines(result: ClaimResult) -> tuple[str, str, str, str, str]:
    paper, reproduced = verdict_texts(result)
    return (result.claim.id, result.claim.section, result.claim.text, paper, reproduced)


def _claim_failures(result: ClaimResult) -> list[str]:
    lines = [f"paper: {pair_text(p, False)}" for p in result.failing(False)[:3]]
    return lines + [f"reproduction: {pair_text(p, True)}" for p in result.failing(True)[:3]]


CLAIMS_NOTE = (
    "Each claim is a predicate over pairs of cells, judged by the same rule on the paper's printed "
    "numbers and on the reproduction (counted parameters; seed means of paper-protocol runs). "
    "Pairs the paper printed no number for are left out."
)


def claims_markdown(results: Sequence[ClaimResult]) -> str:
    out = ["# rkrepro report: the paper's claims", "", CLAIMS_NOTE, ""]
    out.append("| " + " | ".join(CLAIM_COLUMNS) + " |")
    out.append("|" + "|".join("---" for _ in CLAIM_COLUMNS) + "|")
    for result in results:
        cells = list(_claim_lines(result))
        failures = _claim_failures(result)
        if failures:
            cells[-1] += "<br>" + "<br>".join(failures)
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(out) + "\n"


def claims_json(results: Sequence[ClaimResult]) -> str:
    return json.dumps({"claims": [claim_record(r) for r in results]}, indent=2) + "\n"


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


def claims_html(results: Sequence[ClaimResult]) -> list[str]:
    """The claims section of the HTML page: one row per claim, verdicts coloured."""
    out = ['<h2 id="claims">The paper\'s claims</h2>', f"<p>{html.escape(CLAIMS_NOTE)}</p>"]
    out.append('<table class="claims"><thead><tr>')
    out += [f"<th>{html.escape(h)}</th>" for h in CLAIM_COLUMNS]
    out.append("</tr></thead><tbody>")
    for result in results:
        name, section, text, paper, reproduced = (html.escape(c) for c in _claim_lines(result))
        failures = "".join(
            f'<br><span class="note">{html.escape(line)}</span>' for line in _claim_failures(result)
        )
        out.append(
            f'<tr data-claim="{name}"><td>{name}</td><td>{section}</td><td>{text}</td>'
            f'<td class="{result.on_paper}">{paper}</td>'
            f'<td class="{result.on_reproduced}">{reproduced}{failures}</td></tr>'
        )
    out.append("</tbody></table>")
    return out


CLAIM_STYLE = {HOLDS: "green", FAILS: "bold red", UNDECIDED: "yellow"}


def claims_rich(results: Sequence[ClaimResult]) -> list[Any]:
    from rich import box
    from rich.table import Table as RichTable
    from rich.text import Text

    table = RichTable(
        title="The paper's claims", box=box.SIMPLE_HEAD, header_style="bold", show_lines=True
    )
    table.add_column("Claim", overflow="fold", ratio=2)
    table.add_column("Statement", ratio=4)
    table.add_column("Paper", ratio=2)
    table.add_column("Reproduction", ratio=3)
    for result in results:
        name, section, text, paper, reproduced = _claim_lines(result)
        repro = Text(reproduced, style=CLAIM_STYLE[result.on_reproduced])
        for line in _claim_failures(result):
            repro.append("\n" + line, style="dim")
        table.add_row(
            Text(f"{name}\n§{section}"),
            Text(text),
            Text(paper, style=CLAIM_STYLE[result.on_paper]),
            repro,
        )
    return [table, Text(CLAIMS_NOTE, style="dim")]


FORMATS: dict[str, Callable[[Report], str]] = {
    "markdown": to_markdown,
    "csv": to_csv,
    "json": to_json,
    "latex": to_latex,
    "html": to_html,
}
