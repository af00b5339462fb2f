"""Reading runs back: ``rkrepro report``, ``rkrepro status`` and ``rkrepro ui`` parse their
options, call report/status/MLflow, and write the output.

Nothing heavy at import time: mlflow and torch load inside the commands that need them.
"""

from __future__ import annotations

import json
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Optional

import typer

from rkrepro.cli.options import ShortenedOpt, TableArg, TablesDir, TrackingUri
from rkrepro.errors import RkreproError


class ReportFormat(StrEnum):
    rich = "rich"
    markdown = "markdown"
    csv = "csv"
    json = "json"
    latex = "latex"
    html = "html"


class StatusFormat(StrEnum):
    rich = "rich"
    json = "json"


# --out's suffix picks the format when --format is not given.
SUFFIX_FORMATS = {
    ".md": ReportFormat.markdown,
    ".markdown": ReportFormat.markdown,
    ".csv": ReportFormat.csv,
    ".json": ReportFormat.json,
    ".tex": ReportFormat.latex,
    ".html": ReportFormat.html,
    ".htm": ReportFormat.html,
}


def ui_command(
    tracking_uri: TrackingUri = None,
    port: Annotated[int, typer.Option(help="Port of the web UI (1-65535).")] = 5000,
    host: Annotated[
        str, typer.Option(help="Interface to listen on (default: this machine only).")
    ] = "127.0.0.1",
    expose: Annotated[
        bool,
        typer.Option(
            "--expose",
            help="Allow a --host other than loopback. MLflow's REST API has no "
            "authentication: anyone who reaches the port can read and change every run.",
        ),
    ] = False,
) -> None:
    """Open the MLflow web UI on the runs store (mlflow ui, one worker) and print each
    table's runs view once it answers."""
    from rkrepro import paths, ui
    from rkrepro.tracking import store

    ui.check_address(host, port, expose)
    uri = paths.resolve_tracking_uri(tracking_uri)
    shown = store.shown_uri(uri)
    if not store.is_local_store(uri):
        raise RkreproError(f"{shown} is a tracking server already: open it in a browser")
    if not store.store_exists(uri):
        raise RkreproError(f"no runs yet: {shown} does not exist (run `rkrepro run` first)")
    artifacts = store.artifacts_root().as_uri()
    raise typer.Exit(ui.serve(uri, artifacts, host, port))


def register(app: typer.Typer) -> None:
    """Add ``report``, ``status`` and ``ui`` to the rkrepro app."""
    app.command("report")(report_command)
    app.command("status")(status_command)
    app.command("ui")(ui_command)


def report_command(
    table: TableArg = None,
    format: Annotated[
        Optional[ReportFormat],
        typer.Option(
            "--format", "-f", help="Output format (default: from --out's suffix, else rich)."
        ),
    ] = None,
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Write here instead of stdout.")
    ] = None,
    plots: Annotated[
        Optional[Path],
        typer.Option(
            "--plots",
            help="Write PNG plots here and log them to MLflow (experiment rkrepro/reports).",
        ),
    ] = None,
    no_plots: Annotated[
        bool,
        typer.Option(
            "--no-plots", help="An HTML page without its plots (they are inlined by default)."
        ),
    ] = False,
    tolerance: Annotated[
        Optional[float],
        typer.Option(
            "--tolerance",
            min=0.0,
            help="Tolerance in percentage points for every table (default per dataset: "
            "CIFAR-10 0.3, CIFAR-100 0.6, ImageNet 0.5 on top-1).",
            show_default=False,
        ),
    ] = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Exit 1 if a reproduced error is worse than tolerance, 3 if no cell has a "
            "reproduced number to judge.",
        ),
    ] = False,
    best: Annotated[
        bool,
        typer.Option("--best", help="Best-epoch error instead of the paper's final-epoch error."),
    ] = False,
    include_shortened: ShortenedOpt = False,
    reading: Annotated[
        Optional[list[str]],
        typer.Option(
            "--reading",
            help="Report under another reading, NAME=VALUE (repeatable), e.g. "
            "resnet_stages=lincomb: only runs trained under it count.",
            show_default=False,
        ),
    ] = None,
    compare: Annotated[
        Optional[list[str]],
        typer.Option(
            "--compare",
            help="Show each cell also under this reading, NAME=VALUE (repeatable), e.g. "
            "resnet_stages=euler or reported_error=best: two readings side by side.",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Let --out replace a file that is not an rkrepro report."),
    ] = False,
    claims: Annotated[
        bool,
        typer.Option(
            "--claims",
            help="The paper's claims (Sections 4.1/4.2), each judged on the paper's printed "
            "numbers and on the reproduction, instead of the tables.",
        ),
    ] = False,
    ui_url: Annotated[
        Optional[str],
        typer.Option(
            "--ui-url",
            help="MLflow UI address for run links in the HTML page (default: the tracking "
            "server, if it is one; e.g. the address `rkrepro ui` prints).",
        ),
    ] = None,
    tracking_uri: TrackingUri = None,
    tables_dir: TablesDir = None,
) -> None:
    """The paper's tables with reproduced numbers: reported / reproduced / difference."""
    from rkrepro import report as reporting
    from rkrepro.paper import readings
    from rkrepro.report import render
    from rkrepro.tracking import keys as mlflow_keys

    if out is not None:
        check_output_file(out, tracking_uri, force)
    if plots is not None and plots.exists() and not plots.is_dir():
        raise RkreproError(f"--plots {plots} is a file; --plots takes a folder")
    if plots is not None and no_plots:
        raise RkreproError("use either --plots DIR or --no-plots")
    chosen = format or SUFFIX_FORMATS.get(out.suffix.lower() if out else "", ReportFormat.rich)
    if claims:
        _emit_claims(tracking_uri, table, tables_dir, best, chosen, out)
        return
    result, _ = reporting.load_report(
        tracking_uri,
        table,
        tables_dir,
        best=best,
        tolerance=tolerance,
        include_shortened=include_shortened,
        readings=readings.parse_overrides(reading or []),
        compare=readings.parse_overrides(compare or [], "--compare") or None,
    )
    _note_stale_runs(tracking_uri, result)
    images: list[Path] = []
    if plots is not None:
        try:
            images = reporting.write_plots(result, plots, tracking_uri)
        except OSError as error:
            reason = os.strerror(error.errno) if error.errno else str(error)
            raise RkreproError(f"cannot write plots to {plots}: {reason}") from None
        name = "report " + (table or "all")
        run_id = reporting.log_plots(tracking_uri, result, images, name)
        typer.echo(
            f"Wrote {len(images)} plots to {plots}; logged to MLflow run {run_id} "
            f"(experiment {mlflow_keys.REPORTS_EXPERIMENT}).",
            err=True,
        )
    if chosen is ReportFormat.html and plots is None and not no_plots:
        images = _inline_plots(result, tracking_uri)
    extra: dict = {}
    if chosen in render.PAGE_FORMATS:
        from rkrepro.report.claims import load_claims

        if ui_url is None and tracking_uri and tracking_uri.startswith(("http://", "https://")):
            ui_url = tracking_uri
        extra = {"claims": load_claims(tracking_uri, table, tables_dir, best=best)}
        extra["ui_url"] = _checked_url(ui_url)
    _write(chosen, out, result, images=images, **extra)
    if check:
        _check(result)


# ``report --check``'s exit codes besides 0 (passed): a cell worse than tolerance, nothing judged.
CHECK_WORSE = 1
CHECK_NOTHING_JUDGED = 3


def _check(result) -> None:
    """Pass only when something was judged and nothing judged is worse than tolerance."""
    worse = result.worse()
    if worse:
        keys = ", ".join(r.cell.key for r in worse)
        typer.echo(f"Check failed: {len(worse)} cell(s) worse than tolerance: {keys}", err=True)
        raise typer.Exit(CHECK_WORSE)
    results = [r for t in result.tables for r in t.results]
    judged = result.judged()
    if not judged:
        typer.echo(
            f"Check judged nothing: none of the {len(results)} cells has a reproduced number "
            f"(paper-protocol runs that finished) to judge; exit {CHECK_NOTHING_JUDGED}",
            err=True,
        )
        raise typer.Exit(CHECK_NOTHING_JUDGED)
    typer.echo(
        f"Check passed: {len(judged)} of {len(results)} cells judged, none worse than "
        f"tolerance ({len(results) - len(judged)} not judged: no finished run, or no printed "
        "number).",
        err=True,
    )


def _note_stale_runs(tracking_uri: str | None, result) -> None:
    """A run left RUNNING by a process that is gone shows as "running" in a report; say so, on
    stderr (stdout may be the report itself)."""
    from rkrepro import liveness
    from rkrepro.tracking.reader import fetch_progress

    running = [
        run
        for table in result.tables
        for cell in table.results
        for reproduced in (cell.paper, cell.shortened)
        if reproduced is not None
        for run in reproduced.runs
        if run.status == "RUNNING"
    ]
    if not running:
        return
    health = liveness.assess(running, fetch_progress(tracking_uri, [r.run_id for r in running]))
    stale = [run_id for run_id, judged in health.items() if judged.stale]
    if stale:
        typer.echo(
            f"note: {len(stale)} run{'s' * (len(stale) != 1)} shown as running "
            f"{'are' if len(stale) != 1 else 'is'} {liveness.STALE_WORD}; `rkrepro status` "
            "says how to resume them",
            err=True,
        )


def _inline_plots(result, tracking_uri: str | None) -> list[Path]:
    """The report's plots for an HTML page that inlines them: written to a temporary folder
    (read back as data URIs when the page is rendered, then removed), not logged."""
    import atexit
    import shutil
    import tempfile

    from rkrepro import report as reporting

    folder = Path(tempfile.mkdtemp(prefix="rkrepro-plots-"))
    atexit.register(shutil.rmtree, folder, True)
    return reporting.write_plots(result, folder, tracking_uri)


def _checked_url(url: str | None) -> str | None:
    """The MLflow UI's address for the page's run links, without ``user:password@``: a page
    is shared, and the browser asks for what the server needs."""
    if url is None:
        return None
    if not url.startswith(("http://", "https://")) or any(c in url for c in " \"'<>\n\r\t"):
        raise RkreproError("--ui-url must be an http:// or https:// address")
    from rkrepro.tracking.store import without_credentials

    return without_credentials(url)[0]


# How each --out format begins: what "a file rkrepro made" means.
_REPORT_MARKS = ("# rkrepro report", "% rkrepro report", "<!DOCTYPE html>")


def _made_by_rkrepro(path: Path) -> bool:
    """Whether ``path`` holds an earlier rkrepro report (so replacing it loses nothing)."""
    from rkrepro.report.render.content import RECORD_FIELDS

    try:
        with path.open("rb") as handle:
            head = handle.read(4096).decode("utf-8", "replace")
    except OSError:
        return False
    from rkrepro.report.render.terminal import FILE_MARK

    if head.startswith((*_REPORT_MARKS[:2], FILE_MARK + "\n")):
        return True
    if head.startswith(_REPORT_MARKS[2]):
        return "<title>rkrepro report</title>" in head
    if head.startswith(",".join(RECORD_FIELDS) + "\n"):
        return True
    return head.startswith('{\n  "metric": ')


def check_output_file(out: Path, tracking_uri: str | None, force: bool) -> None:
    """Refuse an ``--out`` that cannot be written or must not be replaced, before any work:
    the run store and checkpoints never (a report there destroys the runs), any other
    existing file that is not an earlier rkrepro report only with ``--force``."""
    from rkrepro.paths import resolve_tracking_uri, runs_dir, sqlite_path

    target = out.resolve()
    checkpoints = (runs_dir() / "checkpoints").resolve()
    if target.is_relative_to(checkpoints):
        raise RkreproError(f"--out {out} is inside the checkpoints folder; refusing to write there")
    if out.is_dir():
        raise RkreproError(f"--out {out} is a folder; give a file name")
    if not out.parent.is_dir():
        raise RkreproError(f"--out {out}: folder {out.parent} does not exist")
    if not out.exists():
        return
    store = sqlite_path(resolve_tracking_uri(tracking_uri))
    protected = [p for p in (store, runs_dir() / "mlflow.db") if p is not None]
    for path in protected:
        for suffix in ("", "-wal", "-shm", "-journal"):
            candidate = path.with_name(path.name + suffix)
            if candidate.exists() and candidate.resolve() == target:
                raise RkreproError(f"--out {out} is the MLflow store; refusing to overwrite it")
    if out.is_file() and not force and not _made_by_rkrepro(out):
        raise RkreproError(
            f"--out {out} exists and is not an rkrepro report; add --force to replace it"
        )


def _write(chosen: ReportFormat, out: Path | None, report, **content) -> None:
    """Write the report (or, with ``report`` None, the claims) as :mod:`rkrepro.report.render`
    renders ``chosen``; an output that cannot be written is one line."""
    from rkrepro.report import render

    try:
        render.write_report(
            chosen.value, out, lambda text: typer.echo(text, nl=False), report, **content
        )
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
        raise RkreproError(f"cannot write --out {out}: {reason}") from None


def _emit_claims(tracking_uri, table, tables_dir, best: bool, chosen, out: Path | None) -> None:
    from rkrepro.report.claims import load_claims

    results = load_claims(tracking_uri, table, tables_dir, best=best)
    if not results:
        typer.echo("No claims in the tables" + (f" for {table}." if table else "."), err=True)
        return
    _write(chosen, out, None, claims=results)


def status_command(
    table: TableArg = None,
    format: Annotated[StatusFormat, typer.Option("--format", "-f")] = StatusFormat.rich,
    include_shortened: ShortenedOpt = False,
    gpu: Annotated[
        Optional[str],
        typer.Option(
            "--gpu", help="Estimate the hours left for this GPU (default h100).", show_default=False
        ),
    ] = None,
    watch: Annotated[
        bool, typer.Option("--watch", help="Redraw the campaign progress until Ctrl-C.")
    ] = False,
    interval: Annotated[
        float, typer.Option(min=0.1, help="--watch: seconds between redraws.")
    ] = 30.0,
    tracking_uri: TrackingUri = None,
    tables_dir: TablesDir = None,
) -> None:
    """Which cells are done, running, failed or not started, with their MLflow run ids; for each
    running run its epoch, speed and ETA, or that its process is gone and how to resume it; then
    the campaign's progress per table and for the paper (hours spent and left)."""
    from rkrepro import liveness, paper, screen, status
    from rkrepro.campaign import progress
    from rkrepro.tracking import keys as mlflow_keys
    from rkrepro.tracking.reader import fetch_progress, fetch_runs

    tables = paper.load_tables(tables_dir)
    cells = paper.all_cells(tables, table)
    if watch:
        from functools import partial

        from rich.console import Console

        try:
            render = partial(progress.load_progress, tracking_uri, cells, gpu)
            progress.watch(render, interval, Console())
        except KeyboardInterrupt:
            return
        return
    table_ids = list(dict.fromkeys(cell.table for cell in cells))
    records = fetch_runs(tracking_uri, table_ids)
    protocols = [mlflow_keys.PROTOCOL_PAPER]
    if include_shortened:
        protocols.append(mlflow_keys.PROTOCOL_SHORTENED)
    statuses = status.cell_statuses(records, cells, protocols)
    shown = [r for s in statuses.values() for r in s.runs]
    running = fetch_progress(tracking_uri, [r.run_id for r in shown if r.status == "RUNNING"])
    health = liveness.assess(shown, running)
    note = status.store_note(tracking_uri)
    if note:
        typer.echo(note, err=True)
    if format is StatusFormat.json:
        typer.echo(json.dumps(status.status_records(statuses, health), indent=2))
        return
    from rich.console import Console

    console = Console()
    hidden = {} if include_shortened else status.hidden_runs(records)
    wrap = {status.STATE_COLUMN, status.RUNS_COLUMN}
    for table_id in table_ids:
        layouts = status.status_layouts(table_id, statuses, cells, hidden, health)
        console.print(screen.first_fitting(console, layouts, wrap))
    stale = status.stale_runs(statuses, health)
    if stale:
        by_key = {cell.key: cell for cell in cells}
        console.print(
            f"{len(stale)} run{'s' * (len(stale) != 1)} {liveness.STALE_WORD}: nothing has "
            "written to it for a while, or its process is gone; resume with:",
            style="bold yellow",
            markup=False,
            highlight=False,
        )
        for run in stale:
            cell = by_key[paper.cell_key(*run.cell_id)]
            command = liveness.resume_command(
                run,
                cell,
                running.get(run.run_id),
                tracking_uri=tracking_uri if tracking_uri and "@" not in tracking_uri else None,
                tables_dir=str(tables_dir) if tables_dir else None,
            )
            console.print("  " + command, markup=False, highlight=False, soft_wrap=True)
    console.print(progress.load_progress(tracking_uri, cells, gpu, records))
