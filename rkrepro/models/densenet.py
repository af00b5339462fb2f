"""DenseNets of Huang et al.: the CIFAR ones (with or without bottleneck/compression) and the
ImageNet DenseNet-121/169/201/161, laid out as liuzhuang13/DenseNet, which the paper trained.

A growth layer takes the *list* of feature maps before it rather than their concatenation,
so that the memory-efficient variant (Pleiss et al. 2017) can recompute the concatenation in
the backward pass instead of storing it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from rkrepro.models.arch import BN_SIZE
from rkrepro.models.layers import (
    CifarDenseStem,
    ClassifierHead,
    ImageNetDenseStem,
    conv1x1,
    conv3x3,
    init_weights,
)


class DenseLayer(nn.Module):
    """One growth layer: (N, c, H, W) features in, (N, k, H, W) new features out.

    Plain: BN-ReLU-conv3x3 (c -> k). Bottleneck (BC): BN-ReLU-conv1x1 (c -> 4k)-BN-ReLU-conv3x3.
    With ``memory_efficient`` the concatenation and first BN-ReLU-conv are checkpointed during
    training; their recomputation in the backward pass uses batch statistics without touching
    the running statistics, so those are updated exactly once per forward, as without it.
    """

    def __init__(
        self,
        in_channels: int,
        growth_rate: int,
        bottleneck: bool,
        memory_efficient: bool = False,
    ) -> None:
        super().__init__()
        self.memory_efficient = memory_efficient
        self.bottleneck = bottleneck
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        if bottleneck:
            self.conv1 = conv1x1(in_channels, BN_SIZE * growth_rate)
            self.norm2 = nn.BatchNorm2d(BN_SIZE * growth_rate)
            self.relu2 = nn.ReLU(inplace=True)
            self.conv2 = conv3x3(BN_SIZE * growth_rate, growth_rate)
        else:
            self.conv1 = conv3x3(in_channels, growth_rate)

    def _first_unit(self, inputs: Sequence[Tensor], update_stats: bool = True) -> Tensor:
        """cat - BN - ReLU - conv1; ``update_stats=False`` is for recomputation only."""
        x = torch.cat(list(inputs), 1)
        norm = self.norm1
        if update_stats or not (norm.training and norm.track_running_stats):
            x = norm(x)
        else:
            # Throwaway copies of the running statistics: the recomputed graph must save the
            # same tensors as the original one, but the real buffers were updated already.
            mean, var = norm.running_mean, norm.running_var
            assert mean is not None and var is not None
            x = F.batch_norm(
                x, mean.clone(), var.clone(), norm.weight, norm.bias, True, 0.0, norm.eps
            )
        return self.conv1(self.relu1(x))

    def _checkpointed_first_unit(self, inputs: Sequence[Tensor]) -> Tensor:
        calls = 0

        def run(*tensors: Tensor) -> Tensor:
            nonlocal calls
            calls += 1
            return self._first_unit(tensors, update_stats=calls == 1)

        return checkpoint(run, *inputs, use_reentrant=False)

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        if self.memory_efficient and self.training and any(t.requires_grad for t in inputs):
            out = self._checkpointed_first_unit(inputs)
        else:
            out = self._first_unit(inputs)
        if self.bottleneck:
            out = self.conv2(self.relu2(self.norm2(out)))
        return out


class DenseBlock(nn.Module):
    """``num_layers`` growth layers, layer j seeing in_channels + j*k channels."""

    def __init__(
        self,
        num_layers: int,
        in_channels: int,
        growth_rate: int,
        bottleneck: bool,
        memory_efficient: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = in_channels + num_layers * growth_rate
        self.layers = nn.ModuleList(
            DenseLayer(in_channels + j * growth_rate, growth_rate, bottleneck, memory_efficient)
            for j in range(num_layers)
        )

    def grow(self, x: Tensor) -> list[Tensor]:
        """The new feature maps only, one (N, k, H, W) tensor per layer."""
        features = [x]
        for layer in self.layers:
            features.append(layer(features))
        return features[1:]

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, *self.grow(x)], 1)


class Transition(nn.Module):
    """BN-ReLU-conv1x1-avgpool2: (N, c_in, H, W) -> (N, c_out, H/2, W/2)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv = conv1x1(in_channels, out_channels)
        self.pool = nn.AvgPool2d(2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.conv(self.relu(self.norm(x))))


class DenseNet(nn.Module):
    """stem - (dense block - transition)* - dense block - BN-ReLU-pool-Linear.

    ``imagenet_stem`` selects conv7x7/2-BN-ReLU-maxpool over the CIFAR conv3x3. The stem gives
    2k channels; transitions keep the width, or halve it (floor) with ``compression``.
    """

    def __init__(
        self,
        block_layers: Sequence[int],
        growth_rate: int,
        num_classes: int,
        bottleneck: bool,
        compression: bool,
        imagenet_stem: bool = False,
        memory_efficient: bool = False,
    ) -> None:
        super().__init__()
        channels = 2 * growth_rate
        self.stem = ImageNetDenseStem(channels) if imagenet_stem else CifarDenseStem(channels)
        self.blocks = nn.ModuleList()
        self.transitions = nn.ModuleList()
        for i, n in enumerate(block_layers):
            block = DenseBlock(n, channels, growth_rate, bottleneck, memory_efficient)
            self.blocks.append(block)
            channels = block.out_channels
            if i < len(block_layers) - 1:
                out = channels // 2 if compression else channels
                self.transitions.append(Transition(channels, out))
                channels = out
        self.head = ClassifierHead(channels, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i < len(self.transitions):
                x = self.transitions[i](x)
        return self.head(x)


# torchvision name -> our name, for its DenseNet-121/169/201/161.
_TORCHVISION_KEYS: tuple[tuple[str, str], ...] = (
    (r"^features\.conv0\.", "stem.conv."),
    (r"^features\.norm0\.", "stem.norm."),
    (r"^features\.norm5\.", "head.norm."),
    (r"^classifier\.", "head.fc."),
)
_TORCHVISION_LAYER = re.compile(r"^features\.denseblock(\d+)\.denselayer(\d+)\.(.*)$")
_TORCHVISION_TRANSITION = re.compile(r"^features\.transition(\d+)\.(.*)$")


def torchvision_key(key: str) -> str:
    """Our state_dict key for a torchvision DenseNet key (1-based block/layer -> 0-based)."""
    if match := _TORCHVISION_LAYER.match(key):
        block, layer, rest = match.groups()
        return f"blocks.{int(block) - 1}.layers.{int(layer) - 1}.{rest}"
    if match := _TORCHVISION_TRANSITION.match(key):
        index, rest = match.groups()
        return f"transitions.{int(index) - 1}.{rest}"
    for pattern, replacement in _TORCHVISION_KEYS:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key)
    raise KeyError(f"unexpected torchvision DenseNet key: {key}")


def load_torchvision_state_dict(model: DenseNet, state_dict: Mapping[str, Tensor]) -> None:
    """Load a torchvision DenseNet's state_dict into our ImageNet DenseNet (strict)."""
    model.load_state_dict({torchvision_key(k): v for k, v in state_dict.items()}, strict=True)
