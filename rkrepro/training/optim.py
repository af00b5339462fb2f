"""The paper's optimiser and learning-rate schedule, as the Torch code built them."""

from __future__ import annotations

import torch
from torch import nn

from rkrepro.spec import Protocol


def build_optimizer(model: nn.Module, protocol: Protocol, fused: bool = False) -> torch.optim.SGD:
    """Torch7 ``optim.sgd`` on the flat parameter vector: weight decay on every parameter
    (biases and BatchNorm too, "applied to all weights and biases"), dampening 0, Nesterov.
    ``fused`` (CUDA) does the whole update in one kernel, same arithmetic."""
    return torch.optim.SGD(
        model.parameters(),
        lr=protocol.lr,
        momentum=protocol.momentum,
        dampening=0.0,
        weight_decay=protocol.weight_decay,
        nesterov=protocol.nesterov,
        fused=True if fused else None,
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, protocol: Protocol
) -> torch.optim.lr_scheduler.MultiStepLR:
    return torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=list(protocol.lr_milestones), gamma=protocol.lr_gamma
    )
