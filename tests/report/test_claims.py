"""The paper's claims (``claims:`` in tables/*.yaml): schema, evaluation on the printed numbers
and on reproduced runs, and ``rkrepro report --claims``.

Run records are real :class:`~rkrepro.tracking.reader.RunRecord` values, as both store readers
return them; the CLI test reads a real (empty, then filled) SQLite MLflow store.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rkrepro import report as reporting
from rkrepro.paper import all_cells, load_tables
from rkrepro.report.claims import (
    FAILS,
    HOLDS,
    UNDECIDED,
    claim_tables,
    evaluate_claims,
    pair_text,
    verdict_texts,
)
from rkrepro.tracking import keys as mlflow_keys
from rkrepro.tracking.reader import RunRecord

SHIPPED = Path(__file__).resolve().parents[2] / "tables"
SIX = {
    "one-stage-fewest-params",
    "share-halves-densenet-bc",
    "no-share-more-accurate",
    "bold-beats-densenet",
    "one-stage-worse-off-cifar10",
    "resnet-variants-not-comparable",
}


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RKREPRO_TABLES_DIR", raising=False)


@pytest.fixture(scope="module")
def tables():
    return load_tables(SHIPPED)


def _printed_counter(tables):
    """Parameters = the printed count (123456 where none is printed): claims on these numbers
    must come out as on the paper's."""
    by_spec = {
        c.spec: round(float(c.reported_params_m) * 1e6)
        for c in all_cells(tables)
        if c.reported_params_m is not None
    }
    return lambda spec: (by_spec.get(spec, 123_456), by_spec.get(spec, 123_456))


def _claims(tables, records=(), counter=None):
    chosen = claim_tables(tables)
    report = reporting.build_report(chosen, records, counter=counter or _printed_counter(tables))
    return {r.claim.id: r for r in evaluate_claims(report)}


def _run(table, row, model, share, seed, error, status="FINISHED", n=0) -> RunRecord:
    return RunRecord(
        run_id=f"{table}-{row}-{model}-{share}-{seed}-{n}",
        status=status,
        table=table,
        row=row,
        model=model,
        share=share,
        seed=str(seed),
        protocol=mlflow_keys.PROTOCOL_PAPER,
        start_time=1000 + n,
        metrics={mlflow_keys.M_FINAL_TEST_ERROR: error} if status == "FINISHED" else {},
    )


def test_the_six_claims_hold_on_the_papers_numbers(tables):
    results = _claims(tables)
    assert set(results) >= SIX
    for claim_id in SIX:
        assert results[claim_id].on_paper == HOLDS, claim_id
        assert results[claim_id].pairs, claim_id
    # Pairs: 10 (one-stage vs multi-stage, Table 1), 4 BC rows with sharing, 4 ResNet rows
    # with both errors printed (ResNet-110's variant has "-").
    assert len(results["one-stage-fewest-params"].pairs) == 10
    assert len(results["share-halves-densenet-bc"].pairs) == 4
    not_comparable = results["resnet-variants-not-comparable"]
    assert (len(not_comparable.pairs), not_comparable.not_printed) == (4, 1)


def test_without_runs_error_claims_are_undecided_and_say_so(tables):
    results = _claims(tables)
    for claim_id in ("no-share-more-accurate", "resnet-variants-not-comparable"):
        assert results[claim_id].on_reproduced == UNDECIDED
        paper, reproduced = verdict_texts(results[claim_id])
        assert paper.startswith("holds (") and "no reproduced runs yet" in reproduced


def test_parameter_claims_are_decided_today_on_the_counted_models(tables):
    """The real models, counted (cached): the parameter claims need no training."""
    pytest.importorskip("torch")
    table1 = {"table1": tables["table1"]}
    report = reporting.build_report([tables["table1"]], [])
    wanted = [
        c
        for c in tables["table1"].claims
        if c.id in ("one-stage-fewest-params", "share-halves-densenet-bc")
    ]
    results = evaluate_claims(report, wanted)
    assert [r.on_reproduced for r in results] == [HOLDS, HOLDS], [
        [pair_text(p, True) for p in r.failing(True)] for r in results
    ]
    assert all(r.decided == len(r.pairs) for r in results)
    assert "counted parameters" in verdict_texts(results[0])[1]
    assert table1  # the claims named only table1's cells


def test_reproduced_runs_decide_a_claim_and_name_the_failing_pair(tables):
    r20, r32 = "resnet-20", "resnet-32"
    records = [
        # ResNet-20: the one-stage variant only 0.1 pp worse than the original -> comparable.
        _run("table4", r20, "original", False, 0, 7.30),
        _run("table4", r20, "original", False, 1, 7.40, n=1),
        _run("table4", r20, "RKNet-1x3_1x2_1x2", False, 0, 7.45),
        _run("table4", r20, "RKNet-1x3_1x2_1x2", False, 1, 7.45, n=1),
        # ResNet-32: clearly worse, as the paper says.
        _run("table4", r32, "original", False, 0, 6.60),
        _run("table4", r32, "RKNet-1x5_1x4_1x4", False, 0, 7.50),
    ]
    result = _claims(tables, records)["resnet-variants-not-comparable"]
    assert result.on_paper == HOLDS
    assert result.on_reproduced == FAILS
    failing = [pair_text(p, True) for p in result.failing(True)]
    assert failing == ["table4 resnet-20: RKNet-1×3_1×2_1×2 7.45 vs original 7.35 (error)"]
    assert result.seeds == (1, 2)
    assert "1-2 seeds" in verdict_texts(result)[1]


def test_an_unfinished_run_leaves_the_pair_undecided(tables):
    records = [
        _run("table4", "resnet-20", "original", False, 0, 7.30),
        _run("table4", "resnet-20", "RKNet-1x3_1x2_1x2", False, 0, 0.0, status="RUNNING"),
    ]
    result = _claims(tables, records)["resnet-variants-not-comparable"]
    assert result.on_reproduced == UNDECIDED and result.decided == 0


def test_a_claim_on_a_table_not_in_the_folder_is_kept_but_not_judged(tmp_path, tables):
    folder = tmp_path / "only"
    folder.mkdir()
    shutil.copy(SHIPPED / "table1.yaml", folder)
    loaded = load_tables(folder)
    assert "no-share-more-accurate" in {c.id for c in loaded["table1"].claims}
    judged = {c.id for c in reporting.claims.claims_of(loaded)}
    assert "one-stage-fewest-params" in judged and "no-share-more-accurate" not in judged
    # The shipped folder names only tables it holds.
    assert {t for table in tables.values() for c in table.claims for t in c.tables} <= set(tables)


# --------------------------------------------------------------------------------------------
# The CLI.


def _invoke(*args: str):
    from rkrepro.cli.app import app

    return CliRunner().invoke(app, list(args), env={"COLUMNS": "80"})


def test_cli_claims_every_format_on_an_empty_store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = _invoke("report", "--claims", "--format", "json", "--tracking-uri", uri)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    by_id = {c["id"]: c for c in document["claims"]}
    assert set(by_id) >= SIX
    assert all(by_id[c]["on_paper"] == HOLDS for c in SIX)
    assert by_id["share-halves-densenet-bc"]["on_reproduced"] == HOLDS
    assert by_id["no-share-more-accurate"]["on_reproduced"] == UNDECIDED
    assert not (tmp_path / "mlflow.db").exists()  # reading never creates the store

    table4 = _invoke("report", "table4", "--claims", "-f", "markdown", "--tracking-uri", uri)
    assert table4.exit_code == 0, table4.output
    assert "resnet-variants-not-comparable" in table4.stdout
    assert "one-stage-fewest-params" not in table4.stdout  # a Table 1 claim

    rich = _invoke("report", "--claims", "--tracking-uri", uri)
    assert rich.exit_code == 0, rich.output
    assert "The paper's claims" in rich.stdout
    assert max(len(line) for line in rich.stdout.splitlines()) <= 80
