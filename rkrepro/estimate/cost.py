"""``rkrepro plan``: what reproducing a selection of cells will cost, before launching anything.

The time of each cell comes from, in this order, and every estimate says which:
- *calibration*: a measured throughput of that device in ``rkrepro/calibration.yaml`` (exact,
  or scaled by FLOPs from the nearest measured model of the family), in the runs' precision;
- *roofline*: the cell's FLOPs and activation traffic against the GPU's published peak rate
  and bandwidth (:mod:`rkrepro.estimate.roofline`, :mod:`rkrepro.estimate.gpus`);
- *measured*: a probe of real steps on this machine (:mod:`rkrepro.estimate.probe`), when asked
  or when the runs train on this machine's CPU.

Parameters, FLOPs and memory are counted from the model spec without building it
(:mod:`rkrepro.models.analytic`), so a plan of the whole paper answers in about a second. Peak
memory is the bytes autograd keeps for backward per image times the batch, plus weights,
gradients and momentum; a CUDA probe measures it instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rkrepro.errors import RkreproError
from rkrepro.estimate.roofline import BACKWARD_FACTOR, training_rate
from rkrepro.estimate.target import Target
from rkrepro.models.analytic import ModelCost, model_cost
from rkrepro.paper import Cell
from rkrepro.tracking.keys import PRECISION_BF16, PRECISION_FP16_AMP, PRECISION_FP32

# Images per epoch: (train, test). ImageNet is ILSVRC2012 (1,281,167 / 50,000).
DATASET_SIZES: dict[str, tuple[int, int]] = {
    "cifar10": (50_000, 10_000),
    "cifar100": (50_000, 10_000),
    "imagenet": (1_281_167, 50_000),
}
CALIBRATION, ROOFLINE, MEASURED = "calibration", "roofline", "measured"


@dataclass(frozen=True)
class Estimate:
    cell: Cell
    params_paper: int
    forward_flops: int  # per image
    total_flops: float  # whole protocol: training + evaluation every epoch
    gpu_hours: float  # device-hours of one seed of the paper's protocol
    peak_memory_gb: float
    source: str  # how the time was estimated, e.g. "roofline on NVIDIA H100 ..."
    method: str = ROOFLINE  # CALIBRATION, ROOFLINE or MEASURED
    spread: float | None = None  # of a probe's step times: (max - min) / median

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
            "method": self.method,
            "source": self.source,
            "spread": self.spread,
        }


def protocol_flops(cell: Cell, forward_flops: int) -> float:
    """FLOPs of the whole protocol: every epoch trains on the train set and tests once."""
    train, test = DATASET_SIZES[cell.spec.dataset]
    per_epoch = BACKWARD_FACTOR * forward_flops * train + forward_flops * test
    return per_epoch * cell.protocol.epochs


def protocol_seconds(cell: Cell, images_per_s: float) -> float:
    """Seconds of the whole protocol at a training rate; evaluation runs without backward,
    about a third of a training step per image."""
    train, test = DATASET_SIZES[cell.spec.dataset]
    return cell.protocol.epochs * (train + test / BACKWARD_FACTOR) / images_per_s


def memory_gb(cell: Cell, cost: ModelCost, precision: str = PRECISION_FP32) -> float:
    """Peak training memory: saved activations x batch (2-byte under autocast), the tensors
    autograd keeps of the parameters, and weights, gradients and momentum in fp32."""
    half = precision in (PRECISION_BF16, PRECISION_FP16_AMP)
    activations = cost.saved_activation_bytes * (0.5 if half else 1.0) * cell.protocol.batch_size
    state = cost.params_total * 4 * 3 + cost.saved_parameter_bytes
    return (activations + state) / 2**30


def estimate(
    cells: list[Cell],
    target: Target,
    precision: str = PRECISION_FP32,
    probe_steps: int = 3,
    progress=None,
) -> list[Estimate]:
    """One estimate per cell for ``target`` in ``precision`` (the runs': fp32, the paper's,
    trains several times slower on a recent GPU than bf16). ``gpu_hours`` are hours on that
    device of one seed of the paper's protocol."""
    from rkrepro import calibration

    measured = calibration.load() if target.probe is None else []
    probes = {}
    if target.probe is not None:
        from rkrepro.estimate.probe import probe_cells

        probes = probe_cells(cells, target.probe, precision, probe_steps)
    estimates = []
    for cell in cells:
        cost = model_cost(cell.spec)
        flops = protocol_flops(cell, cost.forward_flops)
        peak = memory_gb(cell, cost, precision)
        if target.probe is not None:
            found = probes[cell.key]
            rate, source, method = found.images_per_s, found.source, MEASURED
            peak = found.peak_gb if found.peak_gb is not None else peak
            spread: float | None = found.spread
        elif (hit := _calibrated(measured, target, cell, cost, precision)) is not None:
            rate, method = hit.images_per_s, CALIBRATION
            source, spread = f"{hit.source} (rkrepro/calibration.yaml)", None
        elif target.gpu is not None:
            roof = training_rate(cost, target.gpu, precision, cell.protocol.batch_size)
            rate, source, method, spread = roof.images_per_s, roof.source, ROOFLINE, None
        else:
            raise RkreproError(
                f"no estimate for {target.label}: it is not in rkrepro's GPU table and "
                f"calibration.yaml has no measurement of {cell.spec.family} on it; "
                "use --gpu NAME, or --probe on that machine"
            )
        seconds = protocol_seconds(cell, rate)
        estimates.append(
            Estimate(
                cell,
                cost.params_paper,
                cost.forward_flops,
                flops,
                seconds / 3600,
                peak,
                source,
                method,
                spread,
            )  # fmt: skip
        )
        if progress is not None:
            progress()
    return estimates


def _calibrated(measured, target: Target, cell: Cell, cost: ModelCost, precision: str):
    """The calibration file's rate for this cell on one of the target's device names."""
    from rkrepro import calibration

    for name in target.device_names:
        hit = calibration.lookup(
            measured,
            name,
            cell.spec.family,
            cell.spec.depth,
            cell.spec.growth_rate,
            cell.protocol.batch_size,
            cost.forward_flops,
            precision,
        )
        if hit is not None:
            return hit
    return None


def summarise(estimates: list[Estimate]) -> list[dict[str, Any]]:
    """Totals per row and per table, in the order the cells came, and of everything when the
    cells come from several tables (table ``all``)."""
    groups: dict[tuple[str, str | None], dict[str, Any]] = {}
    several = len({est.cell.table for est in estimates}) > 1
    for est in estimates:
        keys = [(est.cell.table, est.cell.row), (est.cell.table, None)]
        for key in keys + ([("all", None)] if several else []):
            group = groups.setdefault(
                key,
                {"table": key[0], "row": key[1] or "(table)", "cells": 0, "gpu_hours": 0.0},
            )
            group["cells"] += 1
            group["gpu_hours"] += est.gpu_hours
            group["total_pflops"] = group.get("total_pflops", 0.0) + est.total_flops / 1e15
            group["peak_memory_gb"] = max(group.get("peak_memory_gb", 0.0), est.peak_memory_gb)
    if several:
        groups[("all", None)]["row"] = "(paper)"
        groups[("all", None)] = groups.pop(("all", None))  # last
    return list(groups.values())


def totals_rich(estimates: list[Estimate], target: Target | None = None, precision: str = ""):
    """The totals of several tables and of the paper, one line each: what ``plan`` prints after
    one table per paper table (each with its own rows' totals)."""
    from rich.table import Table

    title = "Totals of the reproduction (one seed each)"
    if target is not None:
        title += f" on {target.label}" + (f", {precision}" if precision else "")
    out = Table(title=title, header_style="bold", title_justify="left")
    for header in ("table", "cells", "PFLOP", "GPU-h", "peak GB"):
        out.add_column(header, justify="left" if header == "table" else "right", no_wrap=True)
    for group in summarise(estimates):
        if group["row"] not in ("(table)", "(paper)"):
            continue
        label = f"total {group['row']}" if group["row"] == "(paper)" else group["table"]
        out.add_row(
            label,
            str(group["cells"]),
            f"{group['total_pflops']:,.1f}",
            f"{group['gpu_hours']:,.2f}",
            f"{group['peak_memory_gb']:.1f}",
            style="bold" if group["row"] == "(paper)" else "",
        )
    return out


def to_rich(estimates: list[Estimate], target: Target | None = None, precision: str = ""):
    from rich.table import Table

    out = Table(title="Cost of the reproduction (before launching)", header_style="bold")
    hours = "CPU-h" if any(e.source.startswith("measured on CPU") for e in estimates) else "GPU-h"
    if target is not None:
        out.title += f" on {target.label}" + (f", {precision}" if precision else "")
    # Readable at 80 columns: one table goes into the title, a row id is printed once per row,
    # short headers; names fold instead of being cut to "densen…".
    tables = list(dict.fromkeys(e.cell.table for e in estimates))
    one = len(tables) == 1
    if one:
        out.title = f"{tables[0]}: {out.title}"
    headers = ("table", "row", "model", "M par", "GFLOP/img", "PFLOP", hours, "src", "peak GB")
    memory = target.gpu.memory_gb if target is not None and target.gpu is not None else None
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
            METHOD_MARKS[est.method],
            f"{est.peak_memory_gb:.1f}" + ("!" if memory and est.peak_memory_gb > memory else ""),
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
            "",
            f"{group['peak_memory_gb']:.1f}",
        ]
        out.add_row(*(cells[1:] if one else cells), style="bold")
    out.caption = f"time (one seed each): {describe_sources(estimates)}; memory: " + (
        "measured peak"
        if any(e.method == MEASURED and "on CPU" not in e.source for e in estimates)
        else "saved activations x batch + weights, gradients, momentum (counted from the spec)"
    )
    if memory and any(e.peak_memory_gb > memory for e in estimates):
        out.caption += (
            f"; ! more than the {memory:g} GB of {target.label}: --memory-efficient, or "
            "--nproc-per-node N to split the batch"  # type: ignore[union-attr]
        )
    return out


# The src column: which source each estimate came from.
METHOD_MARKS = {CALIBRATION: "a", ROOFLINE: "b", MEASURED: "m"}
_METHOD_NAMES = {CALIBRATION: "(a)", ROOFLINE: "(b)", MEASURED: "(m)"}


def describe_sources(estimates: list[Estimate]) -> str:
    """Where the times came from, one phrase per source, marked (a) calibration.yaml, (b)
    roofline or (m) measured here; the probes of many cells as one phrase with the range of
    their spreads."""
    phrases: dict[str, None] = {}
    probes = [e for e in estimates if e.method == MEASURED]
    for est in estimates:
        if est.method != MEASURED:
            phrases[f"{_METHOD_NAMES[est.method]} {est.source}"] = None
    if probes:
        spreads = [100 * (e.spread or 0.0) for e in probes]
        head = probes[0].source.split(" median of ")[0]
        span = (
            f"{min(spreads):.0f}%"
            if len(probes) == 1
            else (f"{min(spreads):.0f}-{max(spreads):.0f}%")
        )
        phrases[f"(m) {head} median step of each cell, spread {span})"] = None
    return "; ".join(phrases)


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
