"""``rkrepro report`` in six formats, one module each, every one rendering both a report's tables
and the paper's claims: :mod:`.terminal` (rich), :mod:`.markdown`, :mod:`.csv`, :mod:`.json`,
:mod:`.latex` and :mod:`.html`. What they share (the records, the paper's layout, the notes, the
text of numbers and verdicts) is :mod:`.content`. :func:`write_report` is the one place where a
format's name picks its renderer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from rkrepro.errors import RkreproError
from rkrepro.report.build import Report
from rkrepro.report.claims import ClaimResult
from rkrepro.report.render import csv, html, json, latex, markdown, terminal

# The formats whose page shows the paper's claims beside the tables and links each run to the
# MLflow UI: only for these does the caller load the claims and the UI's address.
PAGE_FORMATS = frozenset({"html"})


class TextRenderer(NamedTuple):
    """A format written as text: its rendering of a report's tables, and of the paper's claims
    (``None`` where the format has no form for them)."""

    tables: Callable[[Report], str]
    claims: Callable[[Sequence[ClaimResult]], str] | None


TEXT_RENDERERS = {
    "markdown": TextRenderer(markdown.to_markdown, markdown.claims_markdown),
    "csv": TextRenderer(csv.to_csv, csv.claims_csv),
    "json": TextRenderer(json.to_json, json.claims_json),
    "latex": TextRenderer(latex.to_latex, None),
}


def write_report(
    format: str,
    out: Path | None,
    echo: Callable[[str], None],
    report: Report | None,
    *,
    claims: Sequence[ClaimResult] = (),
    images: Sequence[Path] = (),
    ui_url: str | None = None,
) -> None:
    """``report``'s tables in ``format`` (without a report: the paper's ``claims`` alone), written
    to ``out``, else shown here: rich on this terminal, text through ``echo``. Only a page format
    also shows ``claims``, the ``images`` and run links to ``ui_url`` beside the tables."""
    if format == "rich":
        if report is None:
            terminal.print_claims(claims, out)
        else:
            terminal.print_tables(report, out)
        return
    text = _render_text(format, report, claims=claims, images=images, ui_url=ui_url)
    if format == "markdown" and report is not None:
        text += markdown.plots_markdown(images, out.parent if out else Path.cwd())
    if out is None:
        echo(text)
    else:
        out.write_text(text, encoding="utf-8")


def _render_text(
    format: str,
    report: Report | None,
    *,
    claims: Sequence[ClaimResult] = (),
    images: Sequence[Path] = (),
    ui_url: str | None = None,
) -> str:
    """The text of a format other than rich; see :func:`write_report`."""
    if format == "html":
        return html.to_html(report, images, claims=claims, ui_url=ui_url)
    renderer = TEXT_RENDERERS[format]
    if report is not None:
        return renderer.tables(report)
    if renderer.claims is None:
        raise RkreproError("--claims has no LaTeX form; use markdown, html, json or csv")
    return renderer.claims(claims)
