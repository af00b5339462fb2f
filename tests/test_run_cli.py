"""``rkrepro run`` end to end: real CLI, real SQLite MLflow store, real (tiny) CIFAR files.

The kill/resume test runs ``python -m rkrepro`` in subprocesses and kills them with SIGKILL
and SIGTERM; the resumed run must end with exactly the metrics of an uninterrupted one.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import helpers_cifar as h
import helpers_workspace as ws_helpers
import pytest
import torch
from helpers_run import REPO, VARIANT, Workspace, invoke, new_store
from typer.testing import CliRunner

from rkrepro import paper
from rkrepro.cli.app import app
from rkrepro.models import build_model
from rkrepro.tracking import keys as mlflow_keys


def test_run_trains_every_cell_and_records_it(ws: Workspace) -> None:
    result = invoke("--epochs", "2", "--device", "cpu")
    assert result.exit_code == 0, result.output
    runs = ws.runs_of()
    assert len(runs) == 3
    by_key = {
        (r.data.tags[mlflow_keys.TAG_MODEL], r.data.tags[mlflow_keys.TAG_SHARE]): r for r in runs
    }
    assert set(by_key) == {("original", "false"), (VARIANT, "false"), (VARIANT, "true")}
    run = by_key[(VARIANT, "true")]
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags[mlflow_keys.TAG_TABLE] == "tiny" and tags[mlflow_keys.TAG_ROW] == "bc-k4"
    assert (
        tags[mlflow_keys.TAG_SEED] == "0"
        and tags[mlflow_keys.TAG_PROTOCOL] == mlflow_keys.PROTOCOL_SHORTENED
    )
    assert tags[mlflow_keys.TAG_DEVICE] == "cpu" and tags[mlflow_keys.TAG_GIT_COMMIT]
    assert tags["rkrepro.torch_version"] == torch.__version__ and "rkrepro.cuda_version" in tags
    assert tags[mlflow_keys.TAG_PRECISION] == "fp32"
    assert tags[mlflow_keys.TAG_FAST_PATH] == "channels_last,cpu_malloc"
    config_hash = tags[mlflow_keys.TAG_CONFIG_HASH]
    params = run.data.params
    assert params["precision"] == "fp32" and params["fast_path"] == "channels_last,cpu_malloc"
    assert params["protocol.epochs"] == "2" and params["protocol.paper_epochs"] == "300"
    assert params["protocol.lr_milestones"] == "[1, 2]" and params["protocol.nesterov"] == "True"
    assert params["spec.share"] == "True" and params["seed"] == "0"
    metrics = run.data.metrics
    for name in (
        mlflow_keys.M_TRAIN_LOSS,
        mlflow_keys.M_TRAIN_ERROR,
        mlflow_keys.M_TEST_ERROR,
        mlflow_keys.M_LR,
        mlflow_keys.M_EPOCH_SECONDS,
        mlflow_keys.M_IMAGES_PER_S,
        mlflow_keys.M_PEAK_MEMORY,
        mlflow_keys.M_FINAL_TEST_ERROR,
        mlflow_keys.M_BEST_TEST_ERROR,
        mlflow_keys.M_PARAMS_PAPER,
        mlflow_keys.M_PARAMS_TOTAL,
    ):
        assert name in metrics, name
    history = ws.client().get_metric_history(run.info.run_id, mlflow_keys.M_TEST_ERROR)
    assert sorted(m.step for m in history) == [1, 2]
    assert metrics[mlflow_keys.M_FINAL_TEST_ERROR] == max(history, key=lambda m: m.step).value
    assert metrics[mlflow_keys.M_PARAMS_PAPER] < metrics[mlflow_keys.M_PARAMS_TOTAL]
    artifacts = {a.path for a in ws.client().list_artifacts(run.info.run_id)}
    assert {"config.yaml", "config.json", "model_summary.txt", "metrics.csv"} <= artifacts
    assert (ws.runs / "artifacts" / "tiny" / run.info.run_id).is_dir()
    # A finished run keeps its final weights only: the resume state is gone.
    checkpoint = ws.runs / "checkpoints" / config_hash
    assert sorted(p.name for p in checkpoint.iterdir()) == ["final.pt", "lock"]
    assert tags[mlflow_keys.TAG_FINAL_WEIGHTS] == str(checkpoint / "final.pt")
    final = torch.load(checkpoint / "final.pt", weights_only=True)
    assert final["run_id"] == run.info.run_id and final["epochs"] == 2
    tables = paper.load_tables(ws.root / "tables")
    (cell,) = paper.resolve_cells(tables, "tiny", "bc-k4", [VARIANT], "share")
    build_model(cell.spec).load_state_dict(final["model"])  # the trained network, whole
    assert not (ws.root / "mlruns").exists()

    # Idempotent: the same command skips the finished runs.
    again = invoke("--epochs", "2", "--device", "cpu")
    assert again.exit_code == 0, again.output
    assert again.output.count("skipped") == 3 and len(ws.runs_of()) == 3
    # The overhead switches are not identity: the plain fp32 loop is the same run.
    plain = invoke("--epochs", "2", "--device", "cpu", "--fast-path", "off")
    assert plain.exit_code == 0, plain.output
    assert plain.output.count("skipped") == 3 and len(ws.runs_of()) == 3

    dry = invoke("--epochs", "2", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert dry.output.count("status=done") == 3 and "nothing trained" in dry.output

    forced = invoke("--epochs", "2", "--variant", "original", "--force", "--device", "cpu")
    assert forced.exit_code == 0, forced.output
    assert len(ws.runs_of()) == 4


def test_dry_run_trains_nothing_and_creates_no_store(ws: Workspace) -> None:
    (ws.runs / "mlflow.db").unlink()
    result = invoke("--dry-run", "--seeds", "2")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "status=" in line]
    assert len(lines) == 3
    assert all("seeds=[0, 1]" in line and "new" in line and "params=" in line for line in lines)
    assert "protocol: paper, 300 epochs" in result.output
    # --device auto: the precision is the one the runs would get here
    expected = "bf16-autocast" if torch.cuda.is_available() else "fp32 (fast path: channels_last"
    assert f"precision {expected}" in result.output
    assert "readings: reported_error=final, precision=" in result.output
    assert not (ws.runs / "mlflow.db").exists() and not (ws.runs / "checkpoints").exists()


@pytest.mark.bad_input
def test_missing_data_offline_is_one_line_exit_2(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchvision import datasets

    shutil.rmtree(ws.data)
    monkeypatch.setenv("RKREPRO_DOWNLOAD", "1")
    monkeypatch.setattr(datasets.CIFAR10, "url", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    result = invoke("--epochs", "1", "--device", "cpu")
    assert result.exit_code == 2
    error = result.stderr.strip()
    assert error.startswith("Error: ") and "\n" not in error, result.output
    assert "cifar-10-batches-py" in error and str(ws.data) in error
    assert "Traceback" not in result.output
    assert ws.runs_of() == []  # no run was created for data that is not there


@pytest.mark.bad_input
def test_unreachable_tracking_server_fails_fast(ws: Workspace) -> None:
    started = time.monotonic()
    result = invoke("--epochs", "1", "--tracking-uri", "http://127.0.0.1:9")
    assert result.exit_code == 2
    assert "unreachable" in result.stderr and time.monotonic() - started < 30


@pytest.mark.fault
def test_nan_fails_that_run_goes_on_and_resumes_later(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RKREPRO_FAULT_NAN_AT_STEP", "2")
    args = ("--epochs", "1", "--variant", "original", "--variant", VARIANT, "--no-share")
    result = invoke(*args, "--device", "cpu")
    assert result.exit_code == 1, result.output
    runs = ws.runs_of()
    assert len(runs) == 2  # the second cell ran after the first failed
    for run in runs:
        assert run.info.status == "FAILED"
        assert "non-finite training loss" in run.data.tags[mlflow_keys.TAG_FAILURE]

    monkeypatch.delenv("RKREPRO_FAULT_NAN_AT_STEP")
    result = invoke(*args, "--device", "cpu")
    assert result.exit_code == 0, result.output
    resumed = ws.runs_of()
    assert [r.info.run_id for r in resumed] == [r.info.run_id for r in runs]
    assert all(r.info.status == "FINISHED" for r in resumed)
    assert all(mlflow_keys.TAG_FAILURE not in r.data.tags for r in resumed)


def test_ui_refuses_a_server_uri(ws: Workspace) -> None:
    result = CliRunner().invoke(app, ["ui", "--tracking-uri", "http://127.0.0.1:9"])
    assert result.exit_code == 2 and "tracking server already" in result.stderr


# --------------------------------------------------------------------------------------------
# kill -9 and SIGTERM through real processes.


def _spawn(ws: Workspace, runs: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, **ws.env, "RKREPRO_RUNS_DIR": str(runs), "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, "-m", "rkrepro", "run", "tiny", "--row", "bc-k4", *args]
    return subprocess.Popen(
        command, cwd=ws.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _wait_for_epoch(runs: Path, epoch: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    ws_helpers.wait_for_epoch(
        runs,
        epoch,
        alive=lambda: proc.poll() is None,
        timeout=timeout,
        details=lambda: proc.communicate()[0],
        on_timeout=proc.kill,
    )


def _series(ws: Workspace, runs: Path, run_id: str, name: str) -> list[tuple[int, float]]:
    history = ws.client(runs).get_metric_history(run_id, name)
    return sorted((m.step, m.value) for m in history)


@pytest.mark.fault
def test_kill_and_sigterm_resume_to_the_uninterrupted_result(
    ws: Workspace, mlflow_template: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h.write_random_cifar10(ws.data, n_train=512, n_test=64)
    args = ("--variant", "original", "--epochs", "4", "--device", "cpu")

    reference = ws.root / "runs-ref"
    new_store(mlflow_template, reference)
    monkeypatch.setenv("RKREPRO_RUNS_DIR", str(reference))
    done = invoke(*args)  # in-process, one thread like the subprocesses
    assert done.exit_code == 0, done.output

    runs = ws.runs
    killed = _spawn(ws, runs, *args)
    _wait_for_epoch(runs, 1, killed)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(timeout=60) == -signal.SIGKILL
    (run,) = ws.runs_of()
    assert run.info.status == "RUNNING"  # kill -9 leaves no chance to say otherwise

    stopped = _spawn(ws, runs, *args)
    _wait_for_epoch(runs, 2, stopped)
    stopped.send_signal(signal.SIGTERM)
    output = stopped.communicate(timeout=60)[0]
    assert stopped.returncode == 143, output
    (run,) = ws.runs_of()
    assert run.info.status == "KILLED"

    finished = _spawn(ws, runs, *args)
    output = finished.communicate(timeout=240)[0]
    assert finished.returncode == 0, output
    assert "resuming run" in output
    (run,) = ws.runs_of()
    (ref_run,) = ws.runs_of(reference)
    assert run.info.status == "FINISHED"
    for name in (mlflow_keys.M_TRAIN_LOSS, mlflow_keys.M_TEST_ERROR, mlflow_keys.M_LR):
        assert _series(ws, runs, run.info.run_id, name) == _series(
            ws, reference, ref_run.info.run_id, name
        ), name
    for name in (mlflow_keys.M_FINAL_TEST_ERROR, mlflow_keys.M_BEST_TEST_ERROR):
        assert run.data.metrics[name] == ref_run.data.metrics[name]
    for name in (mlflow_keys.M_PARAMS_PAPER, mlflow_keys.M_PARAMS_TOTAL):  # once, not per resume
        assert len(_series(ws, runs, run.info.run_id, name)) == 1, name


RESNET_TABLE = """\
id: tinyres
dataset: cifar10
readings: {resnet_stages: concat}
protocol: {dataset: cifar10, batch_size: 32, epochs: 300, lr: 0.1, momentum: 0.9,
           weight_decay: 1.0e-4, lr_schedule: {drop_at: [0.5, 0.75]}}
rows:
  - id: resnet-14
    family: resnet
    depth: 14
    original: {params_m: null, error: null}
    variants:
      - {name: RKNet-2x1_1x1_1x1, error: 50.0}
"""


def test_a_reading_is_its_own_run_end_to_end(ws: Workspace) -> None:
    """`rkrepro run --reading` trains another network, tagged and hashed apart; the default
    reading's run is found again; the report counts each run only under its own reading."""
    import json

    (ws.root / "tables" / "tinyres.yaml").write_text(RESNET_TABLE, encoding="utf-8")
    args = ["run", "tinyres", "--row", "resnet-14", "--variant", "RKNet-2x1_1x1_1x1"]
    args += ["--epochs", "1", "--train-subset", "32", "--device", "cpu"]
    runner = CliRunner()
    for extra in ([], ["--reading", "resnet_stages=lincomb"]):
        result = runner.invoke(app, [*args, *extra])
        assert result.exit_code == 0, result.output
    client = ws.client()
    exp = client.get_experiment_by_name(mlflow_keys.experiment_name("tinyres"))
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    assert [r.data.tags["rkrepro.reading.resnet_stages"] for r in runs] == ["concat", "lincomb"]
    assert len({r.data.tags[mlflow_keys.TAG_CONFIG_HASH] for r in runs}) == 2
    assert all(r.info.status == "FINISHED" for r in runs)
    assert runs[1].data.params["readings.resnet_stages"] == "lincomb"
    # A lincomb network has the learned coefficients: more parameters in total, same conv count.
    concat, lincomb = (r.data.metrics for r in runs)
    assert lincomb[mlflow_keys.M_PARAMS_PAPER] < concat[mlflow_keys.M_PARAMS_PAPER]
    again = runner.invoke(app, args)  # the concat run is done: skipped, not retrained
    assert again.exit_code == 0 and len(client.search_runs([exp.experiment_id])) == 2

    def reported(*extra: str) -> float:
        out = runner.invoke(app, ["report", "tinyres", "--format", "json", "--include-shortened",
                                  *extra])  # fmt: skip
        assert out.exit_code == 0, out.output
        cells = json.loads(out.output)["tables"][0]["cells"]
        (cell,) = [c for c in cells if c["model"] == "RKNet-2x1_1x1_1x1" and c["n"]]
        return cell["readings"], cell["run_ids"]

    assert reported() == ("resnet_stages=concat, reported_error=final", [runs[0].info.run_id])
    assert reported("--reading", "resnet_stages=lincomb")[1] == [runs[1].info.run_id]
