"""The ``run`` and ``ui`` commands. torch and mlflow are imported inside the command bodies so
that ``rkrepro --help`` stays instant; ``rkrepro.cli`` calls :func:`register`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from rkrepro.errors import RkreproError

_SHARE_HELP = (
    "--share: only the weight-shared cells; --no-share: only the unshared ones. "
    "Default (--both): what the paper reports."
)


def run_command(
    table: Annotated[str, typer.Argument(help="Table id, e.g. table1.")],
    row: Annotated[str, typer.Option("--row", "-r", help="Row id, e.g. densenet-bc-k12.")],
    variant: Annotated[
        Optional[list[str]],
        typer.Option("--variant", "-v", help="RKNet variant (repeatable), or 'original'."),
    ] = None,
    share: Annotated[
        Optional[bool], typer.Option("--share/--no-share", help=_SHARE_HELP, show_default=False)
    ] = None,
    both: Annotated[
        bool, typer.Option("--both", help="Shared and unshared cells (the default).")
    ] = False,
    seeds: Annotated[
        Optional[int], typer.Option("--seeds", help="Run seeds 0..N-1.", show_default=False)
    ] = None,
    seed: Annotated[
        Optional[list[int]],
        typer.Option("--seed", help="Run this seed (repeatable). Default: seed 0."),
    ] = None,
    epochs: Annotated[
        Optional[int],
        typer.Option(help="Shorten training to N epochs (milestones scale; tagged shortened)."),
    ] = None,
    train_subset: Annotated[
        Optional[int],
        typer.Option(help="Train on a fixed random subset of N images (tagged shortened)."),
    ] = None,
    data_dir: Annotated[
        Optional[Path],
        typer.Option(
            envvar="RKREPRO_DATA_DIR", help="Data sets folder (default: data/).", show_default=False
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda:N.")] = "auto",
    tracking_uri: Annotated[
        Optional[str],
        typer.Option(
            envvar="MLFLOW_TRACKING_URI",
            help="MLflow tracking URI (default: sqlite under runs/, or $RKREPRO_RUNS_DIR).",
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would run (and its status); train nothing.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Start new runs even where a finished one exists.")
    ] = False,
    tables_dir: Annotated[
        Optional[Path],
        typer.Option(
            envvar="RKREPRO_TABLES_DIR", help="Folder of table YAML files.", show_default=False
        ),
    ] = None,
    memory_efficient: Annotated[
        bool,
        typer.Option(help="Checkpoint dense-layer concatenations: less GPU memory, slower."),
    ] = False,
    amp: Annotated[
        bool,
        typer.Option(help="Mixed precision (fp16 + loss scaling) on CUDA; not the paper's fp32."),
    ] = False,
    workers: Annotated[int, typer.Option(help="Data loader processes (ImageNet only).")] = min(
        8, os.cpu_count() or 1
    ),
) -> None:
    """Train the cells of one table row under the paper's protocol, tracked in MLflow.

    With no --variant it runs the row's original and every variant, with and without weight
    sharing where the paper reports both. Finished runs are skipped, interrupted ones resume.
    """
    from rich.console import Console

    from rkrepro import runner, targets

    if both and share is not None:
        raise RkreproError("use only one of --share, --no-share and --both")
    share_choice = "both" if share is None else ("share" if share else "no-share")
    tables = targets.load_tables(tables_dir)
    cells = _select_cells(tables, table, row, variant or [], share_choice)
    options = runner.RunOptions(
        epochs=epochs,
        train_subset=train_subset,
        memory_efficient=memory_efficient,
        amp=amp,
        force=force,
        data_dir=data_dir or _default_data_dir(),
        device=device,
        tracking_uri=tracking_uri,
        workers=workers,
    )
    plans = runner.make_plans(cells, runner.parse_seeds(seeds, seed), options)
    console = Console(soft_wrap=True) if not sys.stdout.isatty() else Console()
    run = runner.Runner(options, console)
    if dry_run:
        run.dry_run(plans)
        return
    from rkrepro.train import Interrupted

    try:
        code = run.run(plans)
    except Interrupted as stop:
        typer.echo(f"Stopped by {stop}; rerun the same command to resume.", err=True)
        raise typer.Exit(stop.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("Interrupted; rerun the same command to resume.", err=True)
        raise typer.Exit(130) from None
    if code:
        raise typer.Exit(code)


def _default_data_dir() -> Path:
    return Path(os.environ.get("RKREPRO_DATA_DIR") or "data")


def _select_cells(tables, table: str, row: str, variants: list[str], share: str):
    """The row's cells for these options ('original' counts as a variant name)."""
    from rkrepro import targets

    cells = targets.resolve_cells(tables, table, row, variants or None, share)
    if not cells:
        raise RkreproError("nothing to run: the original network has no shared form (--share)")
    return cells


def ui_command(
    tracking_uri: Annotated[
        Optional[str],
        typer.Option(envvar="MLFLOW_TRACKING_URI", help="MLflow tracking URI.", show_default=False),
    ] = None,
    port: Annotated[int, typer.Option(help="Port of the web UI.")] = 5000,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
) -> None:
    """Open the MLflow web UI on the runs store (``mlflow ui --backend-store-uri ...``)."""
    from rkrepro import tracking

    uri = tracking.resolve_tracking_uri(tracking_uri)
    if not tracking.is_local_store(uri):
        raise RkreproError(f"{uri} is a tracking server already: open it in a browser")
    if not tracking.store_exists(uri):
        raise RkreproError(f"no runs yet: {uri} does not exist (run `rkrepro run` first)")
    artifacts = (tracking.runs_dir() / "artifacts").as_uri()
    argv = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--default-artifact-root",
        artifacts,
        "--host",
        host,
        "--port",
        str(port),
    ]
    typer.echo(f"MLflow UI on http://{host}:{port} for {uri}", err=True)
    sys.stdout.flush()
    os.execv(sys.executable, argv)


def register(app: typer.Typer) -> None:
    """Add ``run`` and ``ui`` to the rkrepro app."""
    app.command("run")(run_command)
    app.command("ui")(ui_command)
