"""What the launch tests share: ``rkrepro run`` of the tiny table in a subprocess, a run's metric
series, and the processes below a pid (via /proc)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_run import REPO, Workspace

from rkrepro.launch import slurm


def job_env(ws: Workspace, runs: Path | None = None, **extra: str) -> dict[str, str]:
    env = {**os.environ, **ws.env, "OMP_NUM_THREADS": "1", **extra}
    if runs is not None:
        env["RKREPRO_RUNS_DIR"] = str(runs)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def start_run(ws: Workspace, *args: str, **popen: object) -> subprocess.Popen:
    command = [sys.executable, "-m", "rkrepro", "run", "tiny", "--row", "bc-k4", *args]
    return subprocess.Popen(
        command,
        cwd=ws.root,
        env=job_env(ws),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,  # type: ignore[arg-type]
    )


def series(ws: Workspace, run_id: str, name: str, runs: Path | None = None) -> list:
    return sorted((m.step, m.value) for m in ws.client(runs).get_metric_history(run_id, name))


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every process below it (found first, then killed)."""
    family, todo = [], [pid]
    while todo:
        family.append(todo.pop())
        todo += children(family[-1])
    for member in family:
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)


def sbatch_script(settings: slurm.SlurmSettings, monkeypatch: pytest.MonkeyPatch) -> str:
    from submitit.slurm.slurm import SlurmExecutor

    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 2))  # "srun exists"
    executor = slurm.make_executor(settings)
    return executor._executor._make_submission_file_text("CMD", "uid")
