"""The workspace of the ``rkrepro run`` tests: a tiny table, tiny CIFAR files and an SQLite
store copied from a migrated template (fixtures ``mlflow_template`` and ``ws``), and the run
command through the real app."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import helpers_cifar as h
import pytest
import torch
from typer.testing import CliRunner

from rkrepro.cli.app import app
from rkrepro.tracking import keys as mlflow_keys

REPO = Path(__file__).resolve().parent.parent

TINY_TABLE = """\
id: tiny
title: Tiny
caption: A DenseNet-BC of depth 10 and growth rate 4, for tests.
dataset: cifar10
protocol:
  dataset: cifar10
  augmentation: "zero-pad 4 + random 32x32 crop + horizontal flip; per-channel normalisation"
  batch_size: 64
  epochs: 300
  lr: 0.1
  momentum: 0.9
  weight_decay: 1.0e-4
  lr_milestones: [150, 225]
  lr_gamma: 0.1
  nesterov: true
rows:
  - id: bc-k4
    label: DenseNet-BC (k = 4)
    family: densenet-bc
    depth: 10
    growth_rate: 4
    bottleneck: true
    compression: 0.5
    m: [2, 2, 2]
    original: {params_m: 0.002, error: 50.0}
    variants:
      - name: RKNet-1×2_1×1_1×1
        params_m: 0.006
        error: 40.0
        share: {params_m: 0.005, error: 45.0}
"""
VARIANT = "RKNet-1x2_1x1_1x1"


@pytest.fixture(scope="module")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, migrated SQLite store; copying it saves each test the slow schema creation."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@dataclass
class Workspace:
    root: Path
    runs: Path
    data: Path
    env: dict[str, str]

    def client(self, runs: Path | None = None):
        from mlflow.tracking import MlflowClient

        return MlflowClient(f"sqlite:///{(runs or self.runs) / 'mlflow.db'}")

    def runs_of(self, runs: Path | None = None) -> list:
        client = self.client(runs)
        exp = client.get_experiment_by_name(mlflow_keys.experiment_name("tiny"))
        if exp is None:
            return []
        return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def new_store(template: Path, runs: Path) -> None:
    runs.mkdir(parents=True, exist_ok=True)
    shutil.copy(template, runs / "mlflow.db")


@pytest.fixture
def ws(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_template: Path
) -> Iterator[Workspace]:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "tiny.yaml").write_text(TINY_TABLE, encoding="utf-8")
    h.write_random_cifar10(tmp_path / "data", n_train=96, n_test=32)
    new_store(mlflow_template, tmp_path / "runs")
    env = {
        "RKREPRO_RUNS_DIR": str(tmp_path / "runs"),
        "RKREPRO_DATA_DIR": str(tmp_path / "data"),
        "RKREPRO_TABLES_DIR": str(tmp_path / "tables"),
        "RKREPRO_VERIFY_CHECKSUMS": "0",
        "RKREPRO_DOWNLOAD": "0",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RKREPRO_FAULT_NAN_AT_STEP", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Workspace(tmp_path, tmp_path / "runs", tmp_path / "data", env)
    torch.set_num_threads(before)


def invoke(*args: str):
    return CliRunner().invoke(app, ["run", "tiny", "--row", "bc-k4", *args])
