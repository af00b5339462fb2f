"""Plain, torch-free descriptions of what to build and how to train it.

These dataclasses are the contract between the tables (``paper``), the model
zoo (``models``) and training (``train``): the CLI can resolve and print them
without importing torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

Family = Literal["densenet", "densenet-bc", "resnet"]
Dataset = Literal["cifar10", "cifar100", "imagenet"]
# How the s stages of a ResNet-derived RKNet time-step are wired (the ``resnet_stages``
# reading; see rkrepro.models.rknet): Eq. (7)'s G_i(h, y_n, k_1..k_{i-1}) with its inputs
# concatenated, as a learned linear combination, or today's successive-Euler wiring.
ResNetStages = Literal["concat", "lincomb", "euler"]
RESNET_STAGES: tuple[str, ...] = ("concat", "lincomb", "euler")
DEFAULT_RESNET_STAGES = "concat"

NUM_CLASSES: dict[str, int] = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}

# Dense blocks of the ImageNet DenseNets of Huang et al. (torchvision's configs).
IMAGENET_DENSENET_BLOCKS: dict[int, tuple[int, ...]] = {
    121: (6, 12, 24, 16),
    169: (6, 12, 32, 32),
    201: (6, 12, 48, 32),
    161: (6, 12, 36, 24),
}


def variant_name(periods: tuple[tuple[int, int], ...], times: str = "x") -> str:
    """``((1, 8), (1, 2))`` -> ``RKNet-1x8_1x2`` (``times="×"``: the paper's spelling)."""
    return "RKNet-" + "_".join(f"{s}{times}{r}" for s, r in periods)


@dataclass(frozen=True)
class ModelSpec:
    """One model of a table: an original network, or one RKNet variant of it.

    ``periods`` is ``None`` for the original network; for an RKNet it holds one
    ``(s, r)`` pair per period (``s`` Runge-Kutta stages, ``r`` time-steps).
    ``m`` holds, per period, the state width in units of the growth rate
    (``m[0]`` is m0 = 2, then the m1, m2, m3 columns); DenseNet variants only.
    """

    family: Family
    dataset: Dataset
    depth: int
    growth_rate: int | None = None
    periods: tuple[tuple[int, int], ...] | None = None
    m: tuple[int, ...] | None = None
    share: bool = False
    resnet_stages: ResNetStages = DEFAULT_RESNET_STAGES  # type: ignore[assignment]

    @property
    def multi_stage_resnet(self) -> bool:
        """A ResNet variant with an s > 1 period: the only networks ``resnet_stages`` changes
        (with s = 1 every wiring is y + F(y), the paper's one-stage variant)."""
        return (
            self.family == "resnet"
            and self.periods is not None
            and any(s > 1 for s, _ in self.periods)
        )

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES[self.dataset]

    @property
    def is_rknet(self) -> bool:
        return self.periods is not None

    @property
    def bottleneck(self) -> bool:
        """DenseNet-BC and every ImageNet DenseNet use bottleneck + compression 0.5."""
        return self.family == "densenet-bc" or (
            self.family == "densenet" and self.dataset == "imagenet"
        )

    @property
    def name(self) -> str:
        """The printed model name with ASCII ``x`` (``RKNet-1x8_1x2_1x2``) or ``original``."""
        if self.periods is None:
            return "original"
        return variant_name(self.periods)


@dataclass(frozen=True)
class LrSchedule:
    """The learning-rate rule of the Torch code the paper trained with, for any run length.

    ``drop_at`` (liuzhuang13/DenseNet ``train.lua``, CIFAR): with 1-based epochs,
    ``decay = epoch >= 0.75*nEpochs and 2 or epoch >= 0.5*nEpochs and 1 or 0``, i.e. one
    drop once ``epoch >= f * nEpochs`` for each fraction f. For 300 epochs the 150th already
    trains at 0.01: 149 epochs at 0.1, 75 at 0.01, 76 at 0.001. A shortened run applies the
    same rule to its own nEpochs, as the Torch code would.

    ``drop_every`` (ImageNet): ``decay = floor((epoch - 1) / 30)``: epochs 1-30 at 0.1, 31-60
    at 0.01, ... A shortened run keeps the period's fraction of the paper's length (the Torch
    code's fixed 30 would mean no drop at all in a 9-epoch run).
    """

    drop_at: tuple[float, ...] = ()
    drop_every: int | None = None

    def milestones(self, epochs: int, paper_epochs: int) -> tuple[int, ...]:
        """0-based ``MultiStepLR`` milestones: the number of epochs completed before each drop
        (0 is allowed: a 1-epoch run of the ``drop_at`` rule trains at lr/100 from the start,
        as ``train.lua`` does with nEpochs = 1)."""
        if self.drop_every is not None:
            period = self.drop_every
            if epochs != paper_epochs:
                period = max(1, math.floor(Fraction(self.drop_every * epochs, paper_epochs) + 0.5))
            return tuple(range(period, epochs, period))
        # The first 1-based epoch e with e >= f * N is ceil(f * N); it is 0-based epoch e - 1.
        return tuple(min(epochs, math.ceil(Fraction(str(f)) * epochs)) - 1 for f in self.drop_at)

    def describe(self) -> str:
        if self.drop_every is not None:
            return f"decay = floor((epoch - 1) / {self.drop_every}) (1-based epochs)"
        parts = " and ".join(f"epoch >= {f:g} * nEpochs" for f in self.drop_at)
        return f"one drop once {parts} (1-based epochs)"


def scaled_milestones(
    milestones: tuple[int, ...], paper_epochs: int, epochs: int
) -> tuple[int, ...]:
    """Explicit milestones of a shortened run: the same fractions of training, rounded half up
    (the rule for tables that give ``lr_milestones`` without an ``lr_schedule``)."""
    if epochs == paper_epochs:
        return tuple(milestones)
    scaled = (max(1, int(m * epochs / paper_epochs + 0.5)) for m in milestones)
    return tuple(sorted({m for m in scaled if m <= epochs}))


@dataclass(frozen=True)
class Protocol:
    """A table's training protocol (Section 4 of the paper).

    ``lr_milestones`` are ``MultiStepLR`` milestones (0-based: epochs completed before each
    drop) for ``epochs``; ``lr_schedule``, when the table gives one, is the rule they come
    from, so a shortened run gets the Torch code's milestones (:meth:`milestones_for`).
    """

    dataset: Dataset
    augmentation: str
    batch_size: int
    epochs: int
    lr: float
    momentum: float
    weight_decay: float
    lr_milestones: tuple[int, ...]
    lr_gamma: float = 0.1
    nesterov: bool = True
    extra: dict[str, object] = field(default_factory=dict, compare=False, hash=False)
    lr_schedule: LrSchedule | None = None

    def milestones_for(self, epochs: int) -> tuple[int, ...]:
        """The milestones of a run of ``epochs`` epochs under this (paper-length) protocol."""
        if self.lr_schedule is not None:
            return self.lr_schedule.milestones(epochs, self.epochs)
        return scaled_milestones(self.lr_milestones, self.epochs, epochs)
