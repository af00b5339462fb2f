"""Plots of a report (matplotlib, Agg): params vs error per table, training curves per row;
and their logging to MLflow.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rkrepro import mlflow_keys
from rkrepro.errors import TrackingError
from rkrepro.report.build import DATASET_NAMES, REPORTS_EXPERIMENT, Report, TableReport
from rkrepro.report.render import to_json
from rkrepro.status import (
    ACTIVE,
)

if TYPE_CHECKING:
    from rkrepro.targets import Cell


# --------------------------------------------------------------------------------------------
# Plots (matplotlib, Agg) and their logging to MLflow.


def write_plots(
    report: Report,
    out_dir: Path,
    tracking_uri: str | None = None,
    history: Callable[[str], list[tuple[int, float]]] | None = None,
) -> list[Path]:
    """Params vs error per table, and test error vs epoch per row; returns the PNG paths.

    ``history(run_id)`` gives (epoch, test error) pairs; by default from MLflow.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if history is None:
        history = _mlflow_history(tracking_uri)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for table_report in report.tables:
        paths.append(_plot_params(plt, report, table_report, out_dir))
        for row in table_report.table.rows:
            path = _plot_curves(plt, table_report, row, out_dir, history)
            if path is not None:
                paths.append(path)
    return paths


def _mlflow_history(tracking_uri: str | None) -> Callable[[str], list[tuple[int, float]]]:
    from mlflow import MlflowClient

    from rkrepro.status import default_tracking_uri

    client = MlflowClient(tracking_uri=tracking_uri or default_tracking_uri())

    def history(run_id: str) -> list[tuple[int, float]]:
        metrics = client.get_metric_history(run_id, mlflow_keys.M_TEST_ERROR)
        return sorted((m.step, m.value) for m in metrics)

    return history


_KIND_COLOR = {"original": "black", "variant": "tab:blue", "share": "tab:orange"}


def _kind(cell: Cell) -> str:
    return "original" if cell.model == "original" else ("share" if cell.share else "variant")


def _plot_params(plt, report: Report, table_report: TableReport, out_dir: Path) -> Path:
    table = table_report.table
    figure, axes = plt.subplots(figsize=(7, 5))
    seen: set[str] = set()
    for result in table_report.results:
        cell, kind = result.cell, _kind(result.cell)
        color = _KIND_COLOR[kind]
        if cell.reported_error is not None:
            x = float(cell.reported_params_m) if cell.reported_params_m else result.params_m
            label = f"paper, {kind}" if f"p{kind}" not in seen else None
            seen.add(f"p{kind}")
            axes.scatter([x], [float(cell.reported_error)], facecolors="none", edgecolors=color,
                         label=label)  # fmt: skip
            if result.paper.error is not None:
                axes.plot([x, result.params_m], [float(cell.reported_error),
                          result.paper.error.mean], color="0.8", lw=0.8, zorder=0)  # fmt: skip
        if result.paper.error is not None:
            stat = result.paper.error
            label = f"reproduced, {kind}" if f"r{kind}" not in seen else None
            seen.add(f"r{kind}")
            axes.errorbar([result.params_m], [stat.mean], yerr=[stat.std or 0.0], fmt="s",
                          color=color, capsize=3, label=label)  # fmt: skip
    metric = "top-1 error" if table.dataset == "imagenet" else "error"
    axes.set_xlabel("parameters (M)")
    axes.set_ylabel(f"test {metric} (%), {'best' if report.best else 'final'} epoch")
    axes.set_title(f"{table.title} ({DATASET_NAMES[table.dataset]}): parameters vs error")
    axes.grid(alpha=0.3)
    if seen:
        axes.legend(fontsize=8)
    path = out_dir / f"{table.id}_params_vs_error.png"
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _plot_curves(plt, table_report, row, out_dir, history) -> Path | None:
    """Mean test error per epoch over seeds (band: min-max) for each model of the row."""
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(figsize=(7, 5))
    drawn = False
    for result in table_report.results:
        if result.cell.row != row.id:
            continue
        for reproduced, style in ((result.paper, "-"), (result.shortened, "--")):
            if reproduced is None:
                continue
            # The runs behind the statistics, plus those still in progress.
            shown = [*reproduced.counted, *(r for r in reproduced.runs if r.status in ACTIVE)]
            curves = [history(run.run_id) for run in shown]
            curves = [c for c in curves if c]
            if not curves:
                continue
            epochs = sorted({epoch for curve in curves for epoch, _ in curve})
            by_epoch = [[v for c in curves for e, v in c if e == epoch] for epoch in epochs]
            label = result.cell.printed_model + (" (share)" if result.cell.share else "")
            if reproduced.protocol == mlflow_keys.PROTOCOL_SHORTENED:
                label += " [shortened]"
            means = [statistics.fmean(vs) for vs in by_epoch]
            line = axes.plot(epochs, means, style, lw=1.2, label=f"{label} (n={len(curves)})")
            if len(curves) > 1:
                axes.fill_between(epochs, [min(v) for v in by_epoch], [max(v) for v in by_epoch],
                                  color=line[0].get_color(), alpha=0.15)  # fmt: skip
            drawn = True
    if not drawn:
        plt.close(figure)
        return None
    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel("test error (%)")
    axes.set_title(f"{table_report.table.title}, {row.label}: test error per epoch")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    path = out_dir / f"{table_report.table.id}_{row.id}_curves.png"
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def log_plots(tracking_uri: str | None, report: Report, paths: Sequence[Path], name: str) -> str:
    """Log the PNGs (and the JSON report) as artifacts of a new run in ``rkrepro/reports``.

    For a local SQLite store the experiment keeps its artifacts next to the database, not in the
    current directory. Returns the run id.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from rkrepro.status import default_tracking_uri

    uri = tracking_uri or default_tracking_uri()
    try:
        # mlflow prints "View run ... at" on stdout for servers; stdout may carry the report.
        with contextlib.redirect_stdout(sys.stderr):
            return _log_run(mlflow.MlflowClient(tracking_uri=uri), uri, report, paths, name)
    except (MlflowException, OSError) as error:
        raise TrackingError(f"cannot log the plots to {uri}: {error}") from None


def _log_run(client, uri: str, report: Report, paths: Sequence[Path], name: str) -> str:
    """The run, its parameters and artifacts; artifacts of a local store sit beside its file."""
    from rkrepro.status import sqlite_path

    experiment = client.get_experiment_by_name(REPORTS_EXPERIMENT)
    if experiment is None:
        db = sqlite_path(uri)
        location = (db.resolve().parent / "artifacts").as_uri() if db else None
        experiment_id = client.create_experiment(REPORTS_EXPERIMENT, location)
    else:
        experiment_id = experiment.experiment_id
    run = client.create_run(experiment_id, run_name=name, tags={"rkrepro.report": name})
    run_id = run.info.run_id
    client.log_param(run_id, "metric", report.metric)
    client.log_param(run_id, "include_shortened", str(report.include_shortened).lower())
    if report.tolerance_override is not None:
        client.log_param(run_id, "tolerance_pp", report.tolerance_override)
    for path in paths:
        client.log_artifact(run_id, str(path), artifact_path="plots")
    client.log_text(run_id, to_json(report), "report.json")
    client.set_terminated(run_id, "FINISHED")
    return run_id
