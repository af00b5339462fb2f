"""The fast path: overhead removal that never changes the protocol, and the precision a run
trains in, which does change its numbers and so belongs to the run's identity.

Kept free of torch imports: ``rkrepro run`` validates ``--fast-path`` and hashes a plan's
configuration before anything heavy is loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING

from rkrepro.errors import RkreproError
from rkrepro.tracking.keys import PRECISION_BF16, PRECISION_FP16_AMP, PRECISION_FP32

if TYPE_CHECKING:
    import torch

# "off", or switches such as "-cuda_graph,-bf16" (see FastPath.parse); --fast-path's default.
FAST_PATH_ENV = "RKREPRO_FAST_PATH"


def _device_type(device: torch.device | str) -> str:
    return device if isinstance(device, str) else device.type


@dataclass(frozen=True)
class FastPath:
    """Overhead removal that leaves the protocol alone (batch size, SGD, augmentation).

    Each field switches one part; :meth:`off` is the plain, exact-protocol path. The fields
    marked CUDA are ignored on the CPU (:meth:`for_device`).

    - ``channels_last``: NHWC activations and weights (faster convolutions on cuDNN and
      oneDNN; ``bench/throughput.py`` measures it).
    - ``feature_buffer``: dense blocks write into one preallocated buffer: less memory, but
      slower on the CPU (strided kernels), so off by default.
    - ``bf16`` (CUDA): bf16 autocast; weights, BatchNorm and the optimizer stay fp32.
    - ``cudnn_benchmark`` (CUDA): cuDNN autotunes each convolution shape once.
    - ``fused_sgd`` (CUDA): one fused SGD kernel, the learning rate a device tensor.
    - ``cuda_graph`` (CUDA): forward, backward, SGD and the running loss captured as one CUDA
      graph and replayed per batch; no host synchronisation inside a step.
    - ``cpu_malloc`` (CPU, glibc): keep freed memory in the process instead of unmapping the
      large activation blocks after every step and faulting them in again on the next; the
      resident size stays at peak.
    - ``gpu_decode`` (CUDA, ImageNet; off by default): DataLoader workers only read the JPEG
      files; nvJPEG decodes them and the augmentation runs batched on the GPU. The pixels differ
      slightly from PIL's decode and resize, so a run with it is a different run (identity).
    """

    channels_last: bool = True
    feature_buffer: bool = False
    bf16: bool = True
    cudnn_benchmark: bool = True
    fused_sgd: bool = True
    cuda_graph: bool = True
    cpu_malloc: bool = True
    gpu_decode: bool = False

    @classmethod
    def off(cls) -> FastPath:
        return cls(**{f.name: False for f in fields(cls)})

    @classmethod
    def parse(cls, text: str | None) -> FastPath:
        """``""``/``on`` (the defaults), ``off`` (none), then ``+name``/``-name`` items,
        comma-separated: ``-cuda_graph,-bf16``, ``off,+channels_last`` or ``+gpu_decode``."""
        fast = cls()
        names = {f.name for f in fields(cls)}
        for item in (text or "").replace(" ", "").lower().split(","):
            if item in ("", "on", "all", "1", "true"):
                continue
            if item in ("off", "none", "0", "false"):
                fast = cls.off()
                continue
            name = item.lstrip("+-").replace("-", "_")
            if item[0] not in "+-" or name not in names:
                raise RkreproError(
                    f"bad fast-path switch {item!r}: use on, off, +NAME or -NAME with NAME in "
                    + ", ".join(sorted(names))
                )
            fast = replace(fast, **{name: item[0] == "+"})
        return fast

    @classmethod
    def from_env(cls) -> FastPath:
        return cls.parse(os.environ.get(FAST_PATH_ENV))

    def for_device(self, device: torch.device | str, emulate_cuda: bool = False) -> FastPath:
        """The parts that apply on ``device`` (the CUDA-only ones are off elsewhere).

        ``emulate_cuda`` (tests, ``bench/gpu_selfcheck.py --cpu-smoke``) keeps on the CPU the
        CUDA parts whose logic runs there too: bf16 autocast, fused SGD with a tensor learning
        rate, and the captured step's body, called eagerly instead of replayed."""
        if _device_type(device) == "cuda":
            return replace(self, cpu_malloc=False)
        if emulate_cuda:
            return replace(self, cudnn_benchmark=False, gpu_decode=False)
        return replace(
            self,
            bf16=False,
            cudnn_benchmark=False,
            fused_sgd=False,
            cuda_graph=False,
            gpu_decode=False,
        )

    def for_dataset(self, dataset: str) -> FastPath:
        """The parts that apply to ``dataset`` (GPU JPEG decoding is for ImageNet's files)."""
        return self if dataset == "imagenet" else replace(self, gpu_decode=False)

    def describe(self) -> str:
        on = [f.name for f in fields(self) if getattr(self, f.name)]
        return ",".join(on) if on else "off"


def run_precision(fast: FastPath, device_type: str, amp: bool = False) -> str:
    """The precision a run on ``device_type`` trains in under ``fast`` (and ``--amp``)."""
    if device_type != "cuda":
        return PRECISION_FP32
    if amp:
        return PRECISION_FP16_AMP
    return PRECISION_BF16 if fast.bf16 else PRECISION_FP32
