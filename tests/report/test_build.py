"""Building a report (:mod:`rkrepro.report.build`) from a real SQLite MLflow store: seed
statistics, verdicts, bold claims, parameter counts, precision and readings."""

from __future__ import annotations

import pytest
import torch

from rkrepro import paper
from rkrepro import report as reporting
from rkrepro.paper import readings
from rkrepro.report.render.content import records
from rkrepro.report.render.markdown import to_markdown
from rkrepro.tracking import keys as mlflow_keys
from rkrepro.tracking import reader

from .helpers_report import PAPER, R20_MULTI, R20_V, START, cell_result, report_of


def test_verdicts_and_seed_statistics(store):
    uri, _ = store
    result = report_of(uri, "table4")
    original = cell_result(result, "table4/resnet-20/original/noshare")
    assert original.paper.error.seeds == ("0", "1", "2")  # the rerun replaced seed 0's 9.99
    assert original.paper.error.mean == pytest.approx(7.30)
    assert original.paper.error.std == pytest.approx(0.1)
    assert original.verdict == reporting.WITHIN
    expected = {
        f"table4/resnet-20/{R20_V}/noshare": reporting.WORSE,
        f"table4/resnet-20/{R20_V}/share": reporting.BETTER,
        "table4/resnet-20/RKNet-3x1_2x1_2x1/noshare": reporting.RUNNING,
        "table4/resnet-32/original/noshare": reporting.FAILED_VERDICT,
        "table4/resnet-32/RKNet-1x5_1x4_1x4/noshare": reporting.MISSING,  # shortened only
        "table4/resnet-110/RKNet-1x18_1x17_1x17/noshare": reporting.UNREPORTED,
        "table4/resnet-44/original/noshare": reporting.MISSING,
    }
    assert {key: cell_result(result, key).verdict for key in expected} == expected
    assert [r.cell.key for r in result.worse()] == [f"table4/resnet-20/{R20_V}/noshare"]
    # a wider tolerance makes it acceptable; the deleted run (99.0) never counts
    assert not report_of(uri, "table4", tolerance=1.0).worse()


def test_best_epoch_and_shortened_are_opt_in_and_labelled(store):
    uri, _ = store
    best = report_of(uri, "table4", best=True)
    assert best.metric == mlflow_keys.M_BEST_TEST_ERROR and "best-epoch" in best.metric_label
    assert cell_result(best, "table4/resnet-20/original/noshare").paper.error.mean == pytest.approx(
        7.25
    )
    plain = cell_result(report_of(uri, "table4"), "table4/resnet-32/RKNet-1x5_1x4_1x4/noshare")
    assert plain.shortened is None
    short = report_of(uri, "table4", include_shortened=True)
    cell = cell_result(short, "table4/resnet-32/RKNet-1x5_1x4_1x4/noshare")
    assert cell.shortened.error.mean == pytest.approx(12.5)
    assert cell.verdict == reporting.MISSING  # shortened runs are shown, never judged
    assert "[shortened] 12.50 (n=1) / +5.03" in to_markdown(short)


def test_bold_claims_re_evaluated(store):
    uri, _ = store
    claims = {
        (c.result.cell.row, c.result.cell.model, c.result.cell.share): c
        for c in report_of(uri, "table1").tables[0].claims
    }
    paper = claims[("densenet-bc-k24-d250", "RKNet-1x21_1x2_1x2", False)]
    assert (paper.paper_bold, paper.on_paper, paper.on_reproduced) == (True, True, False)
    new = claims[("densenet-bc-k12", "RKNet-1x8_1x2_1x2", False)]
    assert (new.paper_bold, new.on_paper, new.on_reproduced) == (False, False, True)
    undecided = claims[("densenet-bc-k24-d292", "RKNet-1x24_1x2_1x2", True)]
    assert undecided.on_reproduced is None  # no runs yet


def test_parameter_counts_come_from_the_spec_and_equal_the_built_models(monkeypatch, tmp_path):
    """A cold report answers in about a second: it counts from the spec, as ``params`` does,
    and builds no model; the counts are the built models' (here, on the meta device)."""
    import rkrepro.models

    monkeypatch.setenv("HOME", str(tmp_path))  # a fresh home: nothing cached from before
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    cells = paper.all_cells(paper.load_tables(), "table1")[:5]
    built = {}
    for cell in cells:
        with torch.device("meta"):
            built[cell.spec] = rkrepro.models.count_params(rkrepro.models.build_model(cell.spec))

    def no_build(*args, **kwargs):
        raise AssertionError("the report built a model")

    monkeypatch.setattr(rkrepro.models, "build_model", no_build)
    monkeypatch.setattr("rkrepro.models.counting.build_model", no_build)
    assert reporting.param_counts(c.spec for c in cells) == built


def test_a_non_fp32_number_is_labelled_and_never_mixed_with_fp32(tmp_path):
    """The paper trained in fp32: a seed trained under bf16 autocast is never averaged with fp32
    seeds of the same cell; it is reported under its own precision and labelled as such, by
    both readers, in every format (runs without the tag are fp32, as all runs before it)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment(mlflow_keys.experiment_name("table4"))
    for seed, (precision, error) in enumerate([(None, 7.20), (mlflow_keys.PRECISION_BF16, 7.40)]):
        tags = {
            mlflow_keys.TAG_TABLE: "table4",
            mlflow_keys.TAG_ROW: "resnet-20",
            mlflow_keys.TAG_MODEL: "original",
            mlflow_keys.TAG_SHARE: "false",
            mlflow_keys.TAG_SEED: str(seed),
            mlflow_keys.TAG_PROTOCOL: PAPER,
            **({mlflow_keys.TAG_PRECISION: precision} if precision else {}),
        }
        run = client.create_run(experiment, start_time=START + seed, tags=tags)
        client.log_metric(run.info.run_id, mlflow_keys.M_FINAL_TEST_ERROR, error)
        client.set_terminated(run.info.run_id, "FINISHED")
    fast = reader.fetch_runs(uri, ["table4"], reader="sqlite")
    assert fast == reader.fetch_runs(uri, ["table4"], reader="mlflow")
    assert [r.precision for r in fast] == [mlflow_keys.PRECISION_FP32, mlflow_keys.PRECISION_BF16]

    result = report_of(uri, "table4")
    original = cell_result(result, "table4/resnet-20/original/noshare")
    assert original.paper.precisions == (mlflow_keys.PRECISION_FP32,)
    assert original.paper.error.mean == pytest.approx(7.20) and original.paper.error.n == 1
    assert [r.precision for r in original.other_readings] == [mlflow_keys.PRECISION_BF16]
    record = next(r for r in records(result) if r["row"] == "resnet-20")
    assert record["precision"] == "fp32" and record["other_reading_runs"] == 1
    line = next(x for x in to_markdown(result).splitlines() if "7.20" in x)
    assert "[bf16-autocast]" not in line
    bf16 = report_of(uri, "table4", readings={"precision": mlflow_keys.PRECISION_BF16})
    original = cell_result(bf16, "table4/resnet-20/original/noshare")
    assert original.paper.precisions == (mlflow_keys.PRECISION_BF16,)
    assert original.paper.error.mean == pytest.approx(7.40)
    record = next(r for r in records(bf16) if r["row"] == "resnet-20")
    assert record["precision"] == "bf16-autocast"
    line = next(x for x in to_markdown(bf16).splitlines() if "7.40" in x)
    assert "[bf16-autocast]" in line
    fp32_only = next(r for r in records(result) if r["row"] == "resnet-32")
    assert fp32_only["precision"] == ""  # no finished run counted: no precision to show


# --------------------------------------------------------------------------------------------
# Readings.


def test_runs_count_only_under_the_reading_they_were_trained_as(tmp_path):
    """A legacy run (no reading tags: trained with the euler wiring before readings existed)
    of a multi-stage ResNet never counts as concat; --reading and --compare show it under
    its own reading, beside the concat runs, in both readers and the records."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment(mlflow_keys.experiment_name("table4"))
    base = {
        mlflow_keys.TAG_TABLE: "table4",
        mlflow_keys.TAG_ROW: "resnet-20",
        mlflow_keys.TAG_MODEL: R20_MULTI,
        mlflow_keys.TAG_SHARE: "false",
        mlflow_keys.TAG_PROTOCOL: PAPER,
    }
    concat = {readings.TAG_PREFIX + "resnet_stages": "concat"}
    lincomb = {readings.TAG_PREFIX + "resnet_stages": "lincomb"}
    for seed, (extra, final, best) in enumerate(
        [({}, 7.90, 7.80), (concat, 7.50, 7.40), (concat, 7.70, 7.60), (lincomb, 7.10, 7.00)]
    ):
        tags = {**base, mlflow_keys.TAG_SEED: str(seed), **extra}
        run = client.create_run(experiment, start_time=START + seed, tags=tags)
        client.log_metric(run.info.run_id, mlflow_keys.M_FINAL_TEST_ERROR, final)
        client.log_metric(run.info.run_id, mlflow_keys.M_BEST_TEST_ERROR, best)
        client.set_terminated(run.info.run_id, "FINISHED")
    fast = reader.fetch_runs(uri, ["table4"], reader="sqlite")
    assert fast == reader.fetch_runs(uri, ["table4"], reader="mlflow")
    assert [r.legacy for r in fast] == [True, False, False, False]
    key = f"table4/resnet-20/{R20_MULTI}/noshare"

    default = cell_result(report_of(uri, "table4"), key)
    assert default.paper.error.seeds == ("1", "2") and default.paper.error.mean == pytest.approx(
        7.6
    )
    assert dict(default.paper.readings)["resnet_stages"] == "concat"
    assert len(default.other_readings) == 2  # the euler and the lincomb run, not counted

    euler = cell_result(report_of(uri, "table4", readings={"resnet_stages": "euler"}), key)
    assert euler.paper.error.seeds == ("0",) and euler.paper.legacy == 1

    side = report_of(uri, "table4", compare={"resnet_stages": "lincomb"})
    both = cell_result(side, key)
    assert both.paper.error.mean == pytest.approx(7.6)
    assert both.compare.error.mean == pytest.approx(7.1) and both.compare.error.seeds == ("3",)
    line = next(x for x in to_markdown(side).splitlines() if "RKNet-3×1" in x)
    assert "[resnet_stages=concat]" in line
    assert "[resnet_stages=lincomb, reported_error=final] 7.10 (n=1) / -0.47" in line
    record = next(r for r in records(side) if r["model"] == R20_MULTI)
    assert record["readings"] == "resnet_stages=concat, reported_error=final"
    assert record["compare_readings"].startswith("resnet_stages=lincomb")
    assert record["compare_error_mean"] == pytest.approx(7.1) and record["other_reading_runs"] == 2

    best = cell_result(report_of(uri, "table4", compare={"reported_error": "best"}), key)
    assert best.compare.error.mean == pytest.approx(7.5)  # the same runs, best-epoch metric
    assert dict(best.compare.readings)["reported_error"] == "best"
