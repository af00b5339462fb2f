"""The optimiser and schedule of Section 4, as the Torch code built them (training.optim)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from helpers_training import (
    PAPER,
    TINY,
    tiny_trainer,
)

from rkrepro.models import build_model
from rkrepro.training.optim import build_optimizer


def test_optimizer_is_torch7_sgd_on_all_parameters() -> None:
    model = build_model(TINY)
    opt = build_optimizer(model, PAPER)
    (group,) = opt.param_groups
    assert group["nesterov"] and group["dampening"] == 0 and group["momentum"] == 0.9
    assert group["weight_decay"] == 1e-4 and group["lr"] == 0.1
    assert {id(p) for p in group["params"]} == {id(p) for p in model.parameters()}
    bn_bias = next(m.bias for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert any(p is bn_bias for p in group["params"])  # BN and biases decay too


def test_scheduler_divides_lr_by_ten_at_milestones(tmp_path: Path) -> None:
    protocol = replace(PAPER, epochs=3, lr_milestones=(1, 2), batch_size=40)
    history = tiny_trainer(tmp_path, protocol).fit()
    assert [round(r.lr, 6) for r in history] == [0.1, 0.01, 0.001]
