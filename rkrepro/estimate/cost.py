"""``rkrepro plan``: what reproducing a selection of cells will cost, before launching anything.

Two sources for the time estimate, always labelled in the output:
- *measured*: a short probe of real training steps at the protocol's batch size on the current
  CUDA device (images/s, steady state after warm-up);
- *FLOPs*: training FLOPs (forward + backward ≈ 3 × forward, plus evaluation) divided by a
  stated achieved throughput, when no GPU is present or probing is off.

Peak memory is estimated without a GPU: the bytes of every tensor autograd saves for the
backward pass (counted on the meta device, so free) times the batch size, plus weights,
gradients and momentum. A probe replaces it with ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from rkrepro.mlflow_keys import PRECISION_FP32
from rkrepro.paper import Cell

# Images per epoch: (train, test). ImageNet is ILSVRC2012 (1,281,167 / 50,000).
DATASET_SIZES: dict[str, tuple[int, int]] = {
    "cifar10": (50_000, 10_000),
    "cifar100": (50_000, 10_000),
    "imagenet": (1_281_167, 50_000),
}
# Achieved (not peak) training throughput assumed when nothing is measured. Small-batch CIFAR
# convnets reach a small fraction of a modern GPU's peak; state it, and let the user change it.
DEFAULT_TFLOPS = 20.0
BACKWARD_FACTOR = 3.0  # forward + backward ≈ 3 forward passes
# Small models at small batches are bound by per-step overhead, not FLOPs: a ceiling on the
# training images/s assumed (issue 6's target for BC-100 on one H100).
DEFAULT_MAX_IMAGES_PER_S = 25_000.0


@dataclass(frozen=True)
class Estimate:
    cell: Cell
    params_paper: int
    forward_flops: int  # per image
    total_flops: float  # whole protocol: training + evaluation every epoch
    gpu_hours: float
    peak_memory_gb: float
    source: str  # "measured on <device>" or "FLOPs @ N TFLOP/s"

    def record(self) -> dict[str, Any]:
        return {
            "table": self.cell.table,
            "row": self.cell.row,
            "model": self.cell.model,
            "share": self.cell.share,
            "params_paper": self.params_paper,
            "forward_flops": self.forward_flops,
            "total_pflops": self.total_flops / 1e15,
            "epochs": self.cell.protocol.epochs,
            "batch_size": self.cell.protocol.batch_size,
            "gpu_hours": self.gpu_hours,
            "peak_memory_gb": self.peak_memory_gb,
            "source": self.source,
        }


def protocol_flops(cell: Cell, forward_flops: int) -> float:
    """FLOPs of the whole protocol: every epoch trains on the train set and tests once."""
    train, test = DATASET_SIZES[cell.spec.dataset]
    per_epoch = BACKWARD_FACTOR * forward_flops * train + forward_flops * test
    return per_epoch * cell.protocol.epochs


def saved_activation_bytes(cell: Cell) -> int:
    """Bytes autograd keeps for backward, per image, counted on the meta device (fp32)."""
    import torch

    from rkrepro.models import build_model, input_size_for

    with torch.device("meta"):
        model = build_model(cell.spec)
    model.train()
    saved: dict[int, torch.Tensor] = {}  # holding the tensors keeps their ids unique

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved[id(tensor)] = tensor  # a tensor saved by several ops is kept once
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        image = torch.zeros(1, *input_size_for(cell.spec), device="meta")
        model(image).sum()
    return sum(t.numel() * t.element_size() for t in saved.values())


def _memory_estimate(cell: Cell, total_params: int) -> float:
    activations = saved_activation_bytes(cell) * cell.protocol.batch_size
    state = total_params * 4 * 3  # weights, gradients, momentum (fp32)
    return (activations + state) / 2**30


# A CPU probe is short: a step of a BC-100 at batch 64 takes seconds there.
CPU_PROBE_STEPS = 2
CPU_PROBE_BATCH = 16


def _probe_cpu(cell: Cell, steps: int) -> tuple[float, float]:
    """(images/s, estimated peak GB) of a few real fp32 SGD steps on the CPU."""
    import torch

    from rkrepro.models import build_model, input_size_for, spec_param_counts

    model = build_model(cell.spec).to(memory_format=torch.channels_last)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    batch = min(cell.protocol.batch_size, CPU_PROBE_BATCH)
    images = torch.randn(batch, *input_size_for(cell.spec)).to(memory_format=torch.channels_last)
    labels = torch.randint(0, cell.spec.num_classes, (batch,))

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    step()  # warm-up: allocator, kernels
    start = time.perf_counter()
    for _ in range(steps):
        step()
    elapsed = time.perf_counter() - start
    return steps * batch / elapsed, _memory_estimate(cell, spec_param_counts(cell.spec)[1])


def _probe(cell: Cell, device: str, steps: int, precision: str) -> tuple[float, float]:
    """(images/s, peak GB) of real SGD steps at the protocol's batch size on ``device``, in the
    precision the runs will train in."""
    import torch

    from rkrepro.models import build_model, input_size_for
    from rkrepro.training.setup import Execution, apply_process_settings

    if device == "cpu":
        return _probe_cpu(cell, min(steps, CPU_PROBE_STEPS))
    execution = Execution(torch.device(device), precision)
    apply_process_settings(execution)
    model = build_model(cell.spec).to(device).to(memory_format=torch.channels_last)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    batch = cell.protocol.batch_size
    images = torch.randn(batch, *input_size_for(cell.spec), device=device)
    images = images.to(memory_format=torch.channels_last)
    labels = torch.randint(0, cell.spec.num_classes, (batch,), device=device)
    torch.cuda.reset_peak_memory_stats(device)

    def step() -> None:
        with execution.autocast():
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    for _ in range(3):
        step()
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    return steps * batch / elapsed, torch.cuda.max_memory_allocated(device) / 2**30


def calibration_device() -> str:
    """The device whose calibration entries a plan uses: ``RKREPRO_CALIBRATION_DEVICE``, else
    this machine's first GPU, else ``cpu``."""
    import os

    import torch

    name = os.environ.get("RKREPRO_CALIBRATION_DEVICE", "").strip()
    if name:
        return name
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def estimate(
    cells: list[Cell],
    tflops: float = DEFAULT_TFLOPS,
    max_images_per_s: float = DEFAULT_MAX_IMAGES_PER_S,
    probe_device: str | None = None,
    probe_steps: int = 20,
    progress=None,
    precision: str = PRECISION_FP32,
) -> list[Estimate]:
    """One estimate per cell; ``probe_device`` (a CUDA device, or ``"cpu"`` for a short CPU
    probe) measures instead of assuming, in ``precision`` (the runs': fp32, the paper's, is
    several times slower on a GPU than bf16). ``gpu_hours`` are hours on that device."""
    import torch

    from rkrepro import calibration
    from rkrepro.models import build_model, count_flops, input_size_for, spec_param_counts

    measured = calibration.load()
    device_name = calibration_device()
    estimates = []
    for cell in cells:
        paper, total = spec_param_counts(cell.spec)
        with torch.device("meta"):
            model = build_model(cell.spec)
        forward = count_flops(model, input_size_for(cell.spec))
        flops = protocol_flops(cell, forward)
        train, test = DATASET_SIZES[cell.spec.dataset]
        if probe_device is not None:
            images_per_s, peak = _probe(cell, probe_device, probe_steps, precision)
            # Evaluation runs without backward: about a third of a training step per image.
            seconds = cell.protocol.epochs * (train + test / BACKWARD_FACTOR) / images_per_s
            if probe_device == "cpu":
                source = (
                    f"measured on CPU ({torch.get_num_threads()} threads, "
                    f"{CPU_PROBE_STEPS} steps of {CPU_PROBE_BATCH} images)"
                )
            else:
                name = torch.cuda.get_device_name(probe_device)
                source = f"measured on {name} in {precision}"
        elif (
            hit := calibration.lookup(
                measured,
                device_name,
                cell.spec.family,
                cell.spec.depth,
                cell.spec.growth_rate,
                cell.protocol.batch_size,
                forward,
            )  # fmt: skip
        ) is not None:
            seconds = cell.protocol.epochs * (train + test / BACKWARD_FACTOR) / hit.images_per_s
            peak = _memory_estimate(cell, total)
            source = f"{hit.source} (rkrepro/calibration.yaml)"
        else:
            overhead_floor = cell.protocol.epochs * (train + test / 3) / max_images_per_s
            seconds = max(flops / (tflops * 1e12), overhead_floor)
            peak = _memory_estimate(cell, total)
            source = f"FLOPs @ {tflops:g} TFLOP/s, at most {max_images_per_s:,.0f} images/s"
        estimates.append(Estimate(cell, paper, forward, flops, seconds / 3600, peak, source))
        if progress is not None:
            progress()
    return estimates


def summarise(estimates: list[Estimate]) -> list[dict[str, Any]]:
    """Totals per row and per table, in the order the cells came."""
    groups: dict[tuple[str, str | None], dict[str, Any]] = {}
    for est in estimates:
        for key in ((est.cell.table, est.cell.row), (est.cell.table, None)):
            group = groups.setdefault(
                key,
                {"table": key[0], "row": key[1] or "(table)", "cells": 0, "gpu_hours": 0.0},
            )
            group["cells"] += 1
            group["gpu_hours"] += est.gpu_hours
            group["total_pflops"] = group.get("total_pflops", 0.0) + est.total_flops / 1e15
            group["peak_memory_gb"] = max(group.get("peak_memory_gb", 0.0), est.peak_memory_gb)
    return list(groups.values())


def to_rich(estimates: list[Estimate]):
    from rich.table import Table

    out = Table(title="Cost of the reproduction (before launching)", header_style="bold")
    hours = "CPU-h" if any(e.source.startswith("measured on CPU") for e in estimates) else "GPU-h"
    # Readable at 80 columns: one table goes into the title, a row id is printed once per row,
    # short headers; names fold instead of being cut to "densen…".
    tables = list(dict.fromkeys(e.cell.table for e in estimates))
    one = len(tables) == 1
    if one:
        out.title = f"{tables[0]}: {out.title}"
    headers = ("table", "row", "model", "M par", "GFLOP/img", "PFLOP", hours, "peak GB")
    for header in headers[1:] if one else headers:
        name = header in ("table", "row", "model")
        out.add_column(
            header, justify="left" if name else "right", overflow="fold", no_wrap=header == "model"
        )
    previous = None
    for est in estimates:
        key = (est.cell.table, est.cell.row)
        if previous is not None and key != previous:
            out.add_section()
        cells = [
            est.cell.table,
            est.cell.row if key != previous else "",
            est.cell.printed_model + (" share" if est.cell.share else ""),
            f"{est.params_paper / 1e6:.2f}",
            f"{est.forward_flops / 1e9:.2f}",
            f"{est.total_flops / 1e15:,.1f}",
            f"{est.gpu_hours:,.2f}",
            f"{est.peak_memory_gb:.1f}",
        ]
        previous = key
        out.add_row(*(cells[1:] if one else cells))
    out.add_section()
    for group in summarise(estimates):
        cells = [
            group["table"],
            f"total {group['row']}",
            f"{group['cells']} cells",
            "",
            "",
            f"{group['total_pflops']:,.1f}",
            f"{group['gpu_hours']:,.2f}",
            f"{group['peak_memory_gb']:.1f}",
        ]
        out.add_row(*(cells[1:] if one else cells), style="bold")
    sources = sorted({est.source for est in estimates})
    out.caption = f"time: {'; '.join(sources)}; memory: " + (
        "measured peak"
        if any(s.startswith("measured") and "CPU" not in s for s in sources)
        else "saved activations × batch + weights, gradients, momentum (fp32 estimate)"
    )
    return out


def share_of_paper(epochs: int, paper_epochs: int, train_subset: int | None, dataset: str) -> float:
    """The fraction of the paper protocol's cost a (possibly shortened) run trains."""
    share = epochs / paper_epochs
    if train_subset is not None:
        share *= min(1.0, train_subset / DATASET_SIZES[dataset][0])
    return share


def format_hours(hours: float) -> str:
    """GPU-hours as printed: ``1,234.50``, ``0.003``, or ``?`` for no estimate (NaN)."""
    if hours != hours:
        return "?"
    return f"{hours:,.2f}" if hours >= 0.01 or hours == 0 else f"{hours:.1g}"
