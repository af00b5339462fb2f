"""Where runs train: the device a ``--device`` means, and how a run's batch splits over its
processes. Each rule is decided here once; planning asks before anything heavy is imported
(torch only to count GPUs), a training process resolves the same rule to its device.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from rkrepro.errors import RkreproError

if TYPE_CHECKING:
    import torch


def planned_device_type(device: str) -> str:
    """``cpu`` or ``cuda``: where ``--device`` will put the runs (``auto``: a GPU if any)."""
    name = (device or "auto").strip().lower()
    if name == "auto":
        return "cuda" if visible_gpu_count() else "cpu"
    return "cuda" if name.startswith("cuda") else "cpu"


def visible_gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_device_name(name: str) -> None:
    """Refuse a ``--device`` that no run could use, without importing torch (``--dry-run``
    plans without one, so ``resolve_device`` alone would let ``tpu:7`` through)."""
    import re

    if not re.fullmatch(r"auto|cpu|cuda(:\d{1,4})?", (name or "auto").strip().lower()):
        shown = name if len(name) <= 40 else name[:40] + "..."
        raise RkreproError(f"unknown device {shown!r}: use auto, cpu or cuda:N")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> the first GPU if there is one, else the CPU; ``cuda:N`` must exist."""
    import torch

    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RkreproError(f"unknown device {name!r}: use auto, cpu or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RkreproError(f"device {name} asked for, but CUDA is not available here")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise RkreproError(
                f"device {name} asked for, but there are {torch.cuda.device_count()} GPUs"
            )
        return torch.device("cuda", index)
    if device.type != "cpu":
        raise RkreproError(f"unsupported device {name!r}: use auto, cpu or cuda:N")
    return device


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
