"""Parameter and FLOP counts, as the paper counts them and in full.

The paper's "Param (M)" columns count the weights and biases of convolutions and fully
connected layers only: BatchNorm's affine parameters are left out (that is what makes
DenseNet-121 7.9M rather than torchvision's 7.98M). Shared Parameters count once.
"""

from __future__ import annotations

from functools import cache

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from rkrepro.models.build import build_model
from rkrepro.spec import ModelSpec

_PAPER_LAYERS = (nn.Conv2d, nn.Linear)


def count_params(model: nn.Module) -> tuple[int, int]:
    """(paper count: conv + linear weights and biases, all trainable parameters), each
    distinct Parameter counted once however many modules use it."""
    seen: set[int] = set()
    paper = 0
    for module in model.modules():
        if isinstance(module, _PAPER_LAYERS):
            for p in module.parameters(recurse=False):
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    paper += p.numel()
    # parameters() already skips repeated Parameter objects.
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return paper, total


@cache
def spec_param_counts(spec: ModelSpec) -> tuple[int, int]:
    """:func:`count_params` of ``spec``'s model, built on the meta device (no memory, fast)."""
    with torch.device("meta"):
        model = build_model(spec)
    return count_params(model)


def input_size_for(spec: ModelSpec) -> tuple[int, int, int]:
    """(C, H, W) of one input image: 224x224 crops on ImageNet, 32x32 on CIFAR."""
    return (3, 224, 224) if spec.dataset == "imagenet" else (3, 32, 32)


def count_flops(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """Forward FLOPs for one image (a multiply-add counts 2), as torch's FlopCounterMode counts
    them (convolutions and matmuls). The model runs in eval mode on its own device, which may
    be ``meta``; its training mode is restored afterwards."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(torch.zeros(1, *input_size, device=device))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
