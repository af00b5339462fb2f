"""How a plan trains in this process, decided once: the device, the precision, the fast path,
the memory format and the world of processes. Everything below (the trainer, the step, the
batch sources) reads this record instead of deciding again.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from rkrepro.errors import RkreproError
from rkrepro.planning.fast_path import FastPath
from rkrepro.tracking.keys import PRECISION_BF16, PRECISION_FP16_AMP, PRECISION_FP32, PRECISION_TF32
from rkrepro.training.world import World

if TYPE_CHECKING:
    from rkrepro.planning.plan import Plan

_AUTOCAST_DTYPES = {PRECISION_BF16: torch.bfloat16, PRECISION_FP16_AMP: torch.float16}


@dataclass(frozen=True)
class Execution:
    """One plan's way of training here. ``fast`` is the fast path in effect on ``device``."""

    device: torch.device
    precision: str = PRECISION_FP32
    fast: FastPath = field(default_factory=FastPath.off)
    world: World = None  # type: ignore[assignment]  # None: this process alone
    sync_bn: bool = False

    def __post_init__(self) -> None:
        if self.world is None:
            object.__setattr__(self, "world", World(self.device))

    @classmethod
    def for_plan(cls, plan: Plan, world: World) -> Execution:
        """The plan's decisions on this process's device; a plan made for another kind of
        device (its precision and fast path depend on it) is refused, not re-decided."""
        if world.device.type != plan.device_type:
            raise RkreproError(
                f"{plan.label}: planned for {plan.device_type} but this process trains on "
                f"{world.device}; plan on the device you run on (--device)"
            )
        return cls(world.device, plan.precision, plan.fast, world, plan.options.sync_bn)

    @classmethod
    def local(
        cls,
        device: torch.device,
        precision: str = PRECISION_FP32,
        fast: FastPath | None = None,
        emulate_cuda: bool = False,
    ) -> Execution:
        """One process on ``device`` (tests and benchmarks). ``emulate_cuda`` keeps on the CPU
        the CUDA path's logic that runs there too (see :meth:`FastPath.for_device`)."""
        fast = (fast if fast is not None else FastPath.from_env()).for_device(device, emulate_cuda)
        return cls(device, precision, fast)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return _AUTOCAST_DTYPES.get(self.precision)

    @property
    def loss_scaling(self) -> bool:
        """fp16 needs dynamic loss scaling (a GradScaler); bf16 and fp32 do not."""
        return self.precision == PRECISION_FP16_AMP

    @property
    def channels_last(self) -> bool:
        """Batches and weights in NHWC (the fast path's memory format)."""
        return self.fast.channels_last

    @property
    def captures_step(self) -> bool:
        """The whole step as one CUDA graph: not with loss scaling (its inf check needs the
        host) nor in a group (DDP's bucketed all-reduce)."""
        return self.fast.cuda_graph and not self.loss_scaling and self.world.size == 1

    @property
    def device_label(self) -> str:
        """The device as runs record it: ``cuda:0 (NVIDIA H200)``, ``4 x cuda (...)``, ``cpu``."""
        label = str(self.device)
        if self.device.type == "cuda":
            label += f" ({torch.cuda.get_device_name(self.device)})"
        if self.world.size > 1:
            label = f"{self.world.size} x {label.replace(f'cuda:{self.device.index}', 'cuda')}"
        return label

    def autocast(self, cache: bool = True) -> contextlib.AbstractContextManager:
        """The precision's autocast region (a no-op in fp32 and tf32); a captured step needs
        ``cache=False``."""
        dtype = self.autocast_dtype
        return torch.autocast(
            self.device.type, dtype=dtype, enabled=dtype is not None, cache_enabled=cache
        )

    def place(self, model: nn.Module) -> nn.Module:
        """The model as it trains here: this process's settings applied, on the device, in the
        memory format, with the feature buffer switched, wrapped for the world."""
        from rkrepro.models.densenet import set_feature_buffer

        apply_process_settings(self)
        set_feature_buffer(model, self.fast.feature_buffer)
        if self.channels_last:
            model = model.to(self.device, memory_format=torch.channels_last)
        else:
            model = model.to(self.device)
        return self.world.wrap(model, self.sync_bn)


def apply_process_settings(execution: Execution) -> None:
    """The process-wide switches of this execution, set in this one place: TF32 (on only for
    ``tf32``; fp32 means IEEE fp32 convolutions and matrix products), cuDNN autotuning and the
    CPU allocator."""
    apply_precision(execution.precision)
    if execution.fast.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    if execution.fast.cpu_malloc:
        keep_freed_memory()


def apply_precision(precision: str) -> None:
    """TF32 for convolutions and matrix products only under ``tf32``. PyTorch lets cuDNN use
    TF32 by default, so fp32 must switch it off to be the paper's arithmetic."""
    mode = "tf32" if precision == PRECISION_TF32 else "ieee"
    backends = torch.backends
    if hasattr(backends, "fp32_precision"):  # torch >= 2.9: the one switch for every backend
        backends.fp32_precision = mode
        backends.cuda.matmul.fp32_precision = mode
        backends.cudnn.conv.fp32_precision = mode
        backends.cudnn.rnn.fp32_precision = mode
        return
    backends.cuda.matmul.allow_tf32 = mode == "tf32"
    backends.cudnn.allow_tf32 = mode == "tf32"


def keep_freed_memory() -> bool:
    """glibc ``mallopt``: serve every allocation from the heap (no per-tensor mmap) and never
    trim it, so a training step reuses the pages of the last one. False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**30))
    except (OSError, AttributeError):  # not glibc
        return False
