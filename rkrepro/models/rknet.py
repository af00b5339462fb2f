"""RKNets: each period of a DenseNet or ResNet becomes an s-stage Runge-Kutta method taking r
time-steps (Sections 3.1 and 3.2 of the paper).

**From a DenseNet (3.1).** A period keeps a state y of m*k channels. One time-step is a dense
block of s*m growth layers (of the original layer type) grown from y_n; the i-th group of m
consecutive growth outputs, concatenated (m*k channels), plays h*b_i*k_i, and an explicit
summation closes the step: y_{n+1} = y_n + sum_i group_i. Transitions map m_p*k to m_{p+1}*k.

**From a ResNet (3.2).** Blocks with equal input and output dims are period blocks; the stem
and the first (stride-2, widening) block of stages 2 and 3 stay as they are. In a period
block the ReLU after the addition moves to the end of the residual mapping,
F(y) = ReLU(BN(conv(ReLU(BN(conv(y)))))). The paper does not say how several stages are
wired; we read them as follows: stage i of a time-step is its own mapping F_i (two convs,
the parameters of one ResNet block), k_1 = F_1(y_n), k_i = F_i(y_n + sum_{j<i} k_j), and
y_{n+1} = y_n + sum_i k_i. The Runge-Kutta coefficients (a_ij = b_j, h) are left to each
mapping's last BN scale, which learns them. An unshared s x r period therefore has exactly
the parameters of the s*r blocks it replaces, for any s*r equal to the block count, which
matches the paper's Table 4 caption for the one-stage variants.

**Sharing** (``share=True``, "with share" in the tables): the convolution weights of a
period are the same ``nn.Parameter`` objects in all r time-steps, while every time-step
keeps its own BatchNorm layers (Section 4: "only the weights and biases of convolutions are
shared across time-steps ... batch normalizations are not shared").
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

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
    """F(y) = ReLU(BN(conv(ReLU(BN(conv(y)))))): a period block with its ReLU moved inside."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = conv3x3(channels, channels)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, y: Tensor) -> Tensor:
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(y))))))


class ResNetRKStep(nn.Module):
    """k_1 = F_1(y), k_i = F_i(y + sum_{j<i} k_j); returns y + sum_i k_i."""

    def __init__(self, stages: int, channels: int) -> None:
        super().__init__()
        self.mappings = nn.ModuleList(ResidualMapping(channels) for _ in range(stages))

    def forward(self, y: Tensor) -> Tensor:
        total = None
        for mapping in self.mappings:
            k = mapping(y if total is None else y + total)
            total = k if total is None else total + k
        assert total is not None
        return y + total


class ResNetRKNet(nn.Module):
    """stem - period - (transition block - period) x 2 - pool - Linear (CIFAR, 16/32/64)."""

    def __init__(
        self,
        periods: Sequence[tuple[int, int]],
        num_classes: int = 10,
        share: bool = False,
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
            self.periods.append(Period([ResNetRKStep(s, width) for _ in range(r)]))
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
