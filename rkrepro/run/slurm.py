"""``--launcher slurm``: one submitit array job, one task per (cell, seed) job.

A task preempted or out of time checkpoints its run and is requeued; the requeued task reruns
the same ``rkrepro run`` command, which finds the KILLED run and its checkpoint and resumes the
same MLflow run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rkrepro.errors import RkreproError
from rkrepro.paths import RUNS_DIR_ENV, runs_dir
from rkrepro.run.jobs import STOP_GRACE_S, Job, job_env, job_for, warn_sqlite, without_force

if TYPE_CHECKING:
    from rich.console import Console

    from rkrepro.run.plans import Plan
    from rkrepro.run.runner import Runner

# Set to "local" to rehearse --launcher slurm on this machine (submitit's local executor).
SUBMITIT_CLUSTER_ENV = "RKREPRO_SUBMITIT_CLUSTER"
# SLURM sends USR2 this long before the time limit: time to checkpoint and requeue.
SLURM_SIGNAL_DELAY_S = 180
# Requeues after the time limit a SLURM task may use (preemptions do not count).
SLURM_MAX_TIMEOUTS = 100


class CellTask:
    """What one SLURM array task runs: one job, checkpointable in submitit's sense.

    ``__call__`` runs the job in a child process (a plain ``rkrepro run``, or torchrun) and
    waits. On the time-limit/preemption signal (USR2) submitit calls :meth:`checkpoint` inside
    this process: it asks the child to stop (SIGTERM: the trainer saves a checkpoint at the next
    step and marks the MLflow run KILLED) and returns the task to requeue, which reruns the same
    command; that finds the KILLED run and its checkpoint and resumes the same MLflow run.
    """

    def __init__(self, args: Sequence[str], env: dict[str, str], label: str) -> None:
        self.args = tuple(args)
        self.env = dict(env)
        self.label = label
        self._proc: subprocess.Popen | None = None
        self._code: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"args": self.args, "env": self.env, "label": self.label}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["args"], state["env"], state["label"])  # type: ignore[misc]

    def __call__(self) -> str:
        env = {**os.environ, **self.env}
        # The child ignores USR2 (an ignored signal stays ignored across exec): SLURM may send
        # it to every process of the job, and only this one should act on it.
        previous = signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        try:
            self._proc = subprocess.Popen([sys.executable, *self.args], env=env)
        finally:
            signal.signal(signal.SIGUSR2, previous)
        waiter = threading.Thread(target=self._wait, daemon=True)
        waiter.start()
        while waiter.is_alive():  # short joins: submitit's signal handlers run in between
            waiter.join(0.5)
        code = self._code
        if code != 0:
            raise RuntimeError(f"{self.label}: rkrepro run exited with {code}")
        return f"{self.label}: done"

    def _wait(self) -> None:
        assert self._proc is not None
        self._code = self._proc.wait()

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Stop the child with a checkpoint, then requeue this task (without ``--force``)."""
        import submitit

        proc = self._proc
        if proc is not None and self._code is None:
            with contextlib.suppress(OSError):
                os.kill(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_S
            while self._code is None and time.monotonic() < deadline:
                time.sleep(0.1)  # the waiter thread reaps it; no lock is taken here
            if self._code is None:
                with contextlib.suppress(OSError):
                    os.kill(proc.pid, signal.SIGKILL)
        return submitit.helpers.DelayedSubmission(
            CellTask(without_force(self.args), self.env, self.label)
        )


@dataclass(frozen=True)
class SlurmSettings:
    partition: str | None = None
    account: str | None = None
    gpus_per_node: int = 1
    cpus_per_task: int | None = None
    time_min: int = 24 * 60
    cluster: str = "slurm"  # "local": submitit's local executor, on this machine
    folder: Path | None = None


def make_executor(settings: SlurmSettings) -> Any:
    """submitit's executor for these settings (SLURM, or "local" to rehearse on this machine)."""
    try:
        import submitit
    except ImportError:
        raise RkreproError(
            "--launcher slurm needs submitit: pip install 'rkrepro[slurm]' (or submitit)"
        ) from None
    folder = settings.folder or runs_dir() / "slurm" / "%j"
    try:
        executor = submitit.AutoExecutor(
            folder=folder,
            cluster=settings.cluster,
            slurm_max_num_timeout=SLURM_MAX_TIMEOUTS,
            local_max_num_timeout=SLURM_MAX_TIMEOUTS,
        )
    except (RuntimeError, ValueError) as error:  # no srun here, or an unknown cluster name
        raise RkreproError(
            f"--launcher slurm: {error} (run it on a SLURM login node, or set "
            f"{SUBMITIT_CLUSTER_ENV}=local to rehearse the jobs on this machine)"
        ) from None
    params: dict[str, Any] = {
        "name": "rkrepro",
        "timeout_min": settings.time_min,
        "nodes": 1,
        "tasks_per_node": 1,
        "gpus_per_node": settings.gpus_per_node,
        "cpus_per_task": settings.cpus_per_task or max(1, 8 * settings.gpus_per_node),
        "slurm_signal_delay_s": SLURM_SIGNAL_DELAY_S,
    }
    if settings.partition:
        params["slurm_partition"] = settings.partition
    if settings.account:
        params["slurm_account"] = settings.account
    executor.update_parameters(**params)
    return executor


def submit_slurm(jobs: list[Job], executor: Any) -> list[Any]:
    """One submitit array (one task per job); returns submitit's job handles."""
    tasks = [CellTask(job.args, _task_env(), job.label) for job in jobs]
    return executor.submit_array(tasks)


def _task_env() -> dict[str, str]:
    """What a task must know beyond SLURM's own environment (which it inherits)."""
    env = job_env()
    keep = (RUNS_DIR_ENV, "PYTHONPATH", "PYTHONUNBUFFERED", "RKREPRO_DATA_DIR")
    keep += ("RKREPRO_TABLES_DIR", "RKREPRO_VERIFY_CHECKSUMS", "RKREPRO_DOWNLOAD")
    return {k: env[k] for k in keep if k in env}


def submit(
    runner: Runner, plans: list[Plan], settings: SlurmSettings, nproc: int, console: Console
) -> None:
    """Create the store and experiments once, then submit the plans not done as one array."""
    executor = make_executor(settings)  # no SLURM here: one line before anything
    warning = warn_sqlite(runner.uri, 0, "slurm")
    if warning:
        print(warning, file=sys.stderr)
    todo = runner.prepare(plans)
    if not todo:
        console.print(f"nothing to submit: {len(plans)} runs done", highlight=False)
        return
    jobs = [job_for(p, "auto", nproc) for p in todo]
    handles = submit_slurm(jobs, executor)
    first = handles[0].job_id.split("_")[0]
    console.print(
        f"submitted {len(handles)} tasks as {settings.cluster} array job {first} "
        f"(one SLURM task per run, {settings.gpus_per_node} GPU(s) each); logs under "
        f"{handles[0].paths.folder}; follow with `rkrepro status` or squeue -j {first}",
        highlight=False,
        soft_wrap=True,
    )
    for job, handle in zip(jobs, handles, strict=True):
        console.print(f"  {handle.job_id}: {job.label}", highlight=False, soft_wrap=True)
