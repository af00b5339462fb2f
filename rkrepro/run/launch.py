"""Where the jobs of ``rkrepro run`` go: checked before anything starts, then trained in this
process, on a local queue of slots, under torchrun, or on SLURM (:mod:`rkrepro.run.slurm`).

- local queue (``--gpus 0,1,2,3 [--jobs-per-gpu K]``, or ``--cpu-jobs N``): subprocesses from a
  thread pool, each pinned to its slot with ``CUDA_VISIBLE_DEVICES``; a progress line per event;
  SIGINT/SIGTERM forwarded (every job checkpoints and stops); non-zero exit if any job failed.
- torchrun (``--launcher torchrun --nproc-per-node N``): the same job command under
  ``python -m rkrepro.run.loopback_torchrun`` (torchrun on 127.0.0.1); inside,
  :mod:`rkrepro.run.distributed` takes over.

Every job is an ordinary ``rkrepro run`` of one cell and one seed (:mod:`rkrepro.run.jobs`).
Nothing here imports torch or mlflow at module level.
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
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from rkrepro.errors import RkreproError
from rkrepro.run.jobs import STOP_GRACE_S, Job, job_env, job_for, warn_sqlite
from rkrepro.run.plans import (
    Plan,
    RunOptions,
    in_torchrun,
    make_plans,
    per_rank_batch,
    planned_device_type,
    visible_gpu_count,
)
from rkrepro.run.progress import format_duration
from rkrepro.run.slurm import SUBMITIT_CLUSTER_ENV

if TYPE_CHECKING:
    from rkrepro.run.runner import Runner
    from rkrepro.run.slurm import SlurmSettings
    from rkrepro.targets import Cell

LAUNCHERS = ("local", "torchrun", "slurm")


# --------------------------------------------------------------------------------------------
# GPUs and slots.


def parse_gpus(text: str) -> list[int]:
    """``"0,1,2,3"`` -> ``[0, 1, 2, 3]``; one clear error for anything else."""
    items = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not part.isdigit() for part in items):
        raise RkreproError(f"--gpus {text!r}: expected GPU indices like 0,1,2,3")
    gpus = [int(part) for part in items]
    if len(set(gpus)) != len(gpus):
        raise RkreproError(f"--gpus {text!r}: a GPU is listed twice")
    return gpus


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
                self._say(f"{job.label}: {_describe(code)} in {format_duration(seconds)}{detail}")
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


def summary(outcomes: list[Outcome], console: Console) -> None:
    """One line per job at the end: what happened, how long, where its log is."""
    for o in outcomes:
        console.print(
            f"  {o.job.label}: {_describe(o.code)} [{o.slot}, {format_duration(o.seconds)}] "
            f"{o.job.log}",
            highlight=False,
            soft_wrap=True,
        )


# --------------------------------------------------------------------------------------------
# The launch, checked before anything starts.


@dataclass(frozen=True)
class LaunchOptions:
    """The ``run`` options that say where jobs go (not what they train)."""

    launcher: str = "local"
    gpus: str | None = None
    jobs_per_gpu: int = 1
    cpu_jobs: int | None = None
    nproc_per_node: int | None = None
    gpus_per_node: int | None = None


class LaunchPlan:
    """Where the jobs of a command go, validated before anything starts."""

    def __init__(
        self, launcher: str, slots: list[Slot] | None, nproc: int, gpus_per_node: int = 1
    ) -> None:
        self.launcher = launcher
        self.slots = slots  # None: train in this process
        self.nproc = nproc
        self.gpus_per_node = gpus_per_node

    @property
    def in_process(self) -> bool:
        return self.launcher == "local" and self.slots is None

    @classmethod
    def check(cls, opts: LaunchOptions, device: str) -> LaunchPlan:
        launcher = opts.launcher.strip().lower()
        nproc = opts.nproc_per_node
        if launcher not in LAUNCHERS:
            raise RkreproError(
                f"unknown --launcher {launcher!r}: use one of {', '.join(LAUNCHERS)}"
            )
        if opts.gpus is not None and opts.cpu_jobs is not None:
            raise RkreproError("use either --gpus or --cpu-jobs, not both")
        gpu_list = parse_gpus(opts.gpus) if opts.gpus is not None else None
        if gpu_list is not None and device.strip().lower() == "cpu":
            raise RkreproError("--gpus and --device cpu contradict each other")
        if opts.jobs_per_gpu != 1 and gpu_list is None:
            raise RkreproError("--jobs-per-gpu needs --gpus")
        if nproc is not None and nproc < 1:
            raise RkreproError(f"--nproc-per-node must be >= 1, got {nproc}")
        if launcher == "slurm":
            if gpu_list is not None or opts.cpu_jobs is not None:
                raise RkreproError("--launcher slurm takes --gpus-per-node, not --gpus/--cpu-jobs")
            cpu = device.strip().lower() == "cpu"
            per_node = opts.gpus_per_node
            if per_node is None:
                per_node = 0 if cpu else (nproc or 1)
            if per_node < 0:
                raise RkreproError(f"--gpus-per-node must be >= 0, got {per_node}")
            if cpu and per_node:
                raise RkreproError(
                    f"--device cpu with --gpus-per-node {per_node}: a CPU job asks for no GPU"
                )
            return cls("slurm", None, nproc or max(per_node, 1), per_node)
        if opts.gpus_per_node is not None:
            raise RkreproError("--gpus-per-node is for --launcher slurm (use --gpus here)")
        if gpu_list is not None:
            check_gpus(gpu_list)
        if launcher == "local":
            if nproc not in (None, 1):
                raise RkreproError("--nproc-per-node needs --launcher torchrun")
            if gpu_list is not None:
                return cls("local", gpu_slots(gpu_list, opts.jobs_per_gpu), 1)
            if opts.cpu_jobs is not None:
                return cls("local", cpu_slots(opts.cpu_jobs), 1)
            return cls("local", None, 1)
        return cls._torchrun(gpu_list, opts.cpu_jobs, nproc, device)

    @classmethod
    def _torchrun(
        cls, gpu_list: list[int] | None, cpu_jobs: int | None, nproc: int | None, device: str
    ) -> LaunchPlan:
        if gpu_list is not None:
            nproc = nproc or len(gpu_list)
            return cls("torchrun", gpu_slots(gpu_list, 1, nproc), nproc)
        if device.strip().lower() == "cpu" or cpu_jobs is not None:
            if nproc is None:
                raise RkreproError("--launcher torchrun on the CPU needs --nproc-per-node N")
            return cls("torchrun", cpu_slots(cpu_jobs or 1, nproc), nproc)
        visible = visible_gpu_count()
        if visible == 0:
            raise RkreproError(
                "--launcher torchrun: no CUDA GPU is visible here (add --device cpu and "
                "--nproc-per-node N for gloo processes on the CPU)"
            )
        nproc = nproc or visible
        if nproc > visible:
            raise RkreproError(f"--nproc-per-node {nproc}: only {visible} GPUs are visible")
        return cls("torchrun", [Slot(f"GPUs 0-{nproc - 1}", {}, "auto")], nproc)

    def device_type(self, device: str) -> str:
        """``cpu`` or ``cuda``: where this launch's runs train (their precision depends on it)."""
        if self.launcher == "slurm":  # GPU nodes, unless the jobs ask for no GPU
            if self.gpus_per_node == 0:
                return "cpu"
            if os.environ.get(SUBMITIT_CLUSTER_ENV) == "local":  # a rehearsal on this machine
                return planned_device_type(device)
            return "cuda"
        if self.slots:
            return "cpu" if all(slot.device == "cpu" for slot in self.slots) else "cuda"
        return planned_device_type(device)

    def check_batches(self, plans: list[Plan]) -> None:
        """Every run's global batch must split evenly over its processes."""
        if self.nproc > 1:
            for plan in plans:
                per_rank_batch(plan.protocol.batch_size, self.nproc, plan.cell.key)

    def describe(self) -> str | None:
        if self.launcher == "slurm":
            if self.gpus_per_node == 0:
                return "one SLURM task per run, on the CPU"
            return f"one SLURM task per run, {self.gpus_per_node} GPU(s) each"
        if self.slots is None:
            return None
        each = f", {self.nproc} processes each" if self.nproc > 1 else ""
        return f"{len(self.slots)} parallel slots{each}"


def execute(
    cells: list[Cell],
    seeds: list[int],
    options: RunOptions,
    where: LaunchOptions,
    console: Console,
    *,
    dry_run: bool = False,
    slurm: SlurmSettings | None = None,
) -> int:
    """``rkrepro run``: plan, check the launch, then train here or hand jobs to a launcher.

    Returns the exit code; a stop by signal raises :class:`rkrepro.train.Interrupted`.
    """
    from rkrepro.run.runner import Runner

    if in_torchrun():  # one rank of a data-parallel run, whatever --launcher says
        return _run_rank(options, make_plans(cells, seeds, options), console)
    launch = LaunchPlan.check(where, options.device)
    plans = make_plans(cells, seeds, options, launch.device_type(options.device))
    launch.check_batches(plans)
    from rkrepro.data import check as data_check

    # Before the store is opened: a run that cannot read its data leaves nothing behind.
    data_states = data_check.check([p.protocol.dataset for p in plans], options.data_dir)
    runner = Runner(options, console)
    device_type = launch.device_type(options.device)
    if dry_run:
        from rkrepro.run import dry_run as dry

        dry.show(
            runner, plans, parallel=launch.describe(), data=data_states, device_type=device_type
        )
        return 0
    stopping = [state for state in data_states if state.stops]
    if stopping and launch.launcher != "slurm":  # a SLURM node may see other paths
        from rkrepro.errors import DataError

        raise DataError(stopping[0].message)
    warn_cpu_protocol(plans, device_type, console)
    if launch.in_process:
        return runner.run(plans)
    if launch.launcher == "slurm":
        from rkrepro.run import slurm as slurm_launch

        settings = replace(
            slurm or slurm_launch.SlurmSettings(), gpus_per_node=launch.gpus_per_node
        )
        slurm_launch.submit(runner, plans, settings, launch.nproc, console)
        return 0
    return run_queue(runner, plans, launch, console)


def warn_cpu_protocol(plans: list[Plan], device_type: str, console: Console) -> None:
    """Before a paper-protocol run on the CPU: it takes days to weeks per cell there."""
    full = [p for p in plans if not p.shortened]
    chosen = {(p.options.device or "auto").strip().lower() for p in plans}
    if device_type != "cpu" or not full or not chosen <= {"auto", "cpu"}:
        return  # a bad --device is refused later, with its own one line
    epochs = full[0].protocol.epochs
    console.print(
        f"warning: {len(full)} paper-protocol run{'s' * (len(full) != 1)} ({epochs} epochs) "
        "on the CPU: one 300-epoch DenseNet-BC-100 cell is ~150 CPU-hours (`rkrepro plan "
        "--device cpu` estimates yours); for a smoke run use --epochs 2 --train-subset 512",
        style="yellow",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )


def _run_rank(options: RunOptions, plans: list[Plan], console: Console) -> int:
    """Inside torchrun: this process is one rank; join the group and train with the others."""
    from rkrepro.run import distributed
    from rkrepro.run.runner import Runner

    ctx = distributed.init(options.device)
    try:
        return Runner(options, console, dist=ctx).run(plans)
    finally:
        distributed.shutdown()


def open_logs(jobs: list[Job]) -> None:
    """Create every job's log before the first job starts: a log that cannot be written (a
    read-only or full ``runs/``, a name over the system's limit) is one line, with no job
    half-launched and no traceback from a queue thread."""
    for job in jobs:
        try:
            job.log.parent.mkdir(parents=True, exist_ok=True)
            with open(job.log, "ab"):
                pass
        except OSError as error:
            shown = str(job.log)
            if len(shown) > 160:
                shown = shown[:80] + "..." + shown[-60:]
            raise RkreproError(
                f"cannot write the log of job {job.label[:80]}: {shown}: {error.strerror}; "
                f"no job was started"
            ) from None


def run_queue(runner: Runner, plans: list[Plan], launch: LaunchPlan, console: Console) -> int:
    """Create the store and experiments once, then one job per plan on the free slots."""
    from rkrepro.train import Interrupted

    assert launch.slots is not None
    warning = warn_sqlite(runner.uri, len(launch.slots), launch.launcher)
    if warning:
        print(warning, file=sys.stderr)
    todo = runner.prepare(plans)
    if not todo:
        console.print(f"0 jobs to run: {len(plans)} runs done", highlight=False)
        return 0
    jobs = [job_for(p, "auto", launch.nproc) for p in todo]
    open_logs(jobs)
    console.print(
        f"{len(jobs)} jobs on {launch.describe()}: " + ", ".join(s.name for s in launch.slots),
        highlight=False,
        soft_wrap=True,
    )
    code, outcomes = LocalQueue(launch.slots, console).run(jobs)
    summary(outcomes, console)
    ended = sum(o.code == 0 for o in outcomes)
    failed = sum(o.code not in (0, None) for o in outcomes) if code < 128 else 0
    console.print(
        f"{ended}/{len(jobs)} jobs done" + (f", {failed} failed" if failed else ""),
        highlight=False,
    )
    if code >= 128:
        raise Interrupted(code - 128)
    return code
