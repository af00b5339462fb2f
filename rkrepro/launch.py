"""Spreading the runs of ``rkrepro run`` over GPUs, torchrun groups and SLURM, with existing
engines: one ``python -m rkrepro run`` process (or torchrun group) per (cell, seed) job.

- local queue (``--gpus 0,1,2,3 [--jobs-per-gpu K]``, or ``--cpu-jobs N``): subprocesses from a
  thread pool, each pinned to its slot with ``CUDA_VISIBLE_DEVICES``; a progress line per event;
  SIGINT/SIGTERM forwarded (every job checkpoints and stops); non-zero exit if any job failed.
- torchrun (``--launcher torchrun --nproc-per-node N``): the same job command under
  ``python -m torch.distributed.run``; inside, :mod:`rkrepro.distributed` takes over.
- SLURM (``--launcher slurm``): one submitit array, one task per job; a task preempted or out
  of time checkpoints its run and is requeued, and the requeued task resumes the same MLflow run.

Every job is an ordinary ``rkrepro run`` of one cell and one seed, so whatever a job does (skip,
resume, track) is what the command does on one GPU. Nothing here imports torch or mlflow.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

import rkrepro
from rkrepro.errors import RkreproError
from rkrepro.paths import RUNS_DIR_ENV, runs_dir

if TYPE_CHECKING:
    from rkrepro.runner import Plan, RunOptions

LAUNCHERS = ("local", "torchrun", "slurm")
# Set to "local" to rehearse --launcher slurm on this machine (submitit's local executor).
SUBMITIT_CLUSTER_ENV = "RKREPRO_SUBMITIT_CLUSTER"
# Seconds a job gets to write its checkpoint after SIGTERM before it is killed.
STOP_GRACE_S = 120.0
# SLURM sends USR2 this long before the time limit: time to checkpoint and requeue.
SLURM_SIGNAL_DELAY_S = 180
# Requeues after the time limit a SLURM task may use (preemptions do not count).
SLURM_MAX_TIMEOUTS = 100


# --------------------------------------------------------------------------------------------
# GPUs and slots.


def in_torchrun() -> bool:
    """True inside a process started by torchrun (it sets RANK, WORLD_SIZE and LOCAL_RANK)."""
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def per_rank_batch(batch_size: int, world: int, what: str = "") -> int:
    """The paper's global batch split over ``world`` processes; it must divide evenly."""
    if world < 1:
        raise RkreproError(f"--nproc-per-node must be >= 1, got {world}")
    if batch_size % world:
        where = f" of {what}" if what else ""
        divisors = ", ".join(
            str(d) for d in range(1, min(batch_size, 64) + 1) if not batch_size % d
        )
        raise RkreproError(
            f"the batch size {batch_size}{where} does not divide over {world} processes: "
            f"pick --nproc-per-node among {divisors}"
        )
    return batch_size // world


def parse_gpus(text: str) -> list[int]:
    """``"0,1,2,3"`` -> ``[0, 1, 2, 3]``; one clear error for anything else."""
    items = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not part.isdigit() for part in items):
        raise RkreproError(f"--gpus {text!r}: expected GPU indices like 0,1,2,3")
    gpus = [int(part) for part in items]
    if len(set(gpus)) != len(gpus):
        raise RkreproError(f"--gpus {text!r}: a GPU is listed twice")
    return gpus


def visible_gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_gpus(gpus: list[int], count: int | None = None) -> None:
    """The GPUs asked for exist here (indices count among the visible GPUs)."""
    count = visible_gpu_count() if count is None else count
    listed = ",".join(map(str, gpus))
    if count == 0:
        raise RkreproError(
            f"--gpus {listed}: no CUDA GPU is visible on this machine "
            f"(use --cpu-jobs N to run jobs in parallel on the CPU)"
        )
    missing = [g for g in gpus if g >= count]
    if missing:
        raise RkreproError(
            f"--gpus {listed}: GPU {missing[0]} does not exist; {count} visible (0-{count - 1})"
        )


def _physical(gpu: int) -> str:
    """A visible index as the child must see it: through the parent's CUDA_VISIBLE_DEVICES."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        ids = [v.strip() for v in visible.split(",") if v.strip()]
        if gpu < len(ids):
            return ids[gpu]
    return str(gpu)


@dataclass(frozen=True)
class Slot:
    """Where one job runs: its environment and the ``--device`` it is given."""

    name: str
    env: dict[str, str] = field(default_factory=dict)
    device: str = "auto"


def gpu_slots(gpus: list[int], jobs_per_gpu: int = 1, nproc: int = 1) -> list[Slot]:
    """``jobs_per_gpu`` slots per GPU, or one slot per group of ``nproc`` GPUs (torchrun)."""
    if jobs_per_gpu < 1:
        raise RkreproError(f"--jobs-per-gpu must be >= 1, got {jobs_per_gpu}")
    if nproc > 1:
        if jobs_per_gpu != 1:
            raise RkreproError("--jobs-per-gpu and --nproc-per-node > 1 do not combine")
        if len(gpus) % nproc:
            raise RkreproError(
                f"--gpus lists {len(gpus)} GPUs, not a multiple of --nproc-per-node {nproc}"
            )
        groups = [gpus[i : i + nproc] for i in range(0, len(gpus), nproc)]
        return [
            Slot(
                "GPUs " + ",".join(map(str, g)),
                {"CUDA_VISIBLE_DEVICES": ",".join(_physical(x) for x in g)},
                "auto",
            )
            for g in groups
        ]
    return [
        Slot(f"GPU {g}" + (f" #{k + 1}" if jobs_per_gpu > 1 else ""), _gpu_env(g), "cuda:0")
        for g in gpus
        for k in range(jobs_per_gpu)
    ]


def _gpu_env(gpu: int) -> dict[str, str]:
    return {"CUDA_VISIBLE_DEVICES": _physical(gpu)}


def cpu_slots(jobs: int, nproc: int = 1) -> list[Slot]:
    """``jobs`` CPU slots; the cores are shared out so that jobs do not oversubscribe them."""
    if jobs < 1:
        raise RkreproError(f"--cpu-jobs must be >= 1, got {jobs}")
    threads = str(max(1, (os.cpu_count() or 1) // (jobs * max(nproc, 1))))
    env = {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": threads}
    return [Slot(f"CPU #{k + 1}", dict(env), "cpu") for k in range(jobs)]


# --------------------------------------------------------------------------------------------
# Job commands.


@dataclass(frozen=True)
class Job:
    """One (cell, seed): the arguments after the interpreter, and where its output goes."""

    label: str
    args: tuple[str, ...]  # e.g. ("-m", "rkrepro", "run", ...)
    log: Path
    nproc: int = 1


def common_args(options: RunOptions, tables_dir: Path | None) -> list[str]:
    """The options every job repeats, with paths made absolute (jobs may start elsewhere)."""
    from rkrepro.paths import resolve_tracking_uri

    args = ["--data-dir", str(Path(options.data_dir).absolute())]
    args += ["--tracking-uri", resolve_tracking_uri(options.tracking_uri)]
    if tables_dir is not None:
        args += ["--tables-dir", str(Path(tables_dir).absolute())]
    if options.epochs is not None:
        args += ["--epochs", str(options.epochs)]
    if options.train_subset is not None:
        args += ["--train-subset", str(options.train_subset)]
    if options.memory_efficient:
        args.append("--memory-efficient")
    if options.amp:
        args.append("--amp")
    if options.sync_bn:
        args.append("--sync-bn")
    if options.fast_path is not None:
        args += ["--fast-path", options.fast_path]
    if options.force:
        args.append("--force")
    args += ["--workers", str(options.workers)]
    return args


def job_for(plan: Plan, common: Sequence[str], device: str, nproc: int = 1) -> Job:
    """``rkrepro run`` of exactly this plan's cell and seed, under torchrun when ``nproc > 1``."""
    cell = plan.cell
    args = [
        "run",
        cell.table,
        "--row",
        cell.row,
        "--variant",
        cell.model,
        "--share" if cell.share else "--no-share",
        "--seed",
        str(plan.seed),
        *common,
        "--device",
        device,
    ]
    if nproc > 1:
        args += ["--launcher", "torchrun", "--nproc-per-node", str(nproc)]
        head = [
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nnodes=1",
            f"--nproc-per-node={nproc}",
            "-m",
            "rkrepro",
        ]
    else:
        head = ["-m", "rkrepro"]
    share = "share" if cell.share else "noshare"
    log = runs_dir() / "logs" / cell.table / cell.row / f"{cell.model}-{share}-seed{plan.seed}.log"
    return Job(plan.label, tuple(head + args), log, nproc)


def job_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The parent's environment, plus where runs live and where this rkrepro is imported from."""
    env = dict(os.environ)
    env[RUNS_DIR_ENV] = str(runs_dir())
    env["PYTHONUNBUFFERED"] = "1"
    root = Path(rkrepro.__file__).resolve().parent.parent
    path = env.get("PYTHONPATH", "")
    installed = root.name in ("site-packages", "dist-packages")  # importable there already
    if not installed and str(root) not in path.split(os.pathsep):
        env["PYTHONPATH"] = str(root) + (os.pathsep + path if path else "")
    env.update(extra or {})
    return env


def without_force(args: Sequence[str]) -> tuple[str, ...]:
    return tuple(a for a in args if a != "--force")


# --------------------------------------------------------------------------------------------
# The local queue.


@dataclass
class Outcome:
    job: Job
    slot: str
    code: int | None  # None: never started
    seconds: float


def _describe(code: int | None) -> str:
    if code is None:
        return "not started"
    if code == 0:
        return "done"
    if code in (130, 143) or code < 0:
        return f"stopped (exit {code}); resumes on rerun"
    return f"FAILED (exit {code})"


def _tail(path: Path, lines: int = 2) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:] if line.strip())


class LocalQueue:
    """Runs jobs on slots, as many at once as there are slots; one log file per job."""

    def __init__(self, slots: list[Slot], console: Console, poll_s: float = 0.5) -> None:
        if not slots:
            raise RkreproError("no slot to run jobs on")
        self.slots = slots
        self.console = console
        self.poll_s = poll_s
        self._lock = threading.RLock()  # a second signal may arrive inside the handler
        self._running: dict[str, subprocess.Popen] = {}
        self._stopping: int | None = None
        self._done = 0
        self._failed = 0
        self._total = 0

    def _say(self, text: str) -> None:
        running = len(self._running)
        waiting = self._total - self._done - running
        head = f"[{self._done}/{self._total} ended, {self._failed} failed, {running} running, "
        self.console.print(
            head + f"{max(waiting, 0)} waiting] {text}", highlight=False, soft_wrap=True
        )

    def _work(self, job: Job, free: queue.Queue[Slot]) -> Outcome:
        slot = free.get()
        try:
            with self._lock:
                if self._stopping is not None:
                    self._done += 1
                    return Outcome(job, slot.name, None, 0.0)
                job.log.parent.mkdir(parents=True, exist_ok=True)
                args = list(job.args)
                if "--device" in args:
                    args[args.index("--device") + 1] = slot.device
                started = time.monotonic()
                with open(job.log, "ab") as log:
                    proc = subprocess.Popen(
                        [sys.executable, *args],
                        env=job_env(slot.env),
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # a terminal's Ctrl-C reaches us, we forward it
                    )
                self._running[job.label] = proc
                self._say(f"started {job.label} on {slot.name} (log {job.log})")
            code = proc.wait()
            with self._lock:
                self._running.pop(job.label, None)
                self._done += 1
                ok = code == 0
                self._failed += 0 if ok or self._stopping is not None else 1
                detail = "" if ok else f": {_tail(job.log)}"
                seconds = time.monotonic() - started
                self._say(f"{job.label}: {_describe(code)} in {_duration(seconds)}{detail}")
            return Outcome(job, slot.name, code, seconds)
        finally:
            free.put(slot)

    def _signal(self, signum: int, frame: object) -> None:
        with self._lock:
            again = self._stopping is not None
            self._stopping = self._stopping or signum
            procs = list(self._running.values())
        kind = signal.SIGKILL if again else signal.SIGTERM
        for proc in procs:
            with contextlib.suppress(OSError):
                proc.send_signal(kind)
        if not again:
            self.console.print(
                f"{signal.Signals(signum).name}: stopping {len(procs)} job(s) (they checkpoint);"
                " again to kill them",
                highlight=False,
            )

    def run(self, jobs: list[Job]) -> tuple[int, list[Outcome]]:
        """Run every job; (exit code, outcomes). 0 all done, 1 any failed, 128+sig stopped."""
        self._total = len(jobs)
        free: queue.Queue[Slot] = queue.Queue()
        for slot in self.slots:
            free.put(slot)
        handlers = _install(self._signal)
        outcomes: list[Outcome] = []
        try:
            with concurrent.futures.ThreadPoolExecutor(len(self.slots)) as pool:
                futures = [pool.submit(self._work, job, free) for job in jobs]
                pending = set(futures)
                while pending:  # short waits, so that signals are handled at once
                    _, pending = concurrent.futures.wait(pending, timeout=self.poll_s)
                outcomes = [f.result() for f in futures]
        finally:
            _restore(handlers)
            self._kill_all()
        if self._stopping is not None:
            return 128 + self._stopping, outcomes
        return (1 if any(o.code != 0 for o in outcomes) else 0), outcomes

    def _kill_all(self) -> None:
        """Nothing outlives the queue (e.g. after an unexpected error in the parent)."""
        with self._lock:
            procs = list(self._running.values())
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()


def _install(handler: Callable[[int, Any], None]) -> dict[int, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}


def _restore(handlers: dict[int, Any]) -> None:
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def summary(outcomes: list[Outcome], console: Console) -> None:
    """One line per job at the end: what happened, how long, where its log is."""
    for o in outcomes:
        console.print(
            f"  {o.job.label}: {_describe(o.code)} [{o.slot}, {_duration(o.seconds)}] {o.job.log}",
            highlight=False,
            soft_wrap=True,
        )


# --------------------------------------------------------------------------------------------
# SLURM through submitit.


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


__all__ = [
    "LAUNCHERS",
    "CellTask",
    "Job",
    "LocalQueue",
    "Slot",
    "SlurmSettings",
    "check_gpus",
    "common_args",
    "cpu_slots",
    "gpu_slots",
    "job_for",
    "make_executor",
    "parse_gpus",
    "submit_slurm",
    "summary",
]
