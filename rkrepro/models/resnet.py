"""CIFAR ResNets of He et al. (2016) as fb.resnet.torch builds them (depth 6n+2).

Basic blocks; the shortcut of a width-changing block is "type A" (parameter-free: stride-2
subsampling plus zero channels), so ResNet-20 has 0.27M parameters, as printed.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from rkrepro.models.arch import RESNET_WIDTHS, resnet_blocks_per_stage
from rkrepro.models.layers import ClassifierHead, conv3x3, init_weights


def shortcut_a(x: Tensor, out_channels: int, stride: int) -> Tensor:
    """Identity, subsampled by ``stride`` and zero-padded (at the end) to ``out_channels``."""
    if stride != 1:
        x = x[:, :, ::stride, ::stride]
    extra = out_channels - x.shape[1]
    if extra > 0:
        x = F.pad(x, (0, 0, 0, 0, 0, extra))
    return x


class BasicBlock(nn.Module):
    """ReLU(BN(conv(ReLU(BN(conv(x))))) + shortcut(x)): the ReLU sits after the addition."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.stride = stride
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + shortcut_a(x, self.out_channels, self.stride))


class ResNetStem(nn.Module):
    """conv3x3 (3 -> 16) - BN - ReLU."""

    def __init__(self, out_channels: int = RESNET_WIDTHS[0]) -> None:
        super().__init__()
        self.conv = conv3x3(3, out_channels)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


class CifarResNet(nn.Module):
    """stem - 3 stages of n basic blocks (16/32/64 channels, stride 2 into stages 2, 3) - head."""

    def __init__(self, depth: int, num_classes: int = 10) -> None:
        super().__init__()
        n = resnet_blocks_per_stage(depth)
        self.stem = ResNetStem()
        self.stages = nn.ModuleList()
        channels = RESNET_WIDTHS[0]
        for i, width in enumerate(RESNET_WIDTHS):
            stride = 1 if i == 0 else 2
            blocks = [BasicBlock(channels, width, stride)]
            blocks += [BasicBlock(width, width) for _ in range(n - 1)]
            self.stages.append(nn.Sequential(*blocks))
            channels = width
        self.head = ClassifierHead(channels, num_classes, pre_activation=False)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(x)
