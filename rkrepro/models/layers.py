"""Pieces shared by every network: initialisation, stems, classifier heads.

Initialisation follows the Torch code the paper trained with (fb.resnet.torch, and
liuzhuang13/DenseNet built on it): conv weights ~ N(0, sqrt(2 / (kh * kw * out_channels))),
i.e. Kaiming normal with fan-out; BatchNorm weight 1, bias 0; Linear bias 0. Convolutions
have no bias.
"""

from __future__ import annotations

from torch import Tensor, nn


def init_weights(model: nn.Module) -> None:
    """Initialise ``model`` in place as fb.resnet.torch does (a no-op for meta tensors, which
    have no values: skipping keeps counting on the meta device fast)."""
    for module in model.modules():
        if any(p.is_meta for p in module.parameters(recurse=False)):
            continue
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        elif hasattr(module, "reset_coefficients"):  # learned RK coefficients (``lincomb``)
            module.reset_coefficients()


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, bias=False)


class CifarDenseStem(nn.Module):
    """One 3x3 convolution; BN-ReLU come with the first growth layer (pre-activation)."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.conv = conv3x3(3, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class ImageNetDenseStem(nn.Module):
    """conv7x7/2 - BN - ReLU - maxpool3/2: (N, 3, H, W) -> (N, C, H/4, W/4)."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, out_channels, 7, stride=2, padding=3, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.relu(self.norm(self.conv(x))))


class ClassifierHead(nn.Module):
    """[BN - ReLU -] global average pool - Linear: (N, C, H, W) -> (N, classes).

    DenseNets are pre-activation, so their last features still need BN-ReLU; ResNets end
    with a ReLU already and use ``pre_activation=False``.
    """

    def __init__(self, in_channels: int, num_classes: int, pre_activation: bool = True) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels) if pre_activation else nn.Identity()
        self.relu = nn.ReLU(inplace=True) if pre_activation else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.relu(self.norm(x))).flatten(1))
