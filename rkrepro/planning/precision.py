"""The arithmetic a run trains in: one explicit choice, the paper's fp32 unless asked otherwise.

The paper trained in single precision (fb.resnet.torch ``-precision single``,
``torch.CudaTensor``), so ``fp32`` is the default on every device, and on CUDA it means fp32:
TF32 is switched off for convolutions and matrix products (PyTorch lets cuDNN use TF32 by
default). The other choices change the numbers, so they are part of a run's identity and
recorded with every reproduced number; they exist for speed on a GPU:

- ``tf32``: TF32 tensor cores for convolutions and matrix products (10-bit mantissa);
- ``bf16``: bf16 autocast; weights, BatchNorm and SGD stay fp32;
- ``fp16``: fp16 autocast with dynamic loss scaling (``--amp`` before there was a choice).

Torch-free: plans are hashed and checked before anything heavy is imported. The process-wide
switches are set in :func:`rkrepro.training.setup.apply_precision`.
"""

from __future__ import annotations

from typing import Any

from rkrepro.errors import RkreproError
from rkrepro.tracking.keys import PRECISION_BF16, PRECISION_FP16_AMP, PRECISION_FP32, PRECISION_TF32

# ``--precision`` value -> the name a run records (tag ``rkrepro.precision``).
CHOICES: dict[str, str] = {
    "fp32": PRECISION_FP32,
    "tf32": PRECISION_TF32,
    "bf16": PRECISION_BF16,
    "fp16": PRECISION_FP16_AMP,
}
DEFAULT = "fp32"
# What the user is told where they choose: the paper's arithmetic costs GPU time.
SPEED_NOTE = (
    "fp32 is the paper's arithmetic; on a recent GPU it trains several times slower than bf16 "
    "or tf32, which give other numbers (a different run)"
)


def parse(text: str | None) -> str:
    """``--precision`` (``fp32``, ``tf32``, ``bf16``, ``fp16``, or a recorded name such as
    ``bf16-autocast``) -> the recorded name; one clear line for anything else."""
    name = (text or DEFAULT).strip().lower()
    if name in CHOICES:
        return CHOICES[name]
    if name in CHOICES.values():
        return name
    shown = ascii(text)[:40]
    raise RkreproError(f"--precision {shown}: use one of {', '.join(CHOICES)}")


def check_device(precision: str, device_type: str) -> None:
    """Every precision but fp32 is a CUDA feature: refuse it for runs that train on the CPU."""
    if precision != PRECISION_FP32 and device_type != "cuda":
        option = next(k for k, v in CHOICES.items() if v == precision)
        raise RkreproError(
            f"--precision {option} needs a CUDA device; on the CPU runs train in fp32 "
            "(the paper's arithmetic)"
        )


def identity(precision: str) -> dict[str, Any]:
    """The precision's share of a run's identity. fp32 and fp16 hash as they did before the
    choice existed (``amp`` was the only switch), so runs already in a store are still found."""
    fields: dict[str, Any] = {"amp": precision == PRECISION_FP16_AMP}
    if precision in (PRECISION_BF16, PRECISION_TF32):
        fields["precision"] = precision
    return fields
