"""The report's plots run: written like a training run, its artifacts where a local store keeps
every experiment's (``runs/artifacts/<folder>``, which ``rkrepro ui`` serves)."""

from __future__ import annotations

from pathlib import Path

from rkrepro.tracking import keys as mlflow_keys
from rkrepro.tracking import reports


def test_the_plots_run_keeps_its_artifacts_beside_the_training_runs(tmp_path: Path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("RKREPRO_RUNS_DIR", str(tmp_path / "runs"))
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    png = tmp_path / "table4_params_vs_error.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    params = {"metric": mlflow_keys.M_FINAL_TEST_ERROR, "include_shortened": "false"}
    run_id = reports.log_report(uri, "report table4", params, [png], '{"tables": []}')
    artifacts = tmp_path / "runs" / "artifacts" / mlflow_keys.REPORTS_ARTIFACTS / run_id
    assert (artifacts / "artifacts" / "plots" / png.name).read_bytes() == png.read_bytes()
    assert (artifacts / "artifacts" / "report.json").read_text() == '{"tables": []}'
    run = MlflowClient(tracking_uri=uri).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params == params
    assert run.data.tags[mlflow_keys.TAG_REPORT] == "report table4"
    again = reports.log_report(uri, "report all", params, [], "{}")  # the same experiment
    assert (
        MlflowClient(tracking_uri=uri).get_run(again).info.experiment_id == run.info.experiment_id
    )
