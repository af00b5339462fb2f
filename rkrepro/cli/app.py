"""The ``rkrepro`` command line: parse, call, render. No domain logic lives here.

Heavy imports (torch, mlflow, pandas) happen inside the commands that need them, so that
``rkrepro --help`` and ``rkrepro list`` start instantly.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated

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
    stderr and a non-zero exit code: no traceback, no usage box to scroll through."""

    def invoke(self, ctx: typer.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except RkreproError as error:
            typer.echo(f"Error: {error}", err=True)
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
    tflops: Annotated[
        float,
        typer.Option(min=0.001, help="Achieved training TFLOP/s assumed when nothing is measured."),
    ] = 20.0,
    max_images_per_s: Annotated[
        float,
        typer.Option(
            min=1.0, help="Ceiling on training images/s assumed when nothing is measured."
        ),
    ] = 25_000.0,
    probe: Annotated[
        bool,
        typer.Option(
            help="Measure a few real training steps on the device (CUDA if present, else a "
            "short CPU probe)."
        ),
    ] = True,
    device: Annotated[
        str, typer.Option(help="Device to estimate for: auto (CUDA if present), cpu or cuda.")
    ] = "auto",
    probe_steps: Annotated[int, typer.Option(min=1, max=1000)] = 20,
    precision: Precision = "fp32",
    format: Annotated[ListFormat, typer.Option("--format", "-f")] = ListFormat.rich,
    tables_dir: TablesDir = None,
) -> None:
    """Estimated device-hours (GPU, or CPU where it would run), FLOPs, params and peak memory."""
    from rkrepro import estimate as cost
    from rkrepro import paper
    from rkrepro.planning import precision as precision_mod

    cells = paper.select_cells(paper.load_tables(tables_dir), table, row)
    import torch

    choice = device.strip().lower()
    if choice not in ("auto", "cpu", "cuda"):
        raise RkreproError(f"--device must be auto, cpu or cuda, got {device[:20]!r}")
    if choice == "cuda" and not torch.cuda.is_available():
        raise RkreproError("--device cuda: no CUDA device here")
    target = (
        "cuda" if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()) else "cpu"
    )
    recorded = precision_mod.parse(precision)
    precision_mod.check_device(recorded, target)
    device = target if probe else None
    estimates = cost.estimate(
        cells,
        tflops=tflops,
        max_images_per_s=max_images_per_s,
        probe_device=device,
        probe_steps=probe_steps,
        precision=recorded,
    )
    if format is ListFormat.json:
        payload = {
            "cells": [e.record() for e in estimates],
            "totals": cost.summarise(estimates),
        }
        typer.echo(json.dumps(payload, indent=2))
        return
    from rkrepro import screen

    console = _console()
    for table_id in dict.fromkeys(e.cell.table for e in estimates):
        screen.show(console, cost.to_rich([e for e in estimates if e.cell.table == table_id]))


def _register_optional_commands() -> None:
    """Commands that live in their own modules (training, reports); each registers itself."""
    from rkrepro.cli import report, run

    run.register(app)
    report.register(app)


_register_optional_commands()


def main() -> None:
    app()
