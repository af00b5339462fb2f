"""What a checkpoint holds beyond the model and optimiser: every RNG's state and the epochs so
far, as plain data (checkpoints load with ``weights_only=True``, which admits no NumPy object).

Everything random is either restored from here or derived from (seed, epoch) by the batch
sources, which is what makes a resumed CPU run bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class EpochRecord:
    """One epoch's numbers; errors in %, memory in MiB (process peak RSS on CPU)."""

    epoch: int
    train_loss: float
    train_error: float
    test_error: float
    test_top5_error: float | None
    lr: float
    epoch_seconds: float
    images_per_s: float
    peak_memory_mb: float


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_states() -> dict[str, Any]:
    """Every RNG's state as tensors, ints and tuples only: checkpoints load with
    ``weights_only=True``, which admits no NumPy object."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    numpy_state = states["numpy"]
    if isinstance(numpy_state, dict):
        keys = np.asarray(numpy_state["keys"].numpy(), dtype=np.uint32)
        numpy_state = (
            numpy_state["name"],
            keys,
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    np.random.set_state(numpy_state)
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def plain_lr(value: float | torch.Tensor) -> float:
    """A learning rate as a Python float; a float32 device tensor's value is rounded back to
    the 7 significant digits it holds (0.1, not 0.10000000149)."""
    return float(f"{value.item():.7g}") if isinstance(value, torch.Tensor) else float(value)


def plain_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state with a float learning rate (a captured step's device tensor is
    not something a checkpoint should carry)."""
    state = optimizer.state_dict()
    for group in state["param_groups"]:
        group["lr"] = plain_lr(group["lr"])
    return state


def plain_scheduler_state(scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict[str, Any]:
    """The scheduler's state with float learning rates: a scheduler reading a tensor lr keeps
    copies of it (``_last_lr``), device tensors a CPU process could not load."""
    state = scheduler.state_dict()
    for key in ("_last_lr", "base_lrs"):
        if key in state:
            state[key] = [plain_lr(v) for v in state[key]]
    return state
