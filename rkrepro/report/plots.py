"""Plots of a report (matplotlib, Agg): params vs error per table, training curves per row;
and their logging to MLflow (through :mod:`rkrepro.tracking.reports`).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rkrepro.report.build import DATASET_NAMES, Report, TableReport
from rkrepro.report.render.json import to_json
from rkrepro.safe_write import write_atomic
from rkrepro.status import (
    ACTIVE,
)
from rkrepro.tracking import reader, reports

if TYPE_CHECKING:
    from rkrepro.paper import Cell


# --------------------------------------------------------------------------------------------
# Plots (matplotlib, Agg) and their logging to MLflow.


# Titles, labels and legends come from table files and run tags: drawn as they are written,
# never parsed as mathtext (an unbalanced ``$`` was a ValueError, a deeply nested one a
# RecursionError after half a minute) nor handed to TeX.
PLAIN_TEXT = {"text.parse_math": False, "text.usetex": False}


def write_plots(
    report: Report,
    out_dir: Path,
    tracking_uri: str | None = None,
    history: Callable[[str], list[tuple[int, float]]] | None = None,
) -> list[Path]:
    """Params vs error per table, and test error vs epoch per row; returns the PNG paths.

    ``history(run_id)`` gives (epoch, test error) pairs; by default from the store. Every text
    is drawn as plain text (:data:`PLAIN_TEXT`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if history is None:
        history = reader.metric_history(tracking_uri)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    with matplotlib.rc_context(PLAIN_TEXT):
        for table_report in report.tables:
            paths.append(_plot_params(plt, report, table_report, out_dir))
            for row in table_report.table.rows:
                path = _plot_curves(plt, table_report, row, out_dir, history)
                if path is not None:
                    paths.append(path)
    return paths


_KIND_MARKER = {"original": "o", "variant": "^", "share": "s"}
_KIND_NAME = {"original": "original", "variant": "variant", "share": "variant with share"}


def _kind(cell: Cell) -> str:
    return "original" if cell.model == "original" else ("share" if cell.share else "variant")


def point_label(cell: Cell) -> str:
    """(variant, share) in a few characters: ``1×8_1×2_1×2 +share``, ``original``; ``*`` for the
    starred protocol."""
    name = "original" if cell.model == "original" else cell.printed_model.removeprefix("RKNet-")
    return name + (" +share" if cell.share else "") + ("*" if cell.star else "")


def _save(figure, path: Path) -> None:
    """The PNG written whole under a new name, then renamed: a link planted at ``path`` is
    replaced, never written through. Cropped to what was drawn (``bbox_inches="tight"``), so
    no title, label or legend outside the axes is ever cut off."""
    write_atomic(
        path,
        lambda stream: figure.savefig(
            stream, format="png", dpi=120, bbox_inches="tight", pad_inches=0.15
        ),
        sync=False,
    )


def _plot_params(plt, report: Report, table_report: TableReport, out_dir: Path) -> Path:
    figure = params_figure(plt, report, table_report)
    path = out_dir / f"{table_report.table.id}_params_vs_error.png"
    _save(figure, path)
    plt.close(figure)
    return path


def params_figure(plt, report: Report, table_report: TableReport):
    """Paper points hollow, reproduced seed means filled with a ±std bar, a line from each
    reproduced point to its paper point; colour = row, marker = kind, every point labelled."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    table = table_report.table
    figure, axes = plt.subplots(figsize=(11, 7))
    colors = plt.get_cmap("tab10")
    row_color = {row.id: colors(i % 10) for i, row in enumerate(table.rows)}
    reproduced_any = starred = False
    originals = {r.cell.row: r for r in table_report.results if r.cell.model == "original"}
    labels: list[tuple[float, float, str, object]] = []
    lines: list[tuple[tuple[float, float], tuple[float, float]]] = []  # links and error bars
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
                lines.append(((x, y), (result.params_m, stat.mean)))
                axes.plot([x, result.params_m], [y, stat.mean], color=color, lw=0.7, ls=":",
                          zorder=1)  # fmt: skip
        if stat is not None:
            reproduced_any = True
            spread = stat.std or 0.0
            lines.append(
                ((result.params_m, stat.mean - spread), (result.params_m, stat.mean + spread))
            )
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
    _place_labels(axes, labels, lines)  # last: in the axes' final size, where labels must fit
    return figure


def _plot_curves(plt, table_report, row, out_dir, history) -> Path | None:
    figure = curves_figure(plt, table_report, row, history)
    if figure is None:
        return None
    path = out_dir / f"{table_report.table.id}_{row.id}_curves.png"
    _save(figure, path)
    plt.close(figure)
    return path


def curves_figure(plt, table_report, row, history):
    """Mean test error per epoch over seeds (band: min-max) for each model of the row, one
    colour per model: solid for paper-protocol runs, dashed for each size of shortened runs
    (never averaged together), dotted for the paper's final error. The legend sits below the
    axes, where it covers nothing."""
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(figsize=(9, 5.2))
    colors = plt.get_cmap("tab10")
    results = [r for r in table_report.results if r.cell.row == row.id]
    drawn = False
    for index, result in enumerate(results):
        color, cell = colors(index % 10), result.cell
        name = point_label(cell)
        groups = [(result.paper, "-", "")]
        if result.shortened is not None:
            for order, (size, runs) in enumerate(_by_size(result.shortened)):
                style = _SHORTENED_DASHES[order % len(_SHORTENED_DASHES)]
                groups.append((runs, style, f" [shortened: {size}]" if size else " [shortened]"))
        shown_any = False
        for reproduced, style, suffix in groups:
            runs = reproduced if isinstance(reproduced, list) else _shown_runs(reproduced)
            curves = [c for c in (history(run.run_id) for run in runs) if c]
            if not curves:
                continue
            epochs = sorted({epoch for curve in curves for epoch, _ in curve})
            by_epoch = [[v for c in curves for e, v in c if e == epoch] for epoch in epochs]
            means = [statistics.fmean(vs) for vs in by_epoch]
            axes.plot(epochs, means, ls=style, lw=1.3, color=color,
                      label=f"{name}{suffix} (n={len(curves)})")  # fmt: skip
            if len(curves) > 1:
                axes.fill_between(epochs, [min(v) for v in by_epoch], [max(v) for v in by_epoch],
                                  color=color, alpha=0.13, lw=0)  # fmt: skip
            shown_any = drawn = True
        if shown_any and cell.reported_error is not None:
            axes.axhline(float(cell.reported_error), color=color, ls=":", lw=1.1,
                         label=f"paper: {name} {_printed(cell.reported_error)}")  # fmt: skip
    if not drawn:
        plt.close(figure)
        return None
    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel("test error (%)")
    axes.set_title(
        f"{table_report.table.title}, {_row_name(row, table_report.table)}: test error per epoch"
    )
    axes.grid(alpha=0.3)
    entries = len(axes.get_legend_handles_labels()[0])
    legend = axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12),
                         ncol=2 if entries > 4 else 1, frameon=False,
                         title="solid: paper protocol; dashed: shortened runs (one pattern per "
                         "size); band: min-max over seeds; dotted: the paper's final error",
                         title_fontsize=8)  # fmt: skip
    legend.get_title().set_color("0.3")
    return figure


# Line styles of shortened curves, one per size of run (solid is the paper protocol's).
_SHORTENED_DASHES = ("--", "-.", (0, (1, 1.5)), (0, (6, 2, 1, 2, 1, 2)))


def _shown_runs(reproduced) -> list:
    """The runs behind the statistics, plus those still in progress."""
    return [*reproduced.counted, *(r for r in reproduced.runs if r.status in ACTIVE)]


def _by_size(reproduced) -> list[tuple[str, list]]:
    """Shortened runs grouped by how short they were: a 2-epoch and a 3-epoch run are two
    different trainings, never one mean."""
    groups: dict[str, list] = {}
    for run in _shown_runs(reproduced):
        groups.setdefault(run.size_text, []).append(run)
    return sorted(groups.items())


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


def _place_labels(axes, labels, lines=()) -> None:
    """Every point gets its label, and no label covers another label, a marker or one of the
    ``lines`` (error bars, links; pairs of data points): each is tried
    right of its point, then left, above and below, then further out in every direction, and
    the first free spot (measured with the text's real size) wins; a label moved away from its
    point gets a thin leader line. Labels of the densest points are placed first."""
    if not labels:
        return
    from matplotlib.text import Text

    figure = axes.figure
    axes.autoscale_view()
    renderer = figure.canvas.get_renderer()
    inside = axes.get_window_extent(renderer)
    points = [tuple(axes.transData.transform((x, y))) for x, y, _, _ in labels]
    marker = 5.0  # half a marker, in pixels
    taken = [(px - marker, py - marker, px + marker, py + marker) for px, py in points]
    for start, end in lines:  # a line as the boxes of its pieces
        (ax, ay), (bx, by) = axes.transData.transform([start, end])
        pieces = max(1, int(max(abs(bx - ax), abs(by - ay)) // 6))
        for k in range(pieces + 1):
            cx, cy = ax + (bx - ax) * k / pieces, ay + (by - ay) * k / pieces
            taken.append((cx - 2, cy - 2, cx + 2, cy + 2))

    def crowd(index: int) -> int:
        px, py = points[index]
        return sum(abs(px - qx) < 60 and abs(py - qy) < 30 for qx, qy in points)

    for index in sorted(range(len(labels)), key=lambda i: -crowd(i)):
        x, y, text, color = labels[index]
        leader = {"arrowstyle": "-", "color": color, "lw": 0.5, "alpha": 0.7, "shrinkA": 1,
                  "shrinkB": 3}  # fmt: skip
        label = axes.annotate(text, (x, y), xytext=(0, 0), textcoords="offset points",
                              fontsize=6.5, color=color, va="center", ha="left",
                              annotation_clip=False, arrowprops=leader)  # fmt: skip
        chosen = None
        for dx, dy, ha in _offsets():
            label.set_position((dx, dy))
            label.set_ha(ha)
            label.update_positions(renderer)
            box = Text.get_window_extent(label, renderer)  # the words, not the leader
            edges = (box.x0 - 1, box.y0 - 1, box.x1 + 1, box.y1 + 1)
            within = inside.x0 <= box.x0 and box.x1 <= inside.x1
            within = within and inside.y0 <= box.y0 and box.y1 <= inside.y1
            if within and not any(_overlap(edges, other) for other in taken):
                chosen = (dx, dy, ha, edges)
                break
        if chosen is None:  # nowhere free: right of the point, as before
            chosen = (6, 0, "left", None)
        dx, dy, ha, edges = chosen
        label.set_position((dx, dy))
        label.set_ha(ha)
        if edges is not None:
            taken.append(edges)
        label.arrow_patch.set_visible(abs(dy) > 4 or abs(dx) > 12)  # a leader when moved away


def _offsets():
    """Label positions around a point (offset points, alignment), nearest first."""
    for radius in (6, 10, 16, 24, 34, 46, 60, 76, 94):
        yield radius, 0, "left"
        yield -radius, 0, "right"
        for dy in (radius, -radius):
            for dx, ha in ((radius * 0.6, "left"), (-radius * 0.6, "right"), (0, "center")):
                yield dx, dy, ha


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _printed(value) -> str:
    return f"{float(value):.{getattr(value, 'decimals', 2)}f}"


def log_plots(tracking_uri: str | None, report: Report, paths: Sequence[Path], name: str) -> str:
    """Log the PNGs (and the JSON report) as artifacts of a new run in ``rkrepro/reports``;
    returns the run id."""
    params = {"metric": report.metric, "include_shortened": str(report.include_shortened).lower()}
    if report.tolerance_override is not None:
        params["tolerance_pp"] = str(report.tolerance_override)
    return reports.log_report(tracking_uri, name, params, paths, to_json(report))
