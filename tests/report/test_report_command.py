"""``rkrepro report`` (:mod:`rkrepro.cli.report`): ``--check`` exit codes, ``--plots`` written and
logged to MLflow, ``--reading`` and ``--compare``."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from rkrepro.tracking import keys as mlflow_keys

from .helpers_report import R20_V, cli_app, invoke


def test_cli_check_exit_codes(store):
    uri, _ = store
    worse = invoke("report", "4", "-f", "csv", "--check", "--tracking-uri", uri)
    assert worse.exit_code == 1
    assert f"table4/resnet-20/{R20_V}/noshare" in worse.output
    assert invoke("report", "table3", "-f", "csv", "--check", "--tracking-uri", uri).exit_code == 0
    wide = invoke("report", "4", "-f", "csv", "--check", "--tolerance", "1", "--tracking-uri", uri)
    assert wide.exit_code == 0, wide.output
    unknown = invoke("report", "table9", "--tracking-uri", uri)
    assert unknown.exit_code == 2


def test_cli_plots_written_and_logged(store, tmp_path):
    uri, _ = store
    plots = tmp_path / "plots"
    result = invoke("report", "table4", "-f", "json", "--plots", str(plots), "--tracking-uri", uri)
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in plots.iterdir())
    assert "table4_params_vs_error.png" in names
    assert "table4_resnet-20_curves.png" in names
    assert all((plots / n).read_bytes()[:4] == b"\x89PNG" for n in names)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(mlflow_keys.REPORTS_EXPERIMENT)
    run = client.search_runs([experiment.experiment_id])[0]
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert logged == {f"plots/{n}" for n in names}


def test_report_cli_reading_options(tmp_path):
    runner = CliRunner()
    uri = f"sqlite:///{tmp_path / 'none.db'}"
    ok = runner.invoke(
        cli_app(),
        ["report", "table4", "--tracking-uri", uri, "--format", "json",
         "--reading", "resnet_stages=euler", "--compare", "reported_error=best"],
    )  # fmt: skip
    assert ok.exit_code == 0, ok.output
    document = json.loads(ok.output)
    assert document["readings"] == {"resnet_stages": "euler"}
    assert document["compare"] == {"reported_error": "best"}
    bad = runner.invoke(cli_app(), ["report", "table4", "--tracking-uri", uri, "--compare", "x"])
    assert bad.exit_code != 0 and "--compare 'x': expected NAME=VALUE" in bad.output


def test_check_with_nothing_to_judge_says_so_and_does_not_pass(tmp_path):
    """No reproduced number at all: not "Check passed", but a line that says nothing was
    judged, and its own exit code."""
    empty = f"sqlite:///{tmp_path / 'none.db'}"
    nothing = invoke("report", "table4", "-f", "csv", "--check", "--tracking-uri", empty)
    assert nothing.exit_code == 3, nothing.output
    assert "Check judged nothing" in nothing.stderr and "Check passed" not in nothing.output


def test_check_that_passes_says_how_much_it_judged(store):
    uri, _ = store
    result = invoke("report", "table3", "-f", "csv", "--check", "--tracking-uri", uri)
    assert result.exit_code == 0
    assert "Check passed: 1 of 13 cells judged" in result.stderr


def test_report_out_replaces_the_text_report_it_wrote_itself(store, tmp_path):
    """`report --out r.txt` twice: the second replaces the first (an rkrepro report), and a
    file that is not one is still refused."""
    uri, _ = store
    out = tmp_path / "r.txt"
    for _ in range(2):
        result = invoke("report", "table4", "--out", str(out), "--tracking-uri", uri)
        assert result.exit_code == 0, result.output
    assert out.read_text(encoding="utf-8").startswith("rkrepro report\n")
    other = tmp_path / "notes.txt"
    other.write_text("my notes\n", encoding="utf-8")
    refused = invoke("report", "table4", "--out", str(other), "--tracking-uri", uri)
    assert refused.exit_code == 2 and "not an rkrepro report" in refused.output
    claims = tmp_path / "claims.txt"
    for _ in range(2):
        result = invoke("report", "--claims", "--out", str(claims), "--tracking-uri", uri)
        assert result.exit_code == 0, result.output


def test_report_plots_replace_their_run_instead_of_piling_up(store, tmp_path, monkeypatch):
    """`report table4 --plots` twice: one run for table4 in rkrepro/reports (the first one
    deleted, and its files with it), beside the run of another target."""
    from mlflow import MlflowClient

    uri, _ = store
    monkeypatch.setenv("RKREPRO_RUNS_DIR", str(tmp_path / "runs"))
    client = MlflowClient(tracking_uri=uri)
    ids = []
    for target in (["table4"], ["table4"], ["table3"]):
        plots = tmp_path / "plots"
        result = invoke(
            "report", *target, "-f", "json", "--plots", str(plots), "--tracking-uri", uri
        )
        assert result.exit_code == 0, result.output
        experiment = client.get_experiment_by_name(mlflow_keys.REPORTS_EXPERIMENT)
        ids.append(result.stderr.split("logged to MLflow run ")[1].split(" ")[0])
    assert experiment.tags[mlflow_keys.TAG_EXPERIMENT_KIND] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id])
    names = sorted(r.info.run_name for r in runs if r.info.run_id in ids)
    assert names == ["report table3", "report table4"]
    assert client.get_run(ids[0]).info.lifecycle_stage == "deleted"
    assert client.get_run(ids[1]).info.lifecycle_stage == "active"
    first = client.get_run(ids[0]).info.artifact_uri
    if first.startswith("file://"):
        assert not Path(first.removeprefix("file://")).exists()


def test_a_markdown_report_links_its_plots(store, tmp_path):
    """`report --plots DIR --out report.md`: the Markdown shows each PNG, by a path relative to
    the report, so the folder can be moved or pushed as it is."""
    uri, _ = store
    out, plots = tmp_path / "report.md", tmp_path / "plots"
    result = invoke("report", "table4", "--plots", str(plots), "--out", str(out),
                    "--tracking-uri", uri)  # fmt: skip
    assert result.exit_code == 0, result.output
    text = out.read_text(encoding="utf-8")
    assert "## Plots" in text
    for png in sorted(plots.iterdir()):
        assert f"](plots/{png.name})" in text, png.name
