"""A tiny, complete rkrepro workspace for tests: a table, CIFAR-format data, a run store."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import helpers_cifar as h
import pytest

# A DenseNet-BC of depth 10 and growth rate 4 with one RKNet variant: trains in seconds on CPU.
TINY_TABLE = """\
id: tiny
dataset: cifar10
protocol: {dataset: cifar10, batch_size: 32, epochs: 300, lr: 0.1, momentum: 0.9,
           weight_decay: 1.0e-4, lr_milestones: [150, 225]}
rows:
  - id: bc-k4
    family: densenet-bc
    depth: 10
    growth_rate: 4
    bottleneck: true
    compression: 0.5
    m: [2, 2, 2]
    original: {params_m: null, error: null}
    variants:
      - {name: RKNet-1x2_1x1_1x1, share: {}}
"""


# A second row beside the tiny table's bc-k4 (appended to its rows, or a table of its own): one
# cell, so a campaign of two rows with --seeds 2 trains four runs.
SECOND_ROW = """\
  - id: bc-k2
    family: densenet-bc
    depth: 10
    growth_rate: 2
    bottleneck: true
    compression: 0.5
    m: [2, 2, 2]
    original: {params_m: null, error: 60.0}
"""


def make_workspace(root: Path, n_train: int = 96, n_test: int = 32) -> dict[str, str]:
    """Write tables/ and data/ under ``root``; return the environment that points rkrepro there
    (runs under ``root/runs``, no checksum check, never a download)."""
    (root / "tables").mkdir(parents=True, exist_ok=True)
    (root / "tables" / "tiny.yaml").write_text(TINY_TABLE, encoding="utf-8")
    h.write_random_cifar10(root / "data", n_train=n_train, n_test=n_test)
    return {
        "RKREPRO_RUNS_DIR": str(root / "runs"),
        "RKREPRO_DATA_DIR": str(root / "data"),
        "RKREPRO_TABLES_DIR": str(root / "tables"),
        "RKREPRO_VERIFY_CHECKSUMS": "0",
        "RKREPRO_DOWNLOAD": "0",
    }


def new_store(template: Path, runs: Path) -> Path:
    """A copy of an empty, migrated MLflow SQLite store (creating the schema takes seconds)."""
    runs.mkdir(parents=True, exist_ok=True)
    if not (runs / "mlflow.db").exists():
        shutil.copy(template, runs / "mlflow.db")
    return runs


def wait_for_epoch(
    runs: Path,
    epoch: int,
    alive: Callable[[], bool],
    timeout: float = 120,
    details: Callable[[], str] = lambda: "",
    on_timeout: Callable[[], None] = lambda: None,
) -> None:
    """Block until a checkpoint of ``epoch`` exists under ``runs``; fail the test if the job
    ends first (``details()`` says why) or nothing arrives within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for info in runs.glob("checkpoints/**/last.json"):  # store-*/HASH for a server
            try:
                if json.loads(info.read_text())["epoch"] >= epoch:
                    return
            except (OSError, ValueError, KeyError):
                pass
        if not alive():
            pytest.fail(f"the job ended before epoch {epoch}: {details()}")
        time.sleep(0.02)
    on_timeout()
    pytest.fail(f"no checkpoint of epoch {epoch} within {timeout}s")


# What a status, list or report of :func:`shortened_run_workspace` says about its run.
HIDDEN = "1 shortened run hidden (--include-shortened)"
MARK = "[shortened: 1 epochs, 64 images]"


def invoke(env: dict[str, str], *args: str):
    """The real rkrepro app, in this process, on the workspace of ``env``."""
    from typer.testing import CliRunner

    from rkrepro.cli.app import app

    # None unsets MLFLOW_TRACKING_URI: these runs go to the workspace's own store.
    return CliRunner().invoke(
        app, list(args), env={**env, "COLUMNS": "200", "MLFLOW_TRACKING_URI": None}
    )


def shortened_run_workspace(tmp_path_factory) -> dict[str, str]:
    """A workspace with one shortened run (``--epochs 1 --train-subset 64``) of the tiny
    table's original, trained for real on CPU; returns its environment."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("visible")
    env = make_workspace(root)
    template = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{template}").search_experiments()
    new_store(template, root / "runs")
    args = ["run", "tiny", "--row", "bc-k4", "--variant", "original", "--epochs", "1"]
    result = invoke(env, *args, "--train-subset", "64", "--device", "cpu")
    assert result.exit_code == 0, result.output
    return env
