"""The ``rkrepro`` command line: parse, call, render. No domain logic lives here.

Heavy imports (torch, mlflow, pandas) happen inside the commands that need them, so that
``rkrepro --help`` and ``rkrepro list`` start instantly.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

try:  # Typer >= 0.20 carries its own copy of click
    from typer._click.exceptions import UsageError
except ImportError:  # pragma: no cover - older Typer on plain click
    from click import UsageError

from rkrepro.cli.options import (
    Precision,
    RowOpt,
    ShortenedOpt,
    TableArg,
    TablesDir,
    TrackingUri,
)
from rkrepro.errors import RkreproError


class _Group(TyperGroup):
    """Turns every :class:`RkreproError`, and every bad option of a command, into one line on
    stderr and a non-zero exit code: no traceback, no usage box to scroll through, no password
    of a ``scheme://user:password@host`` in it."""

    def invoke(self, ctx: typer.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except RkreproError as error:
            from rkrepro.tracking.store import hide_passwords  # whatever message carries a URI

            typer.echo(f"Error: {hide_passwords(str(error))}", err=True)
            raise typer.Exit(error.exit_code) from None
        except UsageError as error:
            where = error.ctx.command_path if error.ctx else ctx.command_path
            message = " ".join(error.format_message().split())
            typer.echo(f"Error: {message} (see '{where} --help')", err=True)
            raise typer.Exit(error.exit_code) from None


app = typer.Typer(
    cls=_Group,
    name="rkrepro",
    help="Reproduce the tables of 'Convolutional Neural Networks combined with Runge-Kutta "
    "Methods' (RKNet) and track how close the reproduction is.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _version(value: bool) -> None:
    if value:
        from rkrepro import __version__

        typer.echo(f"rkrepro {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Reproduce the tables of 'Convolutional Neural Networks combined with Runge-Kutta
    Methods' (RKNet) and track how close the reproduction is."""


class ListFormat(StrEnum):
    rich = "rich"
    json = "json"


class ParamsFormat(StrEnum):
    rich = "rich"
    json = "json"
    markdown = "markdown"


def _console():
    from rich.console import Console

    return Console()


@app.command("list")
def list_command(
    table: TableArg = None,
    format: Annotated[ListFormat, typer.Option("--format", "-f")] = ListFormat.rich,
    include_shortened: ShortenedOpt = False,
    tables_dir: TablesDir = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Every table, row and model of the paper with its reported numbers and status."""
    from rkrepro import listing, paper, screen

    tables = paper.load_tables(tables_dir)
    cells = paper.all_cells(tables, table)
    statuses, hidden = listing.statuses_and_hidden(tracking_uri, cells, include_shortened)
    if format is ListFormat.json:
        records = [listing.cell_record(c, statuses, hidden) for c in cells]
        typer.echo(json.dumps(records, indent=2))
        return
    console = _console()
    for rich_table in listing.cells_tables(tables, cells, statuses, hidden):
        screen.show(console, rich_table, wrap={listing.STATUS_COLUMN})


@app.command("show")
def show_command(
    table: Annotated[str, typer.Argument(help="Table id, e.g. table1.")],
    row: Annotated[str, typer.Option("--row", "-r", help="Row id, e.g. densenet-bc-k12.")],
    tables_dir: TablesDir = None,
) -> None:
    """A row's models with their period structure (s, r, channels per period) and readings."""
    from rkrepro import listing, paper, screen

    tables = paper.load_tables(tables_dir)
    found = paper.find_table(tables, table)
    found_row = paper.find_row(found, row)
    console = _console()
    console.print(screen.first_fitting(console, listing.row_structures(found, found_row)))
    console.print(listing.row_readings(found, found_row))


@app.command("params")
def params_command(
    table: TableArg = None,
    row: RowOpt = None,
    format: Annotated[ParamsFormat, typer.Option("--format", "-f")] = ParamsFormat.rich,
    flops: Annotated[bool, typer.Option(help="Also count forward FLOPs per image.")] = True,
    tables_dir: TablesDir = None,
) -> None:
    """Parameter counts of every model against the paper's printed values, and FLOPs."""
    from rkrepro import paper, params, screen

    cells = paper.select_cells(paper.load_tables(tables_dir), table, row)
    records = params.param_records(cells, with_flops=flops)
    if format is ParamsFormat.json:
        typer.echo(json.dumps(records, indent=2))
    elif format is ParamsFormat.markdown:
        typer.echo(params.to_markdown(records))
    else:
        console = _console()
        for table_id in dict.fromkeys(r["table"] for r in records):
            chosen = [r for r in records if r["table"] == table_id]
            console.print(screen.first_fitting(console, params.rich_layouts(chosen)))
    if any(r["match"] is False for r in records):
        raise typer.Exit(1)


@app.command("plan")
def plan_command(
    table: TableArg = None,
    row: RowOpt = None,
    gpu: Annotated[
        Optional[str],
        typer.Option(
            "--gpu",
            help="Estimate for this GPU, here or not: v100, a100-40gb, a100-80gb, h100, h200, "
            "l40s, rtx3090, rtx4090 (calibration.yaml, else a roofline from its datasheet). "
            "Default: this machine's GPU, else h100.",
            show_default=False,
        ),
    ] = None,
    device: Annotated[
        str,
        typer.Option(help="auto (this machine's GPU, else --gpu's default), cpu or cuda."),
    ] = "auto",
    probe: Annotated[
        bool,
        typer.Option(
            help="Time real training steps on this machine (its GPU, else its CPU; at least a "
            "second per cell) instead of estimating."
        ),
    ] = False,
    probe_steps: Annotated[
        int, typer.Option(min=1, max=1000, help="At least this many timed steps per cell.")
    ] = 3,
    precision: Precision = "fp32",
    budget: Annotated[
        Optional[float],
        typer.Option(
            "--budget",
            help="GPU-hours to spend: list the runs that fit, those that decide the most "
            "claims and judged cells per hour first, and the claims they decide.",
            show_default=False,
        ),
    ] = None,
    format: Annotated[ListFormat, typer.Option("--format", "-f")] = ListFormat.rich,
    tables_dir: TablesDir = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Estimated device-hours of one seed per cell (for a GPU that need not be here, or this
    machine's CPU), FLOPs, params and peak memory; with --budget, what to run first."""
    from rkrepro import paper
    from rkrepro.estimate import cost
    from rkrepro.estimate import target as targets
    from rkrepro.planning import precision as precision_mod

    if budget is not None and not budget > 0:  # also NaN
        raise RkreproError(f"--budget must be a positive number of hours, got {budget:g}")
    tables = paper.load_tables(tables_dir)
    cells = paper.select_cells(tables, table, row)
    chosen = targets.for_plan(gpu, device, probe)
    recorded = precision_mod.parse(precision)
    precision_mod.check_device(recorded, "cpu" if chosen.probe == "cpu" else "cuda")
    estimates = cost.estimate(cells, chosen, recorded, probe_steps)
    if budget is not None:
        _plan_budget(tables, estimates, chosen, recorded, budget, format, tracking_uri)
        return
    if format is ListFormat.json:
        payload = {
            "device": chosen.label,
            "precision": recorded,
            "cells": [e.record() for e in estimates],
            "totals": cost.summarise(estimates),
        }
        typer.echo(json.dumps(payload, indent=2))
        return
    from rkrepro import screen

    console = _console()
    table_ids = list(dict.fromkeys(e.cell.table for e in estimates))
    for table_id in table_ids:
        subset = [e for e in estimates if e.cell.table == table_id]
        screen.show(console, cost.to_rich(subset, chosen, recorded))
    if len(table_ids) > 1:
        screen.show(console, cost.totals_rich(estimates, chosen, recorded))
    if chosen.note:
        console.print(chosen.note, highlight=False, markup=False)


def _plan_budget(tables, estimates, chosen, precision: str, budget: float, format, uri) -> None:
    """``plan --budget``: the ranked runs that fit, and the claims they decide."""
    from rkrepro.campaign import summary
    from rkrepro.campaign.order import claims_ranking

    cells = [e.cell for e in estimates]
    hours = {e.cell.key: e.gpu_hours for e in estimates}
    ranking = claims_ranking(tables, cells, hours, uri, budget)
    if format is ListFormat.json:
        steps = [
            {
                "runs": [cell.key for cell in step.cells],
                "hours": step.hours,
                "decides": list(step.claims),
                "judged": step.judged,
            }
            for step in ranking.steps
        ]
        payload = {
            "device": chosen.label,
            "precision": precision,
            "budget_hours": budget,
            "steps": steps,
            "hours": ranking.hours,
            "decided": ranking.decided,
            "not_within_budget": list(ranking.over_budget),
            "out_of_reach": list(ranking.out_of_reach),
        }
        typer.echo(json.dumps(payload, indent=2))
        return
    unit = "CPU" if chosen.probe == "cpu" else "GPU"
    lines = summary.budget_lines(ranking, budget, unit, f"{chosen.label} in {precision}")
    summary.print_lines(_console(), lines)


def _register_optional_commands() -> None:
    """Commands that live in their own modules (training, reports); each registers itself."""
    from rkrepro.cli import report, run

    run.register(app)
    report.register(app)


_register_optional_commands()


def main() -> None:
    app()
