"""What the report's plots show: every paper point labelled (variant, share), reproduced cells
as mean ± std linked to their paper point, starred cells marked, an explicit "no reproduced runs
yet", and on the curves the paper's final error as a reference line.

The figures are real matplotlib figures (Agg) inspected before they are saved; the PNGs are
written too, under the test's tmp folder.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from rkrepro import (
    paper,  # noqa: E402
)
from rkrepro import report as reporting  # noqa: E402
from rkrepro.report.plots import curves_figure, params_figure, point_label  # noqa: E402
from rkrepro.tracking import keys as mlflow_keys  # noqa: E402
from rkrepro.tracking.reader import RunRecord  # noqa: E402

SHIPPED = Path(__file__).resolve().parents[2] / "tables"


@pytest.fixture(scope="module")
def plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    yield pyplot
    pyplot.close("all")


@pytest.fixture(scope="module")
def tables():
    return paper.load_tables(SHIPPED)


def _counter(tables):
    by_spec = {
        c.spec: round(float(c.reported_params_m) * 1e6)
        for c in paper.all_cells(tables)
        if c.reported_params_m is not None
    }
    return lambda spec: (by_spec.get(spec, 270_000), by_spec.get(spec, 270_000))


def _run(row, model, share, seed, curve, protocol=mlflow_keys.PROTOCOL_PAPER, **extra):
    return RunRecord(
        run_id=f"{row}-{model}-{share}-{seed}-{protocol}",
        status="FINISHED",
        table="table4",
        row=row,
        model=model,
        share=share,
        seed=str(seed),
        protocol=protocol,
        start_time=seed,
        metrics={mlflow_keys.M_FINAL_TEST_ERROR: curve[-1]},
        **extra,
    )


def _report(tables, records, **options):
    return reporting.build_report([tables["table4"]], records, counter=_counter(tables), **options)


V = "RKNet-1x3_1x2_1x2"
RECORDS = [
    _run("resnet-20", "original", False, 0, [20.0, 7.30]),
    _run("resnet-20", "original", False, 1, [21.0, 7.40]),
    _run("resnet-20", V, True, 0, [22.0, 7.90]),
]


def _texts(figure) -> list[str]:
    return [t.get_text() for t in figure.axes[0].texts]


def test_every_paper_point_is_labelled_and_no_runs_is_said(plt, tables):
    report = _report(tables, [])
    figure = params_figure(plt, report, report.tables[0])
    texts = _texts(figure)
    printed = [r.cell for r in report.tables[0].results if r.cell.reported_error is not None]
    assert len(printed) == 23  # 5 ResNets, 13 variant errors, 5 with share
    assert len(texts) == 23 + 1  # one label per point, and the no-runs note
    for cell in printed:
        assert point_label(cell) in texts, point_label(cell)
    assert "1×3_1×2_1×2 +share" in texts and "original" in texts
    assert any("no reproduced runs yet" in t for t in texts)
    assert not figure.axes[0].containers  # no error bars without runs


def test_reproduced_cells_are_mean_and_std_linked_to_the_paper(plt, tables):
    report = _report(tables, RECORDS)
    figure = params_figure(plt, report, report.tables[0])
    axes = figure.axes[0]
    texts = _texts(figure)
    assert not any("no reproduced runs yet" in t for t in texts)
    assert "n=2" in texts and "n=1" in texts
    bars = axes.containers
    means = sorted(round(float(bar.lines[0].get_ydata()[0]), 3) for bar in bars)
    assert means == [7.35, 7.9]
    original_bar = next(b for b in bars if round(float(b.lines[0].get_ydata()[0]), 2) == 7.35)
    (segments,) = [c for c in original_bar.lines[2]]
    low, high = segments.get_segments()[0][:, 1]
    assert high - low == pytest.approx(2 * statistics.stdev([7.30, 7.40]))
    # The dotted link from each reproduced mean to its paper point.
    links = [line for line in axes.lines if line.get_linestyle() == ":"]
    ends = sorted(tuple(round(v, 2) for v in line.get_ydata()) for line in links)
    assert ends == [(7.27, 7.35), (8.32, 7.9)]


def test_starred_cells_are_marked(plt, tables):
    report = reporting.build_report([tables["table3"]], [], counter=_counter(tables))
    figure = params_figure(plt, report, report.tables[0])
    assert "original*" in _texts(figure)  # DenseNet-161, batch 128 for 100 epochs
    legend = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert "* starred: other protocol" in legend


def test_curves_show_the_papers_final_error_and_shortened_size(plt, tables):
    shortened = _run(
        "resnet-20",
        V,
        False,
        0,
        [30.0, 25.0],
        protocol=mlflow_keys.PROTOCOL_SHORTENED,
        epochs=2,
        train_subset=512,
    )
    report = _report(tables, [*RECORDS, shortened], include_shortened=True)
    history = {
        r.run_id: list(enumerate([20.0, r.metrics["final_test_error"]], 1))
        for r in [*RECORDS, shortened]
    }
    row = paper.find_row(tables["table4"], "resnet-20")
    figure = curves_figure(plt, report.tables[0], row, history.__getitem__)
    axes = figure.axes[0]
    labels = [line.get_label() for line in axes.lines]
    assert "paper: original 7.27" in labels
    assert "paper: 1×3_1×2_1×2 +share 8.32" in labels
    reference = next(line for line in axes.lines if line.get_label() == "paper: original 7.27")
    assert list(reference.get_ydata()) == [7.27, 7.27]
    assert "1×3_1×2_1×2 [shortened: 2 epochs, 512 images] (n=1)" in labels
    assert "original (n=2)" in labels


def test_write_plots_writes_pngs(plt, tables, tmp_path):
    report = _report(tables, RECORDS)
    history = {r.run_id: [(1, 20.0), (2, r.metrics["final_test_error"])] for r in RECORDS}
    paths = reporting.write_plots(report, tmp_path, history=history.__getitem__)
    names = sorted(p.name for p in paths)
    assert names == ["table4_params_vs_error.png", "table4_resnet-20_curves.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)


# --------------------------------------------------------------------------------------------
# What a person can read: nothing overlaps, nothing is cut, nothing is mislabelled.


def _boxes(figure):
    renderer = figure.canvas.get_renderer()
    from matplotlib.text import Text

    out = []
    for label in figure.axes[0].texts:
        if label.get_text() and hasattr(label, "update_positions"):  # the point labels
            label.update_positions(renderer)
            out.append((label.get_text(), Text.get_window_extent(label, renderer)))
    return out


@pytest.mark.parametrize("table_id", ["table1", "table2", "table3", "table4"])
def test_point_labels_never_overlap_and_stay_inside_the_axes(plt, tables, table_id):
    """Table 1's dense cluster (DenseNet-BC k=24/40 at 6-30M and 3.5-3.8 %) included."""
    report = reporting.build_report([tables[table_id]], [], counter=_counter(tables))
    figure = params_figure(plt, report, report.tables[0])
    inside = figure.axes[0].get_window_extent(figure.canvas.get_renderer())
    boxes = _boxes(figure)
    assert len(boxes) >= 9
    for index, (text, box) in enumerate(boxes):
        if text.startswith("no reproduced runs"):
            continue
        assert inside.x0 <= box.x0 and box.x1 <= inside.x1, text
        for other, box2 in boxes[index + 1 :]:
            assert not box.overlaps(box2), f"{text!r} overlaps {other!r}"


def test_a_saved_plot_holds_its_whole_title_and_legend(plt, tables, tmp_path):
    """Nothing drawn outside the axes (the curves' legend below, the rows' legend on the right,
    the title) is cut off in the PNG, even for a row of six models with shortened runs; and the
    curves keep most of the width (the legend does not eat half of it)."""
    from PIL import Image

    short = mlflow_keys.PROTOCOL_SHORTENED
    cells = [c for c in paper.all_cells(tables, "table4") if c.row == "resnet-56"]
    records = []
    for seed, cell in enumerate(cells):
        records.append(_run("resnet-56", cell.model, cell.share, seed, [30.0, 9.0]))
        records.append(_run("resnet-56", cell.model, cell.share, seed, [40.0, 20.0], short,
                            epochs=2, train_subset=256))  # fmt: skip
    report = _report(tables, records, include_shortened=True)
    history = {r.run_id: [(1, 40.0), (2, r.metrics["final_test_error"])] for r in records}
    row = paper.find_row(tables["table4"], "resnet-56")
    for path in reporting.write_plots(report, tmp_path, history=history.__getitem__):
        if "curves" in path.name:
            figure = curves_figure(plt, report.tables[0], row, history.__getitem__)
        else:
            figure = params_figure(plt, report, report.tables[0])
        renderer = figure.canvas.get_renderer()
        drawn = figure.get_tightbbox(renderer)
        width, height = Image.open(path).size
        assert width >= drawn.width * 120 - 2 and height >= drawn.height * 120 - 2, path.name
        if "curves" in path.name:
            axes = figure.axes[0].get_window_extent(renderer)
            assert axes.width >= 0.75 * drawn.width * figure.dpi, "the legend takes the width"


def test_the_papers_line_is_the_papers_and_each_shortened_size_is_its_own_curve(plt, tables):
    """A cell with only shortened runs still gets the paper's line, labelled with the cell (the
    paper never trained shortened); a 2-epoch and a 3-epoch run are two curves, not one mean."""
    short = [
        _run("resnet-20", V, False, 0, [30.0, 25.0], protocol=mlflow_keys.PROTOCOL_SHORTENED,
             epochs=2, train_subset=512),
        _run("resnet-20", V, False, 1, [30.0, 26.0, 24.0], protocol=mlflow_keys.PROTOCOL_SHORTENED,
             epochs=3),
    ]  # fmt: skip
    report = _report(tables, short, include_shortened=True)
    history = {r.run_id: list(enumerate([30.0, r.metrics["final_test_error"]], 1)) for r in short}
    row = paper.find_row(tables["table4"], "resnet-20")
    figure = curves_figure(plt, report.tables[0], row, history.__getitem__)
    labels = [line.get_label() for line in figure.axes[0].lines]
    assert "paper: 1×3_1×2_1×2 7.60" in labels
    assert not any("paper:" in label and "shortened" in label for label in labels)
    assert "1×3_1×2_1×2 [shortened: 2 epochs, 512 images] (n=1)" in labels
    assert "1×3_1×2_1×2 [shortened: 3 epochs] (n=1)" in labels
    styles = {line.get_label(): line.get_linestyle() for line in figure.axes[0].lines}
    assert (
        styles["1×3_1×2_1×2 [shortened: 3 epochs] (n=1)"]
        != styles["1×3_1×2_1×2 [shortened: 2 epochs, 512 images] (n=1)"]
    )
    legend = figure.axes[0].get_legend().get_window_extent(figure.canvas.get_renderer())
    axes = figure.axes[0].get_window_extent(figure.canvas.get_renderer())
    assert legend.y1 <= axes.y0  # below the axes: it covers no curve
