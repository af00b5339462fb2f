"""Which runs first: the claims decided as early as the GPU-hours allow (greedy over bundles of
runs), and ``rkrepro plan --budget``."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from rkrepro import paper
from rkrepro.campaign import order
from rkrepro.cli.app import app
from rkrepro.estimate import cost, target


@pytest.fixture(scope="module")
def shipped():
    tables = paper.load_tables()
    cells = paper.all_cells(tables)
    hours = {e.cell.key: e.gpu_hours for e in cost.estimate(cells, target.named_gpu("h100"))}
    return tables, cells, hours


@pytest.fixture
def empty_store(tmp_path, monkeypatch):
    monkeypatch.setenv("RKREPRO_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(target.CALIBRATION_DEVICE_ENV, raising=False)
    return f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"


def _cells(n: int, printed: bool = True):
    tables = paper.load_tables()
    cells = paper.all_cells(tables, "table4")[:n]
    if not printed:
        from dataclasses import replace

        cells = [replace(c, reported_error=None) for c in cells]
    return cells


def test_a_claim_bundle_beats_single_runs_per_hour() -> None:
    a, b, c, d = _cells(4, printed=False)  # nothing judged: only the claims count
    hours = {a.key: 1.0, b.key: 1.0, c.key: 1.0, d.key: 10.0}
    needs = [order.Need("two-runs", frozenset({a.key, b.key})), order.Need("big", {d.key})]
    ranking = order.rank([a, b, c, d], hours, needs)
    first = ranking.steps[0]
    assert [x.key for x in first.cells] == [a.key, b.key] and first.claims == ("two-runs",)
    assert ranking.steps[1].claims == ("big",)
    assert [s.cells[0].key for s in ranking.steps[2:]] == [c.key]  # decides nothing: last
    assert ranking.decided == ["two-runs", "big"]


def test_the_budget_is_kept_and_what_does_not_fit_is_named() -> None:
    a, b, c = _cells(3)
    hours = {a.key: 3.0, b.key: 4.0, c.key: 0.5}
    needs = [order.Need("ab", frozenset({a.key, b.key})), order.Need("outside", {"elsewhere"})]
    ranking = order.rank([a, b, c], hours, needs, budget=5.0)
    assert ranking.hours <= 5.0
    assert [cell.key for cell in ranking.cells] == [c.key, a.key]  # most judged per hour first
    assert ranking.over_budget == ("ab",) and ranking.out_of_reach == ("outside",)
    # What is reproduced already costs nothing and is not run again.
    done = order.rank([a, b, c], hours, needs, reproduced={a.key}, budget=5.0)
    assert done.decided == ["ab"] and a not in done.cells


def test_the_shipped_claims_need_the_runs_they_compare(shipped, empty_store) -> None:
    from rkrepro.models.analytic import param_counts
    from rkrepro.report.build import build_report
    from rkrepro.report.claims import claims_of, evaluate_claims

    tables, _, _ = shipped
    report = build_report(list(tables.values()), [], counter=param_counts)
    needs, reproduced = order.needs(report, evaluate_claims(report, claims_of(tables)))
    assert reproduced == set()
    by_id = {need.claim: need.cells for need in needs}
    # The parameter claims hold on the counted models: nothing to train for them.
    assert "one-stage-fewest-params" not in by_id and "share-halves-densenet-bc" not in by_id
    resnet = by_id["resnet-variants-not-comparable"]
    assert "table4/resnet-20/original/noshare" in resnet
    assert "table4/resnet-20/RKNet-1x3_1x2_1x2/noshare" in resnet
    assert not any("share" in key.split("/")[-1] and "noshare" not in key for key in resnet)
    # An error gap needs the rows' originals too.
    assert "table3/densenet-121/original/noshare" in by_id["one-stage-worse-off-cifar10"]


def test_plan_budget_lists_runs_within_it_and_the_claims_they_decide(empty_store) -> None:
    argv = ["plan", "--gpu", "h100", "--budget", "60", "--format", "json"]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["hours"] <= 60 and payload["steps"]
    assert payload["hours"] == pytest.approx(sum(s["hours"] for s in payload["steps"]))
    assert "resnet-variants-not-comparable" in payload["decided"]
    assert "no-share-more-accurate" in payload["not_within_budget"]  # ImageNet runs: too dear
    text = CliRunner().invoke(app, argv[:-2], env={"COLUMNS": "200"})
    assert text.exit_code == 0, text.output
    assert "Within 60.00 GPU-hours on NVIDIA H100 SXM5 80 GB in fp32" in text.stdout
    assert "claims decided then: " in text.stdout and "table4/resnet-20/original" in text.stdout


def test_run_all_in_claims_order_starts_with_what_decides(empty_store) -> None:
    result = CliRunner().invoke(
        app, ["run", "all", "--order", "claims", "--dry-run", "--gpu", "h100"],
        env={"COLUMNS": "250"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    cells = [line.split()[0] for line in result.stdout.splitlines() if "  status=" in line]
    assert len(cells) == 80
    assert cells[0].startswith("table4/")  # cheap runs that judge cells and decide claims
    printed = {c.key: c.reported_error for c in paper.all_cells(paper.load_tables())}
    assert printed[cells[-1]] is None  # what decides nothing comes last
    assert "order: claims first" in result.stdout
    paper_order = CliRunner().invoke(app, ["run", "all", "--dry-run", "--gpu", "h100"])
    listed = [line.split()[0] for line in paper_order.stdout.splitlines() if "  status=" in line]
    assert listed[0] == "table1/densenet-k12-d40/original/noshare" and sorted(listed) == sorted(
        cells
    )
