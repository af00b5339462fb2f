"""The data check ``rkrepro run`` makes before it opens the store: missing or corrupt CIFAR
stops at once with one line that says what to do, creates no store and no lock, and the dry
run says the run would stop."""

from __future__ import annotations

import shutil

import helpers_workspace as wsh
import pytest
from typer.testing import CliRunner

from rkrepro.cli.app import app
from rkrepro.data import check as data_check

RUN = ["run", "tiny", "--row", "bc-k4", "--variant", "original", "--epochs", "1"]


def test_file_lists_are_torchvisions():
    datasets = pytest.importorskip("torchvision.datasets")
    for name, cls in (("cifar10", datasets.CIFAR10), ("cifar100", datasets.CIFAR100)):
        ours = data_check.CIFAR[name]
        theirs = (*cls.train_list, *cls.test_list, [cls.meta["filename"], cls.meta["md5"]])
        assert ours.base_folder == cls.base_folder and ours.url == cls.url
        assert [list(f) for f in ours.files] == [list(f) for f in theirs]


def _workspace(tmp_path):
    env = wsh.make_workspace(tmp_path, n_train=64, n_test=32)
    return env


def _invoke(env, *args):
    return CliRunner().invoke(
        app, list(args), env={**env, "COLUMNS": "200", "MLFLOW_TRACKING_URI": None}
    )


@pytest.mark.bad_input
def test_missing_data_offline_stops_before_the_store(tmp_path):
    env = _workspace(tmp_path)
    shutil.rmtree(tmp_path / "data")
    result = _invoke(env, *RUN, "--device", "cpu")
    assert result.exit_code == 2, result.output
    error = result.stderr.strip()
    assert error.startswith("Error: ") and "\n" not in error
    assert "downloads are off (RKREPRO_DOWNLOAD=0)" in error
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in error
    assert "INFO" not in result.output
    assert not (tmp_path / "runs").exists()  # no mlflow.db, no checkpoint lock


@pytest.mark.bad_input
def test_checksum_mismatch_names_the_switch_and_the_source(tmp_path):
    env = {**_workspace(tmp_path), "RKREPRO_VERIFY_CHECKSUMS": "1"}  # generated files: wrong md5
    result = _invoke(env, *RUN, "--device", "cpu")
    assert result.exit_code == 2, result.output
    error = result.stderr.strip()
    assert "\n" not in error and "fails its checksum" in error
    assert "RKREPRO_VERIFY_CHECKSUMS=0" in error and "cs.toronto.edu" in error
    assert not (tmp_path / "runs").exists()


def test_dry_run_says_missing_data_would_stop_the_run_and_lists_seeds(tmp_path):
    env = _workspace(tmp_path)
    shutil.rmtree(tmp_path / "data")
    result = _invoke(env, *RUN, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "data: cifar10 data is missing" in result.output
    assert "the run would stop here, before training" in result.output
    assert "seeds=[0]" in result.output
    runs = tmp_path / "runs"
    assert not (runs / "mlflow.db").exists() and not (runs / "checkpoints").exists()


def _closed_port() -> int:
    """A 127.0.0.1 port nothing listens on: a source that refuses, as offline."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "launcher", [[], ["--cpu-jobs", "2"], ["--launcher", "torchrun", "--nproc-per-node", "2"]]
)
def test_missing_data_whose_source_does_not_answer_stops_before_the_store(
    tmp_path, monkeypatch, launcher
):
    """Downloads allowed (RKREPRO_DOWNLOAD unset) but the source unreachable: one line within
    seconds, in every launcher, and no mlflow.db, no checkpoint lock, no job started."""
    import time

    env = {k: v for k, v in _workspace(tmp_path).items() if k != "RKREPRO_DOWNLOAD"}
    shutil.rmtree(tmp_path / "data")
    cifar = data_check.CIFAR["cifar10"]
    url = f"http://127.0.0.1:{_closed_port()}/cifar-10-python.tar.gz"
    monkeypatch.setitem(data_check.CIFAR, "cifar10", data_check.CifarFiles(
        cifar.base_folder, url, cifar.files
    ))  # fmt: skip
    monkeypatch.delenv("RKREPRO_DOWNLOAD", raising=False)
    started = time.monotonic()
    result = _invoke(env, *RUN, "--device", "cpu", *launcher)
    assert time.monotonic() - started < 10
    assert result.exit_code == 2, result.output
    error = result.stderr.strip()
    assert error.startswith("Error: ") and "\n" not in error, result.output
    assert "cannot be downloaded: cannot reach 127.0.0.1 (Connection refused)" in error
    assert not (tmp_path / "runs").exists()  # no mlflow.db, no checkpoint lock, no job log
