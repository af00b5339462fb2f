"""Where the jobs of ``rkrepro run`` go, checked before anything starts: in this process, on a
local queue of slots (``--gpus 0,1,2,3 [--jobs-per-gpu K]`` or ``--cpu-jobs N``, each slot pinned
with ``CUDA_VISIBLE_DEVICES``), under torchrun, or on SLURM.

The launch decides where runs train (``cpu`` or ``cuda``) and how many processes share each
run's batch; the plans are made with those. Nothing here imports torch or mlflow at module
level.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from rkrepro.errors import RkreproError
from rkrepro.launch.slurm import SUBMITIT_CLUSTER_ENV
from rkrepro.planning.devices import planned_device_type, visible_gpu_count

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

    def describe(self) -> str | None:
        if self.launcher == "slurm":
            if self.gpus_per_node == 0:
                return "one SLURM task per run, on the CPU"
            return f"one SLURM task per run, {self.gpus_per_node} GPU(s) each"
        if self.slots is None:
            return None
        each = f", {self.nproc} processes each" if self.nproc > 1 else ""
        return f"{len(self.slots)} parallel slots{each}"
