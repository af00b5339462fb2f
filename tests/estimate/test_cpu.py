"""CPU users: ``plan`` and ``--dry-run`` estimate for the CPU that will run it (a short probe
there), and a paper-protocol run on the CPU is warned about before it starts."""

from __future__ import annotations

import io
import json

import helpers_workspace as wsh
import pytest
from rich.console import Console
from typer.testing import CliRunner

from rkrepro import paper
from rkrepro.cli.app import app
from rkrepro.launch.execute import warn_cpu_protocol
from rkrepro.planning.options import RunOptions
from rkrepro.planning.plan import make_plans

pytest.importorskip("torch")


@pytest.fixture
def env(tmp_path):
    return {
        **wsh.make_workspace(tmp_path),
        "MLFLOW_TRACKING_URI": None,  # None unsets it (see tests/test_visibility.py)
    }


def test_plan_on_cpu_measures_there_and_says_cpu_hours(env):
    result = CliRunner().invoke(
        app, ["plan", "tiny", "--device", "cpu", "--format", "json"], env=env
    )
    assert result.exit_code == 0, result.output
    cells = json.loads(result.stdout)["cells"]
    assert cells and all(c["source"].startswith("measured on CPU (") for c in cells)
    assert all(c["gpu_hours"] > 0 for c in cells)
    rich = CliRunner().invoke(app, ["plan", "tiny", "--device", "cpu"], env=env)
    assert "CPU-h" in rich.stdout and "GPU-h" not in rich.stdout


@pytest.mark.bad_input
def test_plan_device_is_validated(env):
    result = CliRunner().invoke(app, ["plan", "tiny", "--device", "tpu"], env=env)
    assert result.exit_code == 2 and "--device must be auto, cpu or cuda" in result.stderr


def test_dry_run_on_cpu_estimates_cpu_hours(env):
    args = ["run", "tiny", "--row", "bc-k4", "--variant", "original", "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, "--dry-run"], env={**env, "COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "CPU-hours still to train" in result.output and "measured on CPU" in result.output


def test_paper_protocol_on_cpu_is_warned_shortened_is_not(env, monkeypatch):
    for key, value in env.items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    cells = paper.resolve_cells(paper.load_tables(), "tiny", "bc-k4", ["original"])

    def warned(**options) -> str:
        opts = RunOptions(device="cpu", **options)
        buffer = io.StringIO()
        warn_cpu_protocol(make_plans(cells, [0], opts, "cpu"), "cpu", Console(file=buffer))
        return buffer.getvalue()

    text = " ".join(warned().split())
    assert "1 paper-protocol run (300 epochs) on the CPU" in text
    assert "--epochs 2 --train-subset 512" in text
    assert warned(epochs=2, train_subset=512) == ""
