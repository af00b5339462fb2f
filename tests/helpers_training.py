"""Tiny trainers for the training tests: a depth-10 DenseNet-BC on random CIFAR-format images,
plain or taking the CUDA step's code path on the CPU (``emulate_cuda``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import helpers_cifar as h
import torch

from rkrepro.data import cifar
from rkrepro.models import build_model
from rkrepro.planning.fast_path import FastPath
from rkrepro.spec import ModelSpec, Protocol
from rkrepro.training import state
from rkrepro.training.checkpoints import Checkpoints
from rkrepro.training.loop import Trainer
from rkrepro.training.setup import Execution

CPU = torch.device("cpu")
TINY = ModelSpec(family="densenet-bc", dataset="cifar10", depth=10, growth_rate=4)
TINY_RK = replace(TINY, periods=((1, 2), (1, 1), (1, 1)), m=(2, 2, 2))
PAPER = Protocol(
    dataset="cifar10",
    augmentation="pad 4 + crop + flip",
    batch_size=64,
    epochs=300,
    lr=0.1,
    momentum=0.9,
    weight_decay=1e-4,
    lr_milestones=(150, 225),
)


def split(n: int, seed: int) -> cifar.ArraySplit:
    x, y = h.random_images(n, 10, seed)
    return cifar.ArraySplit(
        torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y)
    )


def tiny_trainer(
    tmp: Path, protocol: Protocol, spec: ModelSpec = TINY, fast: FastPath | None = None, **kw
) -> Trainer:
    state.seed_everything(0)
    model = build_model(spec)
    execution = Execution.local(CPU, fast=fast)
    tr, te = cifar.cifar_batches(
        split(80, 0), split(24, 1), protocol.batch_size, CPU, 0, None, execution.channels_last
    )
    return Trainer(model, tr, te, protocol, execution, Checkpoints(tmp), **kw)


def emulated_trainer(
    tmp: Path, fast: FastPath, n: int = 88, epochs: int = 2, precision: str = "fp32"
) -> Trainer:
    """A CPU trainer that takes the CUDA code path (``emulate_cuda``): fused SGD, tensor lr,
    the graph body called eagerly; 88 images at batch 16 leave an 8-image tail batch."""
    protocol = replace(PAPER, epochs=epochs, lr_milestones=(1,), batch_size=16)
    state.seed_everything(0)
    model = build_model(TINY)
    execution = Execution.local(CPU, precision, fast, emulate_cuda=True)
    tr, te = cifar.cifar_batches(
        split(n, 0), split(24, 1), 16, CPU, 0, None, execution.channels_last
    )
    return Trainer(model, tr, te, protocol, execution, Checkpoints(tmp))


def step_losses(trainer: Trainer, epoch: int) -> list[float]:
    """Each step's loss, read from the device-side running sum as the step leaves it."""
    losses, before = [], 0.0
    for x, y in trainer.train_batches.batches(epoch):
        trainer.train_step(x, y)
        now = float(trainer.running_sums[0])
        losses.append((now - before) / y.numel())
        before = now
    return losses
