"""Which device an estimate is for, decided once from the command line: a GPU that is not here
(``--gpu NAME``), this machine's GPU, or this machine's CPU; and whether it is timed.

Nothing is timed unless asked (``--probe``) or unless the runs would train on this machine's
CPU, or on a GPU here that the GPU table does not know. Torch is imported only to look at a GPU
that may be here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from rkrepro.errors import RkreproError
from rkrepro.estimate import gpus
from rkrepro.estimate.gpus import Gpu

# The device a plan is for when it names none and none is here (a site's own, or a test's).
CALIBRATION_DEVICE_ENV = "RKREPRO_CALIBRATION_DEVICE"


@dataclass(frozen=True)
class Target:
    """The device estimates are for: its label, its GPU-table entry (the roofline), the device
    names its calibration entries are filed under, and whether and where to probe."""

    label: str
    gpu: Gpu | None = None
    device_names: tuple[str, ...] = ()
    probe: str | None = None  # "cpu" or "cuda": measure here
    note: str = ""  # e.g. why this device was chosen

    @property
    def unit(self) -> str:
        """What the hours are: ``CPU`` or ``GPU``."""
        return "CPU" if self.probe == "cpu" else "GPU"


def named_gpu(name: str, note: str = "") -> Target:
    """A GPU of the table, by the name a user typed (one line with the closest names if
    unknown)."""
    gpu = gpus.find(name)
    return Target(gpu.name, gpu, gpu.names, None, note)


def device_named(name: str) -> Target:
    """A device by the name torch reports (``RKREPRO_CALIBRATION_DEVICE``, or a GPU here)."""
    gpu = gpus.for_device(name)
    return Target(gpu.name if gpu else name, gpu, (name,), None)


def this_cpu() -> Target:
    return Target("this CPU", None, ("cpu",), "cpu")


def this_gpu(probe: bool = False) -> Target:
    """The first GPU here: its calibration entries, else the roofline of its table entry; timed
    when asked, or when the table does not know it."""
    import torch

    name = torch.cuda.get_device_name(0)
    found = device_named(name)
    if probe or found.gpu is None:
        return Target(name, found.gpu, (name,), "cuda")
    return found


def elsewhere(gpu: str | None) -> Target:
    """Runs that train on GPUs that are not here (SLURM, or a plan without one): ``--gpu NAME``,
    else ``RKREPRO_CALIBRATION_DEVICE``, else :data:`gpus.DEFAULT_GPU`, said in the output."""
    if gpu is not None:
        return named_gpu(gpu)
    named = os.environ.get(CALIBRATION_DEVICE_ENV, "").strip()
    if named:
        return device_named(named)
    return named_gpu(gpus.DEFAULT_GPU, note=f"no GPU here: estimated for {gpus.DEFAULT_GPU}")


def for_plan(gpu: str | None, device: str, probe: bool) -> Target:
    """``rkrepro plan [--gpu NAME | --device auto|cpu|cuda] [--probe]``."""
    from rkrepro.planning.devices import visible_gpu_count

    choice = device.strip().lower()
    if choice not in ("auto", "cpu", "cuda"):
        raise RkreproError(f"--device must be auto, cpu or cuda, got {device[:20]!r}")
    if gpu is not None:
        if choice != "auto":
            raise RkreproError(
                f"--gpu {ascii(gpu)[1:-1][:40]} plans for a GPU that is not here and --device "
                f"{choice} for this machine: use one of them"
            )
        if probe:
            raise RkreproError(
                "--probe times steps on this machine and --gpu NAME estimates for another GPU: "
                "use one of them"
            )
        return named_gpu(gpu)
    if choice == "cpu":
        return this_cpu()
    here = visible_gpu_count() > 0
    if choice == "cuda" and not here:
        raise RkreproError("--device cuda: no CUDA device here (--gpu NAME plans for one)")
    if here:
        return this_gpu(probe)
    return this_cpu() if probe else elsewhere(None)


def for_run(
    gpu: str | None, device_type: str, cpu_asked: bool, trains_here: bool, dry_run: bool
) -> Target:
    """What ``rkrepro run`` estimates with: ``--gpu NAME`` only where nothing trains here (a
    dry run, or SLURM) and no CPU was asked for (``cpu_asked``: --device cpu, --cpu-jobs,
    --gpus-per-node 0); the CPU (probed) where the runs train on it; this GPU where they train
    on it; else the GPU the campaign is for."""
    shown = ascii(gpu)[1:-1][:40]
    if gpu is not None:
        if cpu_asked:
            raise RkreproError(
                f"--gpu {shown} estimates for a GPU, but these runs train on the CPU "
                "(--device cpu, --cpu-jobs or --gpus-per-node 0)"
            )
        if trains_here and not dry_run:
            raise RkreproError(
                f"--gpu {shown} estimates for a GPU that is not here, but this command trains "
                "on this machine: add --dry-run, or launch on SLURM"
            )
        return named_gpu(gpu)
    if device_type == "cpu":
        return this_cpu()
    return this_gpu() if trains_here else elsewhere(None)
