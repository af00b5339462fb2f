"""Counting parameters and FLOPs (:mod:`rkrepro.models.counting`), and the Torch code's init."""

from __future__ import annotations

import pytest
import torch
import torchvision
from helpers_models import (
    C10,
    IN,
    meta_model,
)
from torch import nn

from rkrepro.models import (
    build_model,
    count_flops,
    count_params,
    input_size_for,
)
from rkrepro.spec import ModelSpec


def test_count_params_skips_batchnorm_and_dedupes_shared() -> None:
    conv = nn.Conv2d(3, 4, 3, bias=True)  # 108 + 4
    other = nn.Conv2d(3, 4, 3, bias=False)
    other.weight = conv.weight  # shared: counted once
    model = nn.Sequential(conv, nn.BatchNorm2d(4), other, nn.Flatten(), nn.Linear(4, 2))
    assert count_params(model) == (108 + 4 + 8 + 2, 108 + 4 + 8 + 8 + 2)


def test_init_follows_fb_resnet_torch() -> None:
    torch.manual_seed(0)
    model = build_model(ModelSpec("densenet-bc", C10, 100, 12))
    conv = model.transitions[0].conv  # 216 -> 108, 1x1: fan-out 108, fan-in 216
    assert conv.weight.shape == (108, 216, 1, 1)
    assert conv.weight.std().item() == pytest.approx((2 / 108) ** 0.5, rel=0.03)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(bool((n.weight == 1).all()) and bool((n.bias == 0).all()) for n in norms)
    assert bool((model.head.fc.bias == 0).all())
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))


def test_count_flops() -> None:
    resnet = ModelSpec("resnet", C10, 20)
    assert input_size_for(resnet) == (3, 32, 32)
    flops = count_flops(meta_model(resnet), input_size_for(resnet))
    assert 80e6 < flops < 84e6  # ~41M multiply-adds
    spec = ModelSpec("densenet", IN, 121)
    assert input_size_for(spec) == (3, 224, 224)
    with torch.device("meta"):
        theirs = torchvision.models.densenet121(weights=None)
        ours = build_model(spec).train()
    flops = count_flops(ours, input_size_for(spec))
    assert flops == count_flops(theirs, (3, 224, 224))
    assert 5.6e9 < flops < 5.8e9  # 2.87 GMACs
    assert ours.training  # mode restored
