"""A roofline estimate of training throughput on a GPU that is not here.

Each forward op of the model (:mod:`rkrepro.models.analytic`) takes, at the protocol's batch,
the longest of
- its FLOPs at the GPU's peak rate for the run's precision times :data:`COMPUTE_EFFICIENCY`,
- the activations it reads and writes (and its weights, once per batch) at the GPU's memory
  bandwidth times :data:`BANDWIDTH_EFFICIENCY`,
- :data:`MIN_OP_SECONDS`: a kernel's floor (launch, ramp-up and tail; the CUDA graph removes the
  CPU's gaps between kernels, not this);
and a training step is :data:`BACKWARD_FACTOR` forward passes (backward computes two products
per forward one, and reads and writes about twice the forward's bytes).

Small CIFAR networks are bound by bandwidth and the per-op floor, not by arithmetic: their
convolutions have 12 to 200 channels, BatchNorm and ReLU touch every activation, and a batch of
64 images of 8x8 to 32x32 pixels leaves a big GPU mostly idle. Real figures from
``bench/gpu_check.sh`` (``calibration.yaml``) always take precedence over this. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

from rkrepro.estimate.gpus import Gpu
from rkrepro.models.analytic import ModelCost
from rkrepro.tracking.keys import PRECISION_BF16, PRECISION_FP16_AMP

# The stated efficiencies: cuDNN's convolutions reach about half the dense peak on the shapes
# of these networks at best, and streaming kernels (BatchNorm, ReLU, concatenation) about 70% of
# the memory bandwidth.
COMPUTE_EFFICIENCY = 0.5
BANDWIDTH_EFFICIENCY = 0.7
MIN_OP_SECONDS = 3e-6
BACKWARD_FACTOR = 3.0  # a training step ~ 3 forward passes (FLOPs, bytes and kernels)
_HALF = (PRECISION_BF16, PRECISION_FP16_AMP)  # activations in 2 bytes under autocast


@dataclass(frozen=True)
class Rate:
    """Training images/s on a GPU, how much of the step arithmetic limits, and the label."""

    images_per_s: float
    compute_share: float  # of the step's time, in ops limited by arithmetic
    source: str


def training_rate(cost: ModelCost, gpu: Gpu, precision: str, batch: int) -> Rate:
    """Images/s of training steps of ``batch`` images of this model on ``gpu`` in
    ``precision``, by the roofline of each op."""
    peak, rate_name = gpu.peak_tflops(precision)
    flops_per_s = peak * 1e12 * COMPUTE_EFFICIENCY
    bytes_per_s = gpu.bandwidth_gbs * 1e9 * BANDWIDTH_EFFICIENCY
    element = 2 if precision in _HALF else 4
    step = compute = 0.0
    for op in cost.ops:
        arithmetic = batch * op.flops / flops_per_s
        memory = (batch * op.elements + op.weights) * element / bytes_per_s
        seconds = max(arithmetic, memory, MIN_OP_SECONDS)
        step += seconds
        compute += seconds if arithmetic >= max(memory, MIN_OP_SECONDS) else 0.0
    step *= BACKWARD_FACTOR
    source = (
        f"roofline ({rate_name} {peak:g} TFLOP/s x {COMPUTE_EFFICIENCY:g}, "
        f"{gpu.bandwidth_gbs:,.0f} GB/s x {BANDWIDTH_EFFICIENCY:g}, "
        f">= {MIN_OP_SECONDS * 1e6:g} us per op)"
    )
    return Rate(batch / step, compute * BACKWARD_FACTOR / step, source)
