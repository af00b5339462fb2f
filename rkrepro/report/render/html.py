"""One self-contained HTML page: inline CSS, the tables in the paper's layout with verdict
colours, their runs (linked to the MLflow UI when its address is known), the paper's claims, and
the plots as data URIs."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

from rkrepro.report.build import DATASET_NAMES, Report, TableReport
from rkrepro.report.claims import ClaimResult
from rkrepro.report.render.content import (
    BOLD_CLAIMS_HEADERS,
    BOLD_CLAIMS_TITLE,
    PAPER_CLAIMS_COLUMNS,
    PAPER_CLAIMS_NOTE,
    Item,
    bold_claim_rows,
    layout,
    paper_claim_failures,
    paper_claim_texts,
    summary_text,
    table_notes,
)
from rkrepro.tracking import keys as mlflow_keys

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
    out += [f"<li>{html.escape(note)}</li>" for note in table_notes(report, table_report)]
    out.append(f'</ul><table class="paper" data-table="{html.escape(table.id)}"><thead><tr>')
    out += [f"<th>{html.escape(h)}</th>" for h in grid.headers]
    out.append("</tr></thead><tbody>")
    for index, line in enumerate(grid.lines):
        group = ' class="group"' if index in grid.group_starts and index else ""
        cells = "".join(_html_item(item) for item in line)
        out.append(f"<tr{group}>{cells}</tr>")
    out.append("</tbody></table>")
    out.append(f"<p>Verdicts: {html.escape(summary_text(table_report) or 'none')}.</p>")
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
            href = mlflow_keys.ui_url(ui_url, run.experiment_id, run.run_id)
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
    rows = bold_claim_rows(table_report)
    title = BOLD_CLAIMS_TITLE
    if not rows:
        return [f"<p>{title}: none in the paper, none on the reproduced numbers.</p>"]
    out = [f"<p>{title}:</p><table><thead><tr>"]
    out += [f"<th>{html.escape(h)}</th>" for h in BOLD_CLAIMS_HEADERS]
    out.append("</tr></thead><tbody>")
    out += ["<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>" for row in rows]
    out.append("</tbody></table>")
    return out


def claims_html(results: Sequence[ClaimResult]) -> list[str]:
    """The claims section of the HTML page: one row per claim, verdicts coloured."""
    out = ['<h2 id="claims">The paper\'s claims</h2>', f"<p>{html.escape(PAPER_CLAIMS_NOTE)}</p>"]
    out.append('<table class="claims"><thead><tr>')
    out += [f"<th>{html.escape(h)}</th>" for h in PAPER_CLAIMS_COLUMNS]
    out.append("</tr></thead><tbody>")
    for result in results:
        name, section, text, paper, reproduced = (html.escape(c) for c in paper_claim_texts(result))
        failures = "".join(
            f'<br><span class="note">{html.escape(line)}</span>'
            for line in paper_claim_failures(result)
        )
        out.append(
            f'<tr data-claim="{name}"><td>{name}</td><td>{section}</td><td>{text}</td>'
            f'<td class="{result.on_paper}">{paper}</td>'
            f'<td class="{result.on_reproduced}">{reproduced}{failures}</td></tr>'
        )
    out.append("</tbody></table>")
    return out
