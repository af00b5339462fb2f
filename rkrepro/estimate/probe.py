"""A probe worth reading: real SGD steps of cells on this machine, timed so that the figure
does not depend on which cell came first or on a neighbour's burst.

Each model is placed as a run places it (the same process settings, memory format and CPU
allocator switch) and warmed up; then the cells of a row take turns, one timed step each,
until each has filled :data:`MIN_SECONDS` (and at least ``min_steps`` steps); a cell's median
step gives its rate and the spread of its step times says how noisy the machine was.

On the CPU the probe runs one thread and its hours are core-hours (a job with T threads takes
about 1/T of them). Several threads wait for each other at every op: when a neighbour takes a
core, a two-thread step on a two-core machine was measured 3 to 10 times slower than one
thread, and more so for networks of many small ops, so two cells of equal FLOPs came out an
order of magnitude apart. One thread is slowed at most by its share of a core.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from rkrepro.paper import Cell

WARMUP_STEPS = 2  # the first step pays for allocations and kernel selection, the second settles
MIN_SECONDS = 1.0  # of timed steps per cell
MIN_STEPS = 3
MAX_STEPS = 200
CPU_BATCH = 16  # a CPU step of a large DenseNet at batch 64 takes many seconds
CPU_THREADS = 1  # see the module docstring: the hours are core-hours


@dataclass(frozen=True)
class Probe:
    """What a probe measured: training images/s (median step), the spread of its step times
    ((max - min) / median), how many steps of how many images, and the peak memory (CUDA)."""

    images_per_s: float
    spread: float
    steps: int
    batch: int
    threads: int
    peak_gb: float | None
    device: str  # "CPU" or the GPU's name

    @property
    def source(self) -> str:
        threads = f"{self.threads} thread{'s' * (self.threads != 1)}"
        where = f"CPU ({threads}, " if self.device == "CPU" else f"{self.device} ("
        return (
            f"measured on {where}median of {self.steps} steps of {self.batch} images, "
            f"spread {100 * self.spread:.0f}%)"
        )


class _Stepper:
    """One cell's model, optimiser and batch on the device, ready to time steps."""

    def __init__(self, cell: Cell, device: str, precision: str) -> None:
        import torch

        from rkrepro.models import build_model, input_size_for
        from rkrepro.planning.fast_path import FastPath
        from rkrepro.training.setup import Execution

        self.on_cuda = device.startswith("cuda")
        self.execution = Execution.local(torch.device(device), precision, FastPath.from_env())
        self.model = self.execution.place(build_model(cell.spec))
        self.optimiser = torch.optim.SGD(
            self.model.parameters(), lr=0.1, momentum=0.9, nesterov=True
        )
        on = self.execution.device
        self.batch = (
            cell.protocol.batch_size if self.on_cuda else min(cell.protocol.batch_size, CPU_BATCH)
        )
        self.images = torch.randn(self.batch, *input_size_for(cell.spec), device=on)
        if self.execution.channels_last:
            self.images = self.images.contiguous(memory_format=torch.channels_last)
        self.labels = torch.randint(0, cell.spec.num_classes, (self.batch,), device=on)
        self.times: list[float] = []

    def step(self) -> float:
        import torch

        started = time.perf_counter()
        with self.execution.autocast():
            loss = torch.nn.functional.cross_entropy(self.model(self.images), self.labels)
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.optimiser.step()
        if self.on_cuda:
            torch.cuda.synchronize(self.execution.device)
        return time.perf_counter() - started

    def done(self, min_steps: int) -> bool:
        times = self.times
        return len(times) >= MAX_STEPS or (len(times) >= min_steps and sum(times) >= MIN_SECONDS)

    def result(self, peak_gb: float | None) -> Probe:
        import torch

        median = statistics.median(self.times)
        device = self.execution.device
        return Probe(
            images_per_s=self.batch / median,
            spread=(max(self.times) - min(self.times)) / median,
            steps=len(self.times),
            batch=self.batch,
            threads=torch.get_num_threads(),
            peak_gb=peak_gb,
            device=torch.cuda.get_device_name(device) if self.on_cuda else "CPU",
        )


def probe_cells(
    cells: list[Cell], device: str, precision: str, min_steps: int = MIN_STEPS
) -> dict[str, Probe]:
    """Cell key -> its probe on ``device`` (``cpu`` or ``cuda``) in ``precision``.

    The cells of one row are timed together, a step of each in turn, so that a neighbour's
    burst slows them all alike instead of whichever cell was being timed (the rows one after
    the other keep only one row's models in memory)."""
    rows: dict[tuple[str, str], list[Cell]] = {}
    for cell in cells:
        rows.setdefault((cell.table, cell.row), []).append(cell)
    out: dict[str, Probe] = {}
    for row_cells in rows.values():
        unique = list({cell.key: cell for cell in row_cells}.values())
        out.update(_probe_row(unique, device, precision, min_steps))
    return out


def _probe_row(cells: list[Cell], device: str, precision: str, min_steps: int) -> dict[str, Probe]:
    import torch

    on_cuda = device.startswith("cuda")
    threads = torch.get_num_threads()
    if not on_cuda:
        torch.set_num_threads(CPU_THREADS)
    try:
        return _time_row(cells, device, precision, min_steps)
    finally:
        torch.set_num_threads(threads)


def _time_row(cells: list[Cell], device: str, precision: str, min_steps: int) -> dict[str, Probe]:
    import torch

    steppers = [_Stepper(cell, device, precision) for cell in cells]
    on_cuda = device.startswith("cuda")
    for stepper in steppers:
        for _ in range(WARMUP_STEPS):
            stepper.step()
    peaks: dict[int, float] = {}
    while not all(s.done(min_steps) for s in steppers):
        for i, stepper in enumerate(steppers):
            if stepper.done(min_steps):
                continue
            if on_cuda:
                torch.cuda.reset_peak_memory_stats(stepper.execution.device)
            stepper.times.append(stepper.step())
            if on_cuda:
                peak = torch.cuda.max_memory_allocated(stepper.execution.device) / 2**30
                peaks[i] = max(peaks.get(i, 0.0), peak)
    pairs = enumerate(zip(cells, steppers, strict=True))
    return {cell.key: stepper.result(peaks.get(i)) for i, (cell, stepper) in pairs}
