"""``--launcher slurm`` against a real single-node SLURM cluster started for the session."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import helpers_workspace as hw
import pytest
from services import real_env

pytestmark = pytest.mark.integration


def _rkrepro(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "rkrepro", "run", "tiny", "--row", "bc-k4", *args]
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def _wait_queue_empty(env: dict[str, str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True).stdout
        if not out.strip():
            return
        time.sleep(1)
    pytest.fail(f"jobs still queued after {timeout:.0f} s: {out}")


def _runs(uri: str) -> list:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    return [r for e in c.search_experiments() for r in c.search_runs([e.experiment_id])]


def test_cpu_array_job_finishes_and_a_resubmit_has_nothing_to_do(
    slurm_cluster, tmp_path: Path
) -> None:
    env = real_env(hw.make_workspace(tmp_path), **slurm_cluster.env)
    args = ("--epochs", "1", "--device", "cpu", "--launcher", "slurm", "--time", "10")
    result = _rkrepro(env, tmp_path, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "submitted 3 tasks as slurm array job" in result.stdout, result.stdout
    script = next((tmp_path / "runs" / "slurm").glob("*/*_submission.sh")).read_text()
    assert "gpus" not in script and "--cpus-per-task=" in script  # a CPU job asks no GPU
    assert "--device cpu" in script or "'--device', 'cpu'" in script or "cpu" in script
    _wait_queue_empty(env, 240)
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    runs = _runs(uri)
    logs = "".join(p.read_text() for p in (tmp_path / "runs" / "slurm").glob("*/*.err"))
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 3, logs[-3000:]
    again = _rkrepro(env, tmp_path, *args)
    assert again.returncode == 0 and "nothing to submit: 3 runs done" in again.stdout, again


def test_what_sbatch_refuses_is_one_line_with_slurms_reason(slurm_cluster, tmp_path: Path) -> None:
    env = real_env(hw.make_workspace(tmp_path), **slurm_cluster.env)
    result = _rkrepro(env, tmp_path, "--epochs", "1", "--launcher", "slurm", "--gpus-per-node", "1")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    (error,) = [x for x in result.stderr.splitlines() if x.startswith("Error")]  # MLflow INFO aside
    assert "sbatch refused the job" in error and "Invalid generic resource" in error, error
