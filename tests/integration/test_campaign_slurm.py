"""A campaign of two rows as one SLURM array job with ``--max-parallel 1``, on the suite's own
single-node cluster: every run FINISHED, never two at once, and a resubmit with nothing left."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import helpers_workspace as hw
import pytest
from services import real_env, wait_queue_empty

pytestmark = pytest.mark.integration


def _campaign(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    args = ["run", "tiny", "--row", "bc-k4", "--row", "bc-k2", "--variant", "original"]
    args += ["--epochs", "1", "--device", "cpu", "--launcher", "slurm", "--time", "10"]
    args += ["--cpus-per-task", "1", "--max-parallel", "1"]
    return subprocess.run(
        [sys.executable, "-m", "rkrepro", *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_a_two_row_campaign_runs_one_task_at_a_time_to_finished_runs(
    slurm_cluster, store_template: Path, tmp_path: Path
) -> None:
    env = real_env(hw.make_workspace(tmp_path), **slurm_cluster.env)
    hw.new_store(store_template, tmp_path / "runs")
    tiny = tmp_path / "tables" / "tiny.yaml"
    tiny.write_text(tiny.read_text() + hw.SECOND_ROW)

    result = _campaign(env, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "campaign: 1 table(s), 2 rows, 2 cells x 1 seed(s) = 2 runs: 0 done" in out, out
    assert "submitted 2 tasks as slurm array job" in out and "at most 1 running at once" in out
    script = next((tmp_path / "runs" / "slurm").glob("*/*_submission.sh")).read_text()
    assert "--array=0-1%1" in script, script  # submitit's array parallelism reached sbatch
    left = wait_queue_empty(env, 300)
    logs = "".join(p.read_text() for p in (tmp_path / "runs" / "slurm").glob("*/*.err"))
    assert not left, f"still queued: {left}\n{logs[-3000:]}"

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 2, logs[-3000:]
    assert {r.data.tags["rkrepro.row"] for r in runs} == {"bc-k4", "bc-k2"}
    first, second = sorted(runs, key=lambda r: r.info.start_time)
    assert first.info.end_time <= second.info.start_time  # one task at a time

    again = _campaign(env, tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 runs: 2 done, 0 to resume, 0 new" in again.stdout
    assert "nothing to submit: 2 runs done" in again.stdout, again.stdout
