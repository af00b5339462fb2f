"""``--launcher slurm``: one submitit array job, one task per (cell, seed) job, for a row or a
whole campaign, with ``--max-parallel`` tasks running at once at most.

A task preempted or out of time checkpoints its run and is requeued; the requeued task reruns
the same ``rkrepro run`` command, which finds the KILLED run and its checkpoint and resumes the
same MLflow run.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
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
from rkrepro.launch.jobs import STOP_GRACE_S, Job, job_env, job_for, warn_sqlite, without_force
from rkrepro.paths import RUNS_DIR_ENV, checkpoint_dir, runs_dir

if TYPE_CHECKING:
    from rkrepro.planning.plan import Plan
    from rkrepro.training.ledger import Ledger

# Set to "local" to rehearse --launcher slurm on this machine (submitit's local executor).
SUBMITIT_CLUSTER_ENV = "RKREPRO_SUBMITIT_CLUSTER"
# SLURM sends USR2 this long before the time limit (time to checkpoint and requeue): a tenth of
# the limit, between these bounds, unless --signal-delay says otherwise. A fixed delay longer
# than a short limit would arrive right after every start and requeue forever.
SIGNAL_DELAY_MIN_S = 15
SIGNAL_DELAY_MAX_S = 180
# CPUs per task asked for each GPU when --cpus-per-task is not given (capped by the node).
CPUS_PER_GPU = 8
# SLURM's names (partitions, accounts): letters, digits and -_.; nothing a shell or sbatch reads.
_SLURM_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
# Below this --time (minutes) a warning: SLURM's signal may come up to 60 s early (its timer
# resolution) and a requeued task is held ~120 s (BeginTime; measured on SLURM 22.05).
SHORT_TIME_MIN = 10
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

    def __init__(
        self,
        args: Sequence[str],
        env: dict[str, str],
        label: str,
        run: RunRef | None = None,
    ) -> None:
        self.args = tuple(args)
        self.env = dict(env)
        self.label = label
        self.run = run  # where to see progress (checkpoint) and whom to mark FAILED
        self._proc: subprocess.Popen | None = None
        self._code: int | None = None
        self._started_at: tuple[int, int] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"args": self.args, "env": self.env, "label": self.label, "run": self.run}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["args"], state["env"], state["label"], state.get("run"))  # type: ignore[misc]

    def __call__(self) -> str:
        self._started_at = self.run.progress() if self.run is not None else None
        print(f"rkrepro: {self.label}: starting; checkpoint {_where(self._started_at)}", flush=True)
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
        # Nothing is left to checkpoint: a time-limit USR2 arriving while the task finishes
        # must neither requeue a finished run nor kill this process (on SLURM 22.05 it did:
        # the task of a FINISHED run ended FAILED, "task 0: User defined signal 2").
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        code = self._code
        if code != 0:
            raise RuntimeError(f"{self.label}: rkrepro run exited with {code}")
        return f"{self.label}: done"

    def _wait(self) -> None:
        assert self._proc is not None
        self._code = self._proc.wait()

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Stop the child with a checkpoint, then requeue this task (without ``--force``).

        A task whose run made no progress since this attempt started is not requeued (that
        would loop until the requeue limit): its run is marked FAILED with the reason, and
        submitit records the task as not requeued.
        """
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
        if self.run is not None and self.run.progress() == self._started_at:
            self.run.mark_failed(
                f"no progress since the task started (checkpoint {_where(self._started_at)}): "
                f"not requeued; raise --time or lower --signal-delay"
            )
            return None
        return submitit.helpers.DelayedSubmission(
            CellTask(without_force(self.args), self.env, self.label, self.run)
        )


def _where(progress: tuple[int, int] | None) -> str:
    if progress is None:
        return "none yet"
    return f"at epoch {progress[0]}, step {progress[1]}"


@dataclass(frozen=True)
class RunRef:
    """What a task knows of its plan's run: its checkpoint folder and its MLflow run's key."""

    checkpoint_dir: str
    tracking_uri: str
    table: str
    config_hash: str

    @classmethod
    def of(cls, plan: Plan, tracking_uri: str) -> RunRef:
        """The run of ``plan`` in the store ``tracking_uri`` (resolved: the one its job logs
        to), and the checkpoint folder the job saves to for that store."""
        folder = checkpoint_dir(plan.config_hash, tracking_uri)
        return cls(str(folder), tracking_uri, plan.cell.table, plan.config_hash)

    def progress(self) -> tuple[int, int] | None:
        """(epoch, step in epoch) of the run's latest checkpoint; None before the first."""
        from rkrepro.training.checkpoints import Checkpoints

        try:
            info = Checkpoints(Path(self.checkpoint_dir)).peek()
        except Exception:  # noqa: BLE001 - an unreadable checkpoint is no progress either
            return None
        if not info:
            return None
        return int(info.get("epoch") or 0), int(info.get("step_in_epoch") or 0)

    def mark_failed(self, reason: str) -> None:
        """Best effort: the run of this configuration becomes FAILED with ``reason``."""
        from rkrepro.tracking import runs as tracking

        try:
            tracker = tracking.Tracker(self.tracking_uri)
            tracker.connect(create=False)
            run = tracker.latest_run(self.table, self.config_hash)
            if run is not None:
                tracking.RunLog(tracker.client, run.run_id).stop("FAILED", reason, None)
        except Exception as error:  # noqa: BLE001 - the task's own log still says why
            print(f"warning: could not mark the run FAILED: {error}", file=sys.stderr)
        print(f"rkrepro: {reason}", file=sys.stderr)


@dataclass(frozen=True)
class SlurmSettings:
    partition: str | None = None
    account: str | None = None
    gpus_per_node: int = 1  # 0: a CPU job, no GPU asked for
    cpus_per_task: int | None = None  # default: CPUS_PER_GPU per GPU, or the node's CPUs
    time_min: int = 24 * 60
    signal_delay_s: int | None = None  # default: signal_delay(time_min)
    cluster: str = "slurm"  # "local": submitit's local executor, on this machine
    folder: Path | None = None
    max_parallel: int | None = None  # tasks of the array running at once (None: SLURM's limit)

    def __post_init__(self) -> None:
        for flag, value in (("--partition", self.partition), ("--slurm-account", self.account)):
            if value is not None and not _SLURM_NAME.match(value):
                raise RkreproError(
                    f"{flag} {ascii(value)[:80]}: a SLURM name is 1-128 letters, digits, "
                    f"'-', '_' or '.'"
                )
        if self.time_min < 1:
            raise RkreproError(f"--time must be >= 1 minute, got {self.time_min}")
        if self.gpus_per_node < 0:
            raise RkreproError(f"--gpus-per-node must be >= 0, got {self.gpus_per_node}")
        if self.cpus_per_task is not None and self.cpus_per_task < 1:
            raise RkreproError(f"--cpus-per-task must be >= 1, got {self.cpus_per_task}")
        if self.max_parallel is not None and self.max_parallel < 1:
            raise RkreproError(f"--max-parallel must be >= 1, got {self.max_parallel}")
        delay = self.signal_delay_s
        if delay is not None and not 0 < delay < self.time_min * 60:
            raise RkreproError(
                f"--signal-delay {delay}: must be between 1 and the time limit "
                f"({self.time_min * 60} s)"
            )

    def warnings(self) -> list[str]:
        """What a user should know before submitting with these settings."""
        if self.cluster != "slurm" or self.time_min >= SHORT_TIME_MIN:
            return []
        return [
            f"warning: --time {self.time_min}: SLURM may send the checkpoint signal up to 60 s "
            f"earlier than --signal-delay asks, and holds a requeued task about 2 minutes "
            f"before it may start again; with under {SHORT_TIME_MIN} minutes a task spends much "
            f"of its time starting and waiting"
        ]

    @property
    def signal_delay(self) -> int:
        """Seconds before the time limit that USR2 arrives."""
        if self.signal_delay_s is not None:
            return self.signal_delay_s
        return signal_delay(self.time_min)

    def cpus(self) -> int:
        """CPUs per task: as asked, else CPUS_PER_GPU per GPU (or all of a CPU job's node),
        never more than a node of the partition has (a task asking more would pend forever)."""
        if self.cpus_per_task is not None:
            return self.cpus_per_task
        # A rehearsal (submitit's local executor) runs here: it asks no SLURM command.
        node = node_cpus(self.partition) if self.cluster == "slurm" else os.cpu_count() or 1
        wanted = CPUS_PER_GPU * self.gpus_per_node if self.gpus_per_node else node
        return max(1, min(wanted, node))


def signal_delay(time_min: int) -> int:
    """A tenth of the time limit, within [SIGNAL_DELAY_MIN_S, SIGNAL_DELAY_MAX_S]."""
    return max(SIGNAL_DELAY_MIN_S, min(SIGNAL_DELAY_MAX_S, time_min * 6))


def node_cpus(partition: str | None) -> int:
    """The fewest CPUs of a node in ``partition`` (``sinfo``), else this machine's count."""
    fallback = os.cpu_count() or 1
    if shutil.which("sinfo") is None:
        return fallback
    command = ["sinfo", "--noheader", "--format=%c"]
    if partition:
        command.append(f"--partition={partition}")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.SubprocessError):
        return fallback
    counts = [int(t) for t in done.stdout.split() if t.strip().rstrip("+").isdigit()]
    return min(counts) if done.returncode == 0 and counts else fallback


def make_executor(settings: SlurmSettings) -> Any:
    """submitit's executor for these settings (SLURM, or "local" to rehearse on this machine)."""
    try:
        import submitit
    except ImportError:
        raise RkreproError(
            "--launcher slurm needs submitit: pip install 'rkrepro[slurm]' (or submitit)"
        ) from None
    folder = settings.folder or runs_dir() / "slurm" / "%j"
    for what, text in (("the job folder", str(folder)), ("the Python interpreter", sys.executable)):
        if any(ord(c) < 32 or ord(c) == 127 for c in text):
            raise RkreproError(
                f"{what} {ascii(text)[:120]} holds a control character, which would become a "
                f"line of the sbatch script; use a path without one"
            )
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
        "cpus_per_task": settings.cpus(),
        "slurm_signal_delay_s": settings.signal_delay,
    }
    if settings.gpus_per_node:  # a CPU job asks for no generic resource at all
        params["gpus_per_node"] = settings.gpus_per_node
    if settings.partition:
        params["slurm_partition"] = settings.partition
    if settings.account:
        params["slurm_account"] = settings.account
    if settings.max_parallel is not None:  # sbatch --array=0-N%K
        params["slurm_array_parallelism"] = settings.max_parallel
    executor.update_parameters(**params)
    return executor


def submit_slurm(
    jobs: list[Job], executor: Any, runs: Sequence[RunRef | None] | None = None
) -> list[Any]:
    """One submitit array (one task per job); returns submitit's job handles.

    Whatever sbatch refuses (a bad partition, resources the cluster lacks) is one line with
    SLURM's own reason.
    """
    refs = list(runs) if runs is not None else [None] * len(jobs)
    tasks = [
        CellTask(job.args, _task_env(), job.label, ref) for job, ref in zip(jobs, refs, strict=True)
    ]
    try:
        return executor.submit_array(tasks)
    except Exception as error:  # noqa: BLE001 - submitit wraps sbatch's answer in several types
        text = str(error).strip()
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error" in ln.lower()] or lines or [type(error).__name__]
        reason = errors[-1] if len(errors[-1]) > 20 else " ".join(errors[-2:])
        raise RkreproError(f"sbatch refused the job: {reason[:300]}") from None


def _task_env() -> dict[str, str]:
    """What a task must know beyond SLURM's own environment (which it inherits)."""
    env = job_env()
    keep = (RUNS_DIR_ENV, "PYTHONPATH", "PYTHONUNBUFFERED", "RKREPRO_DATA_DIR")
    keep += ("RKREPRO_TABLES_DIR", "RKREPRO_VERIFY_CHECKSUMS", "RKREPRO_DOWNLOAD")
    return {k: env[k] for k in keep if k in env}


def submit(
    ledger: Ledger, plans: list[Plan], settings: SlurmSettings, nproc: int, device: str
) -> None:
    """Create the store and experiments once, then submit the plans not done as one array."""
    console = ledger.console
    executor = make_executor(settings)  # no SLURM here: one line before anything
    warnings = [warn_sqlite(ledger.uri, 0, "slurm"), *settings.warnings()]
    for warning in filter(None, warnings):
        print(warning, file=sys.stderr)
    todo = ledger.prepare(plans)
    if not todo:
        console.print(f"nothing to submit: {len(plans)} runs done", highlight=False)
        return
    device = "cpu" if settings.gpus_per_node == 0 else device
    jobs = [job_for(p, device, nproc) for p in todo]
    refs = [RunRef.of(p, ledger.uri) for p in todo]  # the jobs repeat this resolved URI
    handles = submit_slurm(jobs, executor, refs)
    first = handles[0].job_id.split("_")[0]
    at_once = f", at most {settings.max_parallel} running at once" if settings.max_parallel else ""
    console.print(
        f"submitted {len(handles)} tasks as {settings.cluster} array job {first} "
        f"(one SLURM task per run, {settings.gpus_per_node} GPU(s) and {settings.cpus()} CPUs "
        f"each{at_once}, USR2 {settings.signal_delay} s before the {settings.time_min}-minute "
        f"limit); "
        f"logs under "
        f"{handles[0].paths.folder}; follow with `rkrepro status` or squeue -j {first}",
        highlight=False,
        soft_wrap=True,
    )
    for job, handle in zip(jobs, handles, strict=True):
        console.print(f"  {handle.job_id}: {job.label}", highlight=False, soft_wrap=True)
