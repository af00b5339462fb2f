"""The calls the report tests share: the store itself is ``tests/helpers_store.py`` (filled
through the MLflow client with the schema's tags and per-epoch metrics, so both readers see
what training writes). Reports use a fixed parameter counter so that golden files pin the
report, not the models.
"""

from __future__ import annotations

from pathlib import Path

import typer
from helpers_store import PAPER, R20_MULTI, R20_V, RUNS, SHORT, START, fill
from typer.testing import CliRunner

from rkrepro import paper
from rkrepro import report as reporting

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
__all__ = ["PAPER", "R20_MULTI", "R20_V", "RUNS", "SHORT", "START", "fill"]


def fixed_counter():
    """Parameters = the paper's printed count where there is one: pins goldens to the report."""
    by_spec = {}
    for cell in paper.all_cells(paper.load_tables()):
        if cell.reported_params_m is not None:
            by_spec[cell.spec] = round(float(cell.reported_params_m) * 1e6)

    def counter(spec):
        printed = by_spec.get(spec, 123_456)
        return printed, printed + 1_000

    return counter


def report_of(uri: str, table: str | None, **options) -> reporting.Report:
    """The report of the store ``uri`` (``table`` or all), parameters from :func:`fixed_counter`."""
    result, _ = reporting.load_report(uri, table, counter=fixed_counter(), **options)
    return result


def cli_app() -> typer.Typer:
    """The rkrepro app (its ``report`` and ``status`` commands)."""
    try:
        from rkrepro.cli.app import app

        names = {c.name or c.callback.__name__ for c in app.registered_commands}
        if {"report", "status"} <= names:
            return app
    except ImportError:
        pass
    from rkrepro.cli.report import register

    app = typer.Typer()
    register(app)
    return app


def invoke(*args: str):
    """``rkrepro ARGS`` through the real app, 400 columns wide."""
    return CliRunner().invoke(cli_app(), list(args), env={"COLUMNS": "400"})


def cell_result(result: reporting.Report, key: str) -> reporting.CellResult:
    """The result of the cell ``key`` (``table/row/model/share``) in ``result``."""
    return next(r for t in result.tables for r in t.results if r.cell.key == key)
