"""Torch-free arithmetic of the architectures: block sizes, period widths, validation.

Both the model builders (which need torch) and :mod:`rkrepro.models.summary` (which must not)
derive every shape from these functions, so a printed summary can never disagree with the
module that is actually built.
"""

from __future__ import annotations

import math

from rkrepro.errors import RkreproError
from rkrepro.spec import IMAGENET_DENSENET_BLOCKS, ModelSpec

# Default growth rates of the ImageNet DenseNets (Huang et al., torchvision).
IMAGENET_DENSENET_GROWTH: dict[int, int] = {121: 32, 169: 32, 201: 32, 161: 48}
# Channels of the three stages of the CIFAR ResNets (He et al. 2016).
RESNET_WIDTHS: tuple[int, int, int] = (16, 32, 64)
# Bottleneck width of a DenseNet-BC growth layer, in units of the growth rate.
BN_SIZE = 4
# m0: the stem of every DenseNet produces 2k channels.
STEM_M = 2


class SpecError(RkreproError, ValueError):
    """A :class:`ModelSpec` that describes no buildable network (wrong depth, s*r, m, ...)."""


def growth_rate(spec: ModelSpec) -> int:
    """The growth rate k; ImageNet DenseNets default to torchvision's when ``spec`` gives none."""
    if spec.family == "resnet":
        raise SpecError("ResNets have no growth rate")
    if spec.growth_rate is not None:
        if spec.growth_rate < 1:
            raise SpecError(f"growth rate must be positive, got {spec.growth_rate}")
        return spec.growth_rate
    if spec.dataset == "imagenet" and spec.depth in IMAGENET_DENSENET_GROWTH:
        return IMAGENET_DENSENET_GROWTH[spec.depth]
    raise SpecError(f"a CIFAR {spec.family} needs a growth rate (k)")


def densenet_block_layers(spec: ModelSpec) -> tuple[int, ...]:
    """Growth layers per dense block of the original DenseNet."""
    if spec.family == "resnet":
        raise SpecError("not a DenseNet")
    if spec.dataset == "imagenet":
        if spec.family != "densenet":
            raise SpecError("ImageNet DenseNets are named 'densenet' (they are BC already)")
        if spec.depth not in IMAGENET_DENSENET_BLOCKS:
            known = ", ".join(str(d) for d in IMAGENET_DENSENET_BLOCKS)
            raise SpecError(f"no ImageNet DenseNet of depth {spec.depth} (known: {known})")
        return IMAGENET_DENSENET_BLOCKS[spec.depth]
    # CIFAR: depth = 3 blocks * n layers (* 2 convs with bottleneck) + first conv + 2 transitions
    # + classifier.
    if (spec.depth - 4) % 3 != 0 or spec.depth < 7:
        raise SpecError(f"CIFAR DenseNet depth must be 3n+4 with n >= 1, got {spec.depth}")
    n = (spec.depth - 4) // 3
    if spec.bottleneck:
        if n % 2 != 0:
            raise SpecError(f"DenseNet-BC depth must be 6n+4, got {spec.depth}")
        n //= 2
    return (n, n, n)


def densenet_transition_widths(spec: ModelSpec) -> tuple[int, ...]:
    """Output channels of the original DenseNet's transitions (compression 0.5 for BC)."""
    k = growth_rate(spec)
    channels = STEM_M * k
    widths = []
    for n in densenet_block_layers(spec)[:-1]:
        channels += n * k
        channels = channels // 2 if spec.bottleneck else channels
        widths.append(channels)
    return tuple(widths)


def derive_m(spec: ModelSpec) -> tuple[int, ...]:
    """The paper's m per period (Section 3.1): original transition width // k, m0 = 2."""
    k = growth_rate(spec)
    return (STEM_M, *(w // k for w in densenet_transition_widths(spec)))


def rknet_m(spec: ModelSpec) -> tuple[int, ...]:
    """``spec.m`` checked against ``spec.periods``, or the paper's m when ``spec.m`` is None."""
    assert spec.periods is not None
    m = spec.m if spec.m is not None else derive_m(spec)
    if len(m) != len(spec.periods):
        raise SpecError(f"m has {len(m)} entries but there are {len(spec.periods)} periods")
    if any(mi < 1 for mi in m):
        raise SpecError(f"every m must be positive, got {m}")
    return tuple(m)


def check_periods(spec: ModelSpec) -> tuple[tuple[int, int], ...]:
    """Every period needs s >= 1 stages and r >= 1 time-steps."""
    assert spec.periods is not None
    if not spec.periods:
        raise SpecError("an RKNet needs at least one period")
    for p, (s, r) in enumerate(spec.periods, start=1):
        if s < 1 or r < 1:
            raise SpecError(f"period {p}: s and r must be >= 1, got {s}x{r}")
    return spec.periods


def resnet_blocks_per_stage(depth: int) -> int:
    """n of a CIFAR ResNet of depth 6n+2."""
    if (depth - 2) % 6 != 0 or depth < 8:
        raise SpecError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
    return (depth - 2) // 6


def resnet_period_blocks(depth: int) -> tuple[int, int, int]:
    """Blocks with equal input and output dims per stage: the first block of stages 2 and 3
    changes width and resolution, so it is a transition, not a period block (Section 3.2)."""
    n = resnet_blocks_per_stage(depth)
    return (n, n - 1, n - 1)


def check_resnet_periods(spec: ModelSpec) -> tuple[tuple[int, int], ...]:
    """An RKNet from a ResNet must use each period block exactly once: s*r == block count."""
    periods = check_periods(spec)
    blocks = resnet_period_blocks(spec.depth)
    if len(periods) != len(blocks):
        raise SpecError(
            f"ResNet-{spec.depth} has {len(blocks)} periods, the spec gives {len(periods)}"
        )
    for p, ((s, r), b) in enumerate(zip(periods, blocks, strict=True), start=1):
        if s * r != b:
            raise SpecError(
                f"ResNet-{spec.depth} period {p} has {b} period blocks but s*r = {s}*{r} = {s * r}"
            )
    return periods


def validate(spec: ModelSpec) -> None:
    """Raise :class:`SpecError` unless ``spec`` describes a buildable network."""
    if spec.family == "resnet":
        if spec.dataset == "imagenet":
            raise SpecError("only CIFAR ResNets are part of the paper")
        resnet_blocks_per_stage(spec.depth)
        if spec.periods is not None:
            check_resnet_periods(spec)
        return
    densenet_block_layers(spec)
    growth_rate(spec)
    if spec.periods is not None:
        check_periods(spec)
        rknet_m(spec)


def one_step_stages(spec: ModelSpec) -> tuple[int, ...]:
    """The s of the paper's one-time-step variant: ceil(original layers / m) per period."""
    m = derive_m(spec)
    return tuple(math.ceil(n / mi) for n, mi in zip(densenet_block_layers(spec), m, strict=True))
