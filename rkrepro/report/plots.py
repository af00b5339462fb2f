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
    from rkrepro.paper import Cell


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
    """Test error per epoch of a run; the client is made at the first run asked for, so that
    plotting a store without runs never creates one."""
    clients: list = []

    def history(run_id: str) -> list[tuple[int, float]]:
        if not clients:
            from mlflow import MlflowClient

            from rkrepro.status import default_tracking_uri

            clients.append(MlflowClient(tracking_uri=tracking_uri or default_tracking_uri()))
        metrics = clients[0].get_metric_history(run_id, mlflow_keys.M_TEST_ERROR)
        return sorted((m.step, m.value) for m in metrics)

    return history


_KIND_MARKER = {"original": "o", "variant": "^", "share": "s"}
_KIND_NAME = {"original": "original", "variant": "variant", "share": "variant with share"}


def _kind(cell: Cell) -> str:
    return "original" if cell.model == "original" else ("share" if cell.share else "variant")


def point_label(cell: Cell) -> str:
    """(variant, share) in a few characters: ``1×8_1×2_1×2 +share``, ``original``; ``*`` for the
    starred protocol."""
    name = "original" if cell.model == "original" else cell.printed_model.removeprefix("RKNet-")
    return name + (" +share" if cell.share else "") + ("*" if cell.star else "")


def _plot_params(plt, report: Report, table_report: TableReport, out_dir: Path) -> Path:
    figure = params_figure(plt, report, table_report)
    path = out_dir / f"{table_report.table.id}_params_vs_error.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def params_figure(plt, report: Report, table_report: TableReport):
    """Paper points hollow, reproduced seed means filled with a ±std bar, a line from each
    reproduced point to its paper point; colour = row, marker = kind, every point labelled."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    table = table_report.table
    figure, axes = plt.subplots(figsize=(9, 6))
    colors = plt.get_cmap("tab10")
    row_color = {row.id: colors(i % 10) for i, row in enumerate(table.rows)}
    reproduced_any = starred = False
    originals = {r.cell.row: r for r in table_report.results if r.cell.model == "original"}
    labels: list[tuple[float, float, str, object]] = []
    for result in table_report.results:
        cell, kind = result.cell, _kind(result.cell)
        color, marker = row_color[cell.row], _KIND_MARKER[kind]
        x = _paper_params(result, originals)
        stat = result.paper.error
        if cell.reported_error is not None:
            y = float(cell.reported_error)
            axes.scatter([x], [y], marker=marker, facecolors="none", edgecolors=[color], s=46,
                         linewidths=1.3, zorder=3)  # fmt: skip
            if cell.star:
                starred = True
                axes.scatter([x], [y], marker="*", color=[color], s=22, zorder=4)
            labels.append((x, y, point_label(cell), color))
            if stat is not None:
                axes.plot([x, result.params_m], [y, stat.mean], color=color, lw=0.7, ls=":",
                          zorder=1)  # fmt: skip
        if stat is not None:
            reproduced_any = True
            axes.errorbar([result.params_m], [stat.mean], yerr=[stat.std or 0.0], fmt=marker,
                          color=color, ms=6, capsize=3, lw=1, zorder=3)  # fmt: skip
            text = f"n={stat.n}" + (
                "" if cell.reported_error is not None else " " + point_label(cell)
            )
            labels.append((result.params_m, stat.mean, text, color))
    metric = "top-1 error" if table.dataset == "imagenet" else "error"
    axes.set_xscale("log")
    axes.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axes.xaxis.set_minor_formatter(FuncFormatter(_minor_tick))
    _place_labels(axes, labels)
    axes.set_xlabel("parameters (M, log scale)")
    axes.set_ylabel(f"test {metric} (%), {'best' if report.best else 'final'} epoch")
    axes.set_title(f"{table.title} ({DATASET_NAMES[table.dataset]}): parameters vs error")
    axes.grid(alpha=0.3, which="both")
    if not reproduced_any:
        axes.text(0.5, 0.97, "no reproduced runs yet (paper's points only)",
                  transform=axes.transAxes, ha="center", va="top", fontsize=9, color="0.35",
                  bbox={"facecolor": "white", "edgecolor": "0.7"})  # fmt: skip
    handles = [
        Line2D([], [], color=row_color[row.id], marker="o", ls="", label=_row_name(row, table))
        for row in table.rows
    ]
    handles += [
        Line2D([], [], color="0.3", marker=_KIND_MARKER[k], ls="", label=_KIND_NAME[k])
        for k in _KIND_MARKER
    ]
    handles += [
        Line2D([], [], color="0.3", marker="o", mfc="none", ls="", label="paper (hollow)"),
        Line2D([], [], color="0.3", marker="o", ls="-", label="reproduced mean ± std (filled)"),
    ]
    if starred:
        handles.append(
            Line2D([], [], color="0.3", marker="*", ls="", label="* starred: other protocol")
        )
    axes.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.tight_layout()
    return figure


def _plot_curves(plt, table_report, row, out_dir, history) -> Path | None:
    figure = curves_figure(plt, table_report, row, history)
    if figure is None:
        return None
    path = out_dir / f"{table_report.table.id}_{row.id}_curves.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def curves_figure(plt, table_report, row, history):
    """Mean test error per epoch over seeds (band: min-max) for each model of the row."""
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(figsize=(8, 5))
    drawn = False
    referenced: set[str] = set()
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
            label = point_label(result.cell)
            if reproduced.protocol == mlflow_keys.PROTOCOL_SHORTENED:
                label += " [shortened" + _shortened_text(reproduced) + "]"
            means = [statistics.fmean(vs) for vs in by_epoch]
            line = axes.plot(epochs, means, style, lw=1.2, label=f"{label} (n={len(curves)})")
            color = line[0].get_color()
            if len(curves) > 1:
                axes.fill_between(epochs, [min(v) for v in by_epoch], [max(v) for v in by_epoch],
                                  color=color, alpha=0.15)  # fmt: skip
            reported = result.cell.reported_error
            if reported is not None and result.cell.key not in referenced:
                referenced.add(result.cell.key)
                axes.axhline(float(reported), color=color, ls=":", lw=1,
                             label=f"paper: {label.removesuffix(' [shortened]')} "
                             f"{_printed(reported)}")  # fmt: skip
            drawn = True
    if not drawn:
        plt.close(figure)
        return None
    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel("test error (%)")
    axes.set_title(
        f"{table_report.table.title}, {_row_name(row, table_report.table)}: test error per epoch"
        "\nline: mean over seeds, band: min-max over seeds, dotted: the paper's final error",
        fontsize=9,
    )
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.tight_layout()
    return figure


def _paper_params(result, originals) -> float:
    """Where the paper puts a cell: its printed count, the original's where the caption says
    they are equal (Table 4), else the counted one."""
    cell = result.cell
    printed = cell.reported_params_m
    if printed is None and cell.params_equal_original and cell.row in originals:
        printed = originals[cell.row].cell.reported_params_m
    return float(printed) if printed else result.params_m


def _row_name(row, table) -> str:
    """The row's label, with its depth where two rows share a label (Table 1)."""
    same = [r for r in table.rows if r.label == row.label]
    return row.label if len(same) == 1 else f"{row.label}, depth {row.depth}"


def _minor_tick(value: float, _position) -> str:
    """Label the 2s and 5s between decades of the log axis (0.2, 0.5, 2, 5, 20, ...)."""
    text = f"{value:.1e}"
    return f"{value:g}" if text[0] in "25" and text[1:3] == ".0" else ""


def _place_labels(axes, labels) -> None:
    """Every point gets its label: right of the point where there is room, else moved up or
    down (or to the left) to the nearest free slot, with a leader line. Greedy, in axes
    fractions of the log-x axis; enough for the ~30 points of a table."""
    if not labels:
        return
    import math

    axes.autoscale_view()
    (x0, x1), (y0, y1) = axes.get_xlim(), axes.get_ylim()
    lx0, lx1 = math.log10(x0), math.log10(x1)
    char_w, line_h = 0.0082, 0.026

    def frac(x: float, y: float) -> tuple[float, float]:
        return (math.log10(max(x, 1e-12)) - lx0) / (lx1 - lx0), (y - y0) / (y1 - y0)

    placed: list[tuple[float, float, float, float]] = []
    points = [frac(x, y) for x, y, _, _ in labels]

    def free(box: tuple[float, float, float, float]) -> bool:
        left, bottom, right, top = box
        if left < 0 or right > 1 or bottom < 0 or top > 1:
            return False
        if any(left < b[2] and b[0] < right and bottom < b[3] and b[1] < top for b in placed):
            return False
        # Keep clear of the markers too (a marker is about a character wide).
        return not any(left - 0.006 < px < right and bottom < py < top for px, py in points)

    order = sorted(range(len(labels)), key=lambda i: (points[i][0], points[i][1]))
    for index in order:
        x, y, text, color = labels[index]
        fx, fy = points[index]
        width = char_w * len(text)
        candidates = []
        for step in range(0, 12):
            for sign in (1, -1) if step else (1,):
                dy = sign * step * line_h
                candidates.append((fx + 0.012, fy + dy))  # right
        candidates += [(fx - 0.012 - width, fy + dy) for dy in (0, line_h, -line_h)]  # left
        chosen = candidates[0]
        for cx, cy in candidates:
            if free((cx, cy - line_h / 2, cx + width, cy + line_h / 2)):
                chosen = (cx, cy)
                break
        cx, cy = chosen
        placed.append((cx, cy - line_h / 2, cx + width, cy + line_h / 2))
        moved = abs(cy - fy) > line_h * 0.6 or cx < fx
        axes.annotate(text, (x, y), xytext=(cx, cy), textcoords="axes fraction", fontsize=6,
                      color=color, va="center", ha="left",
                      arrowprops={"arrowstyle": "-", "color": color, "lw": 0.4, "alpha": 0.6}
                      if moved else None)  # fmt: skip


def _printed(value) -> str:
    return f"{float(value):.{getattr(value, 'decimals', 2)}f}"


def _shortened_text(reproduced) -> str:
    """``: 2 epochs, 512 images`` from the runs' tags, when they were recorded."""
    sizes = sorted({r.size_text for r in reproduced.runs if r.size_text})
    return (": " + "; ".join(sizes)) if sizes else ""


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
