"""``rkrepro ui`` and what the MLflow UI shows of a reproduction.

Address checks are plain CLI calls. The store is written by rkrepro's own :class:`Tracker`
(experiment kind, short run names, dataset input); the browser test starts ``rkrepro ui`` on a
free 127.0.0.1 port against that store, waits for the runs-view URL it prints, loads it in a
real headless Chromium and finds the runs in the DOM (screenshot kept as a test artifact).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import helpers_browser as browser
import pytest
from typer.testing import CliRunner

from rkrepro.cli.app import app
from rkrepro.tracking import keys as mlflow_keys
from rkrepro.tracking import runs as tracking

REPO = Path(__file__).resolve().parent.parent
RUN_NAMES = ("original s0", "1x8_1x2_1x2+share s1")


@pytest.mark.bad_input
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "70000"], "--port must be in 1..65535"),
        (["--port", "0"], "--port must be in 1..65535"),
        (["--host", "not a host"], "neither an IP address nor a host name"),
        (["--host", "0.0.0.0"], "no authentication"),
        (["--host", "192.168.1.5"], "add --expose"),
    ],
)
def test_ui_address_is_validated_in_one_line(tmp_path, args, message):
    env = {"RKREPRO_RUNS_DIR": str(tmp_path / "runs")}
    result = CliRunner().invoke(app, ["ui", *args], env=env)
    assert result.exit_code == 2, result.output
    error = result.stderr.strip()
    assert message in error and "\n" not in error and "Traceback" not in result.output


def test_ui_help_has_no_raw_markup():
    result = CliRunner().invoke(app, ["ui", "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0 and "``" not in result.stdout and "--expose" in result.stdout


def _store(folder: Path) -> tuple[str, str]:
    """Two finished runs of table1's densenet-bc-k12 row, written through the Tracker."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    tracker = tracking.Tracker(uri)
    tracker.connect()
    for name, model, share, seed in (
        (RUN_NAMES[0], "original", False, 0),
        (RUN_NAMES[1], "RKNet-1x8_1x2_1x2", True, 1),
    ):
        tags = {
            mlflow_keys.TAG_TABLE: "table1",
            mlflow_keys.TAG_ROW: "densenet-bc-k12",
            mlflow_keys.TAG_MODEL: model,
            mlflow_keys.TAG_SHARE: str(share).lower(),
            mlflow_keys.TAG_SEED: str(seed),
            mlflow_keys.TAG_PROTOCOL: mlflow_keys.PROTOCOL_PAPER,
        }
        info = tracking.DatasetInfo("cifar10", '{"path": "data"}', {"train_images": 50000})
        log = tracker.create("table1", name, tags, {"protocol.epochs": "300"}, info)
        tracker.client.log_metric(log.run_id, mlflow_keys.M_FINAL_TEST_ERROR, 4.6)
        tracker.client.set_terminated(log.run_id, "FINISHED")
    return uri, tracker.experiment("table1")


def test_the_store_is_what_the_ui_needs(tmp_path):
    uri, experiment_id = _store(tmp_path)
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment(experiment_id)
    assert experiment.tags[mlflow_keys.TAG_EXPERIMENT_KIND] == "custom_model_development"
    runs = client.search_runs([experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(RUN_NAMES)
    inputs = runs[0].inputs.dataset_inputs
    assert [d.dataset.name for d in inputs] == ["cifar10"]
    assert {t.key: t.value for t in inputs[0].tags} == {"mlflow.data.context": "training"}
    from rkrepro.ui import runs_views

    assert runs_views(uri, "http://127.0.0.1:1") == [
        ("table1", f"http://127.0.0.1:1/#/experiments/{experiment_id}/runs")
    ]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.browser
@pytest.mark.slow
def test_ui_opens_on_the_runs_in_chromium(tmp_path, tmp_path_factory):
    browser.chromium()  # skip early without it
    runs = tmp_path / "runs"
    runs.mkdir()
    uri, experiment_id = _store(runs)
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "RKREPRO_RUNS_DIR": str(runs)}
    env.pop("MLFLOW_TRACKING_URI", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "rkrepro", "ui", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 240
        url = None
        while time.monotonic() < deadline and process.poll() is None:
            line = process.stdout.readline()
            lines.append(line)
            if line.strip().startswith("table1: "):
                url = line.split(": ", 1)[1].strip()
                break
        assert url == f"http://127.0.0.1:{port}/#/experiments/{experiment_id}/runs", lines
        assert any("(1 worker)" in line for line in lines)
        dom = browser.run(url, dump_dom=True, budget_ms=20000, timeout=240)
        for name in RUN_NAMES:
            assert name in dom, f"run {name!r} not in the runs view"
        assert "No data available" not in dom
        shot = browser.artifacts_dir(tmp_path_factory) / "mlflow_ui_runs.png"
        browser.run(url, screenshot=shot, budget_ms=20000, size="1400,900", timeout=240)
        assert shot.stat().st_size > 20_000
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=30)
