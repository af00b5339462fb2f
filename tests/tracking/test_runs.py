"""The writer of training runs on a real SQLite store: one MLflow run per configuration, opened,
failed, resumed and finished in place, each epoch logged once."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from rkrepro.tracking import keys as mlflow_keys
from rkrepro.tracking import runs


def _epoch(epoch: int) -> SimpleNamespace:
    """What the trainer hands over after an epoch (:class:`rkrepro.train.EpochRecord`)."""
    return SimpleNamespace(
        epoch=epoch, train_loss=2.0, train_error=80.0, test_error=70.0 - epoch, lr=0.1,
        epoch_seconds=1.5, images_per_s=42.0, peak_memory_mb=0.0, test_top5_error=None,
    )  # fmt: skip


def test_a_run_fails_resumes_and_finishes_as_one_mlflow_run(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RKREPRO_RUNS_DIR", str(tmp_path / "runs"))
    tracker = runs.Tracker(None)  # the default local store, under RKREPRO_RUNS_DIR
    assert tracker.connect(create=False) is False  # nothing ran yet: no store is made
    assert not (tmp_path / "runs" / "mlflow.db").exists()
    assert tracker.connect()
    params = runs.flatten({"protocol": {"lr": 0.1, "lr_milestones": [150, 225]}, "note": None})
    assert params == {"protocol.lr": "0.1", "protocol.lr_milestones": "[150, 225]", "note": "null"}
    tags = {mlflow_keys.TAG_TABLE: "tiny", mlflow_keys.TAG_CONFIG_HASH: "abc123"}
    dataset = runs.DatasetInfo("cifar10[64]", "data", {"train_images": 64})
    log = tracker.create("tiny", "tiny/bc-k4/original seed 0", tags, params, dataset)
    log.log_epoch(_epoch(1))
    log.log_epoch(_epoch(1))  # logged before a crash: not again
    log.stop("FAILED", "non-finite training loss", "epoch,test_error\n1,69.0\n")

    found = tracker.latest_run("tiny", "abc123")
    assert found == runs.ExistingRun(log.run_id, "FAILED")
    assert tracker.logged_epochs(found) == {1}
    client = tracker.client
    assert client.get_run(log.run_id).data.tags[mlflow_keys.TAG_FAILURE].startswith("non-finite")
    resumed = tracker.resume(found, {mlflow_keys.TAG_DEVICE: "cpu"})
    run = client.get_run(log.run_id)
    assert run.info.status == "RUNNING" and mlflow_keys.TAG_FAILURE not in run.data.tags
    resumed.log_epoch(_epoch(2))
    resumed.complete({mlflow_keys.M_FINAL_TEST_ERROR: 68.0}, 2, "epoch,test_error\n")

    run = client.get_run(log.run_id)
    assert run.info.status == "FINISHED" and run.data.tags[mlflow_keys.TAG_DEVICE] == "cpu"
    history = client.get_metric_history(log.run_id, mlflow_keys.M_TEST_ERROR)
    assert [(m.step, m.value) for m in history] == [(1, 69.0), (2, 68.0)]
    assert [i.dataset.name for i in run.inputs.dataset_inputs] == ["cifar10[64]"]
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.artifact_location == (tmp_path / "runs" / "artifacts" / "tiny").as_uri()
    assert experiment.tags[mlflow_keys.TAG_EXPERIMENT_KIND] == "custom_model_development"
    tracker.supersede(runs.ExistingRun(log.run_id, "FINISHED"), "newer")
    assert client.get_run(log.run_id).data.tags[mlflow_keys.TAG_SUPERSEDED] == "newer"
