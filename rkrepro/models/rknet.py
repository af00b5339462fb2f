"""RKNets: each period of a DenseNet or ResNet becomes an s-stage Runge-Kutta method taking r
time-steps (Sections 3.1 and 3.2 of the paper).

**From a DenseNet (3.1).** A period keeps a state y of m*k channels. One time-step is a dense
block of s*m growth layers (of the original layer type) grown from y_n; the i-th group of m
consecutive growth outputs, concatenated (m*k channels), plays h*b_i*k_i, and an explicit
summation closes the step: y_{n+1} = y_n + sum_i group_i. Transitions map m_p*k to m_{p+1}*k.

**From a ResNet (3.2).** Blocks with equal input and output dims are period blocks; the stem
and the first (stride-2, widening) block of stages 2 and 3 stay as they are. In a period
block the ReLU after the addition moves to the end of the residual mapping,
F(y) = ReLU(BN(conv(ReLU(BN(conv(y)))))). Stage i of a time-step is its own mapping F_i
(two 3x3 convs with BNs) and y_{n+1} = y_n + sum_i k_i. What F_i sees is the
``resnet_stages`` reading (:data:`rkrepro.spec.RESNET_STAGES`):

* ``concat`` (default): Eq. (7) literally, G_i(h, y_n, k_1, ..., k_{i-1}) with its inputs
  given "separately": k_i = F_i([y_n, k_1, ..., k_{i-1}]), the channel concatenation, so
  F_i's first conv has i*C inputs (second C -> C). This is Section 3's contrast with "as a
  linear combination", the DenseNet analogue the paper rests on, and the authors' later
  code (ZhuMai/RKCNN, ``RK_block``: stage j convolves cat(x, earlier stage outputs), the
  block returns x + sum of stages).
* ``lincomb``: the other reading of Section 3: k_i = F_i(y_n + sum_{j<i} a_ij k_j), y_{n+1} =
  y_n + sum_i b_i k_i with learnable scalars ("all the coefficients ... will be learned"),
  initialised to 1 (so training starts from the ``euler`` network).
* ``euler``: k_i = F_i(y_n + sum_{j<i} k_j). y_n + k_1 is the state after one Euler step,
  and so on: an s x r period is exactly s*r Euler steps (the same function class as the
  1 x s*r variant). Kept for runs trained with it before ``concat`` became the default.

With s = 1 all three are y + F(y) (no coefficients), so one-stage variants have exactly the
parameters of the blocks they replace, as Table 4's caption says; multi-stage ``concat``
periods have more (ResNet-20's RKNet-3x1_2x1_2x1: 321,338). The Runge-Kutta h and the
``concat``/``euler`` coefficients are left to the last BN scale of each mapping.

**Sharing** (``share=True``, "with share" in the tables): the convolution weights of a
period are the same ``nn.Parameter`` objects in all r time-steps, while every time-step
keeps its own BatchNorm layers (Section 4: "only the weights and biases of convolutions are
shared across time-steps ... batch normalizations are not shared").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from rkrepro.models.arch import RESNET_WIDTHS
from rkrepro.models.densenet import DenseBlock, Transition
from rkrepro.models.layers import (
    CifarDenseStem,
    ClassifierHead,
    ImageNetDenseStem,
    conv3x3,
    init_weights,
)
from rkrepro.models.resnet import BasicBlock, ResNetStem
from rkrepro.spec import DEFAULT_RESNET_STAGES, RESNET_STAGES


def share_conv_weights(steps: Sequence[nn.Module]) -> None:
    """Make every convolution of ``steps[1:]`` use the Parameters of the matching one in
    ``steps[0]`` (same objects, so same storage and one gradient); BatchNorms stay apart."""
    reference = [m for m in steps[0].modules() if isinstance(m, nn.Conv2d)]
    for step in steps[1:]:
        convs = [m for m in step.modules() if isinstance(m, nn.Conv2d)]
        if len(convs) != len(reference):
            raise ValueError("time-steps of a period must have the same structure to share")
        for conv, ref in zip(convs, reference, strict=True):
            if conv.weight.shape != ref.weight.shape:
                raise ValueError("time-steps of a period must have the same shapes to share")
            conv.weight = ref.weight
            if ref.bias is not None:
                conv.bias = ref.bias


class Period(nn.Module):
    """r time-steps applied in turn: y_0 -> y_r, with an (N, C, H, W) state of fixed shape."""

    def __init__(self, steps: Sequence[nn.Module]) -> None:
        super().__init__()
        self.shared = False
        self.steps = nn.ModuleList(steps)

    def share_weights(self) -> None:
        """Tie the convolutions of all time-steps to the first one's (call after init)."""
        share_conv_weights(self.steps)
        self.shared = True

    def forward(self, y: Tensor) -> Tensor:
        for step in self.steps:
            y = step(y)
        return y


def tie_shared_weights(model: nn.Module) -> nn.Module:
    """Re-tie the convolutions of every shared period of ``model``; returns ``model``.

    Sharing survives ``.to()``, ``deepcopy`` and ``load_state_dict``, but not
    ``to_empty()`` (it gives every module its own new Parameter): call this after it.
    """
    for module in model.modules():
        if isinstance(module, Period) and module.shared:
            module.share_weights()
    return model


# --------------------------------------------------------------------------- from DenseNets


class DenseRKStep(nn.Module):
    """One time-step y_n -> y_n + sum_i cat(growth outputs of group i), groups of m layers."""

    def __init__(
        self,
        stages: int,
        m: int,
        growth_rate: int,
        bottleneck: bool,
        memory_efficient: bool = False,
        feature_buffer: bool = False,
    ) -> None:
        super().__init__()
        self.stages = stages
        self.channels = m * growth_rate
        self.block = DenseBlock(
            stages * m, self.channels, growth_rate, bottleneck, memory_efficient, feature_buffer
        )

    def forward(self, y: Tensor) -> Tensor:
        # (N, s*m*k, H, W): the s groups hb_i k_i are consecutive runs of m*k channels.
        growth = self.block.new_features(y)
        return y + growth.unflatten(1, (self.stages, self.channels)).sum(1)


class DenseRKNet(nn.Module):
    """preprocessor (the DenseNet's stem, m0*k channels) - periods with transitions - head."""

    def __init__(
        self,
        periods: Sequence[tuple[int, int]],
        m: Sequence[int],
        growth_rate: int,
        num_classes: int,
        bottleneck: bool,
        share: bool = False,
        imagenet_stem: bool = False,
        memory_efficient: bool = False,
        feature_buffer: bool = False,
    ) -> None:
        super().__init__()
        if len(periods) != len(m):
            raise ValueError(f"{len(periods)} periods but {len(m)} widths m")
        k = growth_rate
        self.stem = ImageNetDenseStem(m[0] * k) if imagenet_stem else CifarDenseStem(m[0] * k)
        self.periods = nn.ModuleList()
        self.transitions = nn.ModuleList()
        for p, ((s, r), mp) in enumerate(zip(periods, m, strict=True)):
            steps = [
                DenseRKStep(s, mp, k, bottleneck, memory_efficient, feature_buffer)
                for _ in range(r)
            ]
            self.periods.append(Period(steps))
            if p < len(periods) - 1:
                self.transitions.append(Transition(mp * k, m[p + 1] * k))
        self.head = ClassifierHead(m[-1] * k, num_classes)
        init_weights(self)
        if share:  # after init, so the shared weights are the first step's draw
            for period in self.periods:
                period.share_weights()

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for p, period in enumerate(self.periods):
            x = period(x)
            if p < len(self.transitions):
                x = self.transitions[p](x)
        return self.head(x)


# ---------------------------------------------------------------------------- from ResNets


class ResidualMapping(nn.Module):
    """F(y) = ReLU(BN(conv(ReLU(BN(conv(y)))))): a period block with its ReLU moved inside.

    ``inputs`` is how many C-channel tensors the first conv sees concatenated (``concat``
    stage i has i). With ``memory_efficient`` the concatenation and the first conv are
    checkpointed in training, so the (N, i*C, H, W) copy is not kept for backward (no BN
    sits inside the checkpoint, so running statistics are updated once, as without it).
    """

    def __init__(self, channels: int, inputs: int = 1, memory_efficient: bool = False) -> None:
        super().__init__()
        self.inputs = inputs
        self.memory_efficient = memory_efficient
        self.conv1 = conv3x3(inputs * channels, channels)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def _first_conv(self, *features: Tensor) -> Tensor:
        return self.conv1(features[0] if len(features) == 1 else torch.cat(features, 1))

    def forward(self, *features: Tensor) -> Tensor:
        if len(features) != self.inputs:
            raise ValueError(f"mapping takes {self.inputs} inputs, got {len(features)}")
        if self.memory_efficient and len(features) > 1 and torch.is_grad_enabled():
            x = checkpoint(self._first_conv, *features, use_reentrant=False)
        else:
            x = self._first_conv(*features)
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(x)))))


class ResNetRKStep(nn.Module):
    """One s-stage time-step y -> y + sum_i b_i k_i, stages wired as ``wiring`` says (see the
    module docstring); ``b_i`` = 1 except for ``lincomb``."""

    def __init__(
        self,
        stages: int,
        channels: int,
        wiring: str = DEFAULT_RESNET_STAGES,
        memory_efficient: bool = False,
    ) -> None:
        super().__init__()
        if wiring not in RESNET_STAGES:
            raise ValueError(f"unknown ResNet stage wiring {wiring!r}; known: {RESNET_STAGES}")
        self.stages = stages
        # s = 1 is y + F(y) under every reading: no concatenation, no coefficients.
        self.wiring = wiring if stages > 1 else "euler"
        self.mappings = nn.ModuleList(
            ResidualMapping(channels, i + 1 if self.wiring == "concat" else 1, memory_efficient)
            for i in range(stages)
        )
        if self.wiring == "lincomb":
            # a[i - 1][j] = a_ij for stage i + 1 >= 2 and j < i; b[i] = b_i. Initialised to 1,
            # the Euler wiring's values.
            self.a = nn.ParameterList(nn.Parameter(torch.ones(i)) for i in range(1, stages))
            self.b = nn.Parameter(torch.ones(stages))

    def reset_coefficients(self) -> None:
        """a_ij = b_i = 1 (called by :func:`init_weights`, e.g. after ``to_empty``)."""
        if self.wiring == "lincomb":
            with torch.no_grad():
                for p in (*self.a, self.b):
                    p.fill_(1.0)

    def forward(self, y: Tensor) -> Tensor:
        ks: list[Tensor] = []
        for i, mapping in enumerate(self.mappings):
            if not ks:
                k = mapping(y)
            elif self.wiring == "concat":
                k = mapping(y, *ks)
            elif self.wiring == "lincomb":
                a = self.a[i - 1]
                k = mapping(y + sum((a[j] * ks[j] for j in range(1, i)), a[0] * ks[0]))
            else:
                k = mapping(y + sum(ks[1:], ks[0]))
            ks.append(k)
        if self.wiring == "lincomb":
            return y + sum((self.b[i] * ks[i] for i in range(1, len(ks))), self.b[0] * ks[0])
        return y + sum(ks[1:], ks[0])


class ResNetRKNet(nn.Module):
    """stem - period - (transition block - period) x 2 - pool - Linear (CIFAR, 16/32/64)."""

    def __init__(
        self,
        periods: Sequence[tuple[int, int]],
        num_classes: int = 10,
        share: bool = False,
        wiring: str = DEFAULT_RESNET_STAGES,
        memory_efficient: bool = False,
    ) -> None:
        super().__init__()
        if len(periods) != len(RESNET_WIDTHS):
            raise ValueError(f"a CIFAR ResNet has {len(RESNET_WIDTHS)} periods")
        self.stem = ResNetStem()
        self.periods = nn.ModuleList()
        self.transitions = nn.ModuleList()
        channels = RESNET_WIDTHS[0]
        for p, ((s, r), width) in enumerate(zip(periods, RESNET_WIDTHS, strict=True)):
            if p > 0:
                self.transitions.append(BasicBlock(channels, width, stride=2))
                channels = width
            steps = [ResNetRKStep(s, width, wiring, memory_efficient) for _ in range(r)]
            self.periods.append(Period(steps))
        self.head = ClassifierHead(channels, num_classes, pre_activation=False)
        init_weights(self)
        if share:
            for period in self.periods:
                period.share_weights()

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for p, period in enumerate(self.periods):
            if p > 0:
                x = self.transitions[p - 1](x)
            x = period(x)
        return self.head(x)
