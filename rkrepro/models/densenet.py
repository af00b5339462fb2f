"""DenseNets of Huang et al.: the CIFAR ones (with or without bottleneck/compression) and the
ImageNet DenseNet-121/169/201/161, laid out as liuzhuang13/DenseNet, which the paper trained.

A growth layer takes the *list* of feature maps before it rather than their concatenation,
so that the memory-efficient variant (Pleiss et al. 2017) can recompute the concatenation in
the backward pass instead of storing it. Or it takes one tensor that already is the
concatenation: with ``feature_buffer`` a dense block writes every feature map once into a
preallocated (N, C_out, H, W) buffer and hands each layer a channel-prefix view of it, so the
O(L^2) concatenations, and the copies of them autograd keeps for BatchNorm's backward, are
gone. The views are strided and the CPU kernels are slower on strided input than the
concatenation costs (``bench/throughput.py`` measures both), so it is a memory option, off by
default. BatchNorm reduces a strided
view in another order than a contiguous tensor: results agree with the concatenation path to
float rounding (~1e-6 relative, like the checkpointed path), not bit for bit.
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


class _BufferWindow(torch.autograd.Function):
    """A channel window of a dense block's feature buffer, differentiable w.r.t. the features.

    Forward returns a view of ``buffer`` (which already holds the values of ``features``)
    instead of concatenating them; backward splits the gradient exactly as ``torch.cat``'s
    backward does (the values are the concatenation's, without the copy).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        buffer: Tensor,
        start: int,
        widths: tuple[int, ...],
        *features: Tensor,
    ) -> Tensor:
        ctx.widths = widths  # type: ignore[attr-defined]
        return buffer.narrow(1, start, sum(widths))

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: Tensor
    ) -> tuple[Tensor | None, ...]:
        return (None, None, None, *grad.split(ctx.widths, 1))  # type: ignore[attr-defined]


class FeatureBuffer:
    """Preallocated storage for the feature maps of one dense block in one forward pass.

    Writes go through ``.data`` (its own version counter): autograd has saved views of the
    already-written channels, and a write to channels no view covers must not invalidate them.
    """

    def __init__(self, x: Tensor, channels: int) -> None:
        n, c, h, w = x.shape
        fmt = (
            torch.channels_last
            if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and c > 1
            else torch.contiguous_format
        )
        self.buffer = torch.empty(
            (n, channels, h, w), dtype=x.dtype, device=x.device, memory_format=fmt
        )
        self._raw = self.buffer.data
        self.features: list[Tensor] = []
        self.widths: list[int] = []
        self.append(x)

    @property
    def channels(self) -> int:
        return sum(self.widths)

    def append(self, feature: Tensor) -> None:
        if feature.dtype != self.buffer.dtype:
            raise TypeError(f"feature dtype {feature.dtype} != buffer dtype {self.buffer.dtype}")
        c = self.channels
        self._raw.narrow(1, c, feature.shape[1]).copy_(feature.detach())
        self.features.append(feature)
        self.widths.append(feature.shape[1])

    def window(self, first: int = 0, last: int | None = None) -> Tensor:
        """The concatenation of features ``first..last-1`` (all by default), as a view."""
        last = len(self.features) if last is None else last
        start = sum(self.widths[:first])
        widths = tuple(self.widths[first:last])
        if not torch.is_grad_enabled() or not any(
            f.requires_grad for f in self.features[first:last]
        ):
            return self.buffer.narrow(1, start, sum(widths))
        return _BufferWindow.apply(self.buffer, start, widths, *self.features[first:last])


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

    def _first_unit(self, inputs: Tensor | Sequence[Tensor], update_stats: bool = True) -> Tensor:
        """cat - BN - ReLU - conv1; ``update_stats=False`` is for recomputation only. A single
        tensor is the concatenation already (a feature-buffer window)."""
        if isinstance(inputs, Tensor):
            x = inputs
        else:  # one tensor needs no copy: a feature-buffer window, or a block's first input
            x = inputs[0] if len(inputs) == 1 else torch.cat(list(inputs), 1)
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

        # No RNG in these layers: skipping the RNG stash keeps the step CUDA-graph capturable.
        return checkpoint(run, *inputs, use_reentrant=False, preserve_rng_state=False)

    def forward(self, inputs: Tensor | Sequence[Tensor]) -> Tensor:
        if isinstance(inputs, Tensor):
            inputs = (inputs,)
        if self.memory_efficient and self.training and any(t.requires_grad for t in inputs):
            out = self._checkpointed_first_unit(inputs)
        else:
            out = self._first_unit(inputs)
        if self.bottleneck:
            out = self.conv2(self.relu2(self.norm2(out)))
        return out


class DenseBlock(nn.Module):
    """``num_layers`` growth layers, layer j seeing in_channels + j*k channels.

    ``feature_buffer`` writes the feature maps into one preallocated buffer instead of
    concatenating them again for every layer (less memory; same results to float rounding).
    """

    def __init__(
        self,
        num_layers: int,
        in_channels: int,
        growth_rate: int,
        bottleneck: bool,
        memory_efficient: bool = False,
        feature_buffer: bool = False,
    ) -> None:
        super().__init__()
        self.feature_buffer = feature_buffer
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

    def grow_into_buffer(self, x: Tensor) -> FeatureBuffer:
        """Run every layer, each reading a prefix view of the buffer it then appends to."""
        store = FeatureBuffer(x, self.out_channels)
        for layer in self.layers:
            store.append(layer(store.window()))
        return store

    def _use_buffer(self, x: Tensor) -> bool:
        if not self.feature_buffer:
            return False
        # Under autocast the growth outputs come from convolutions, in the autocast dtype.
        device = x.device.type
        if device == "meta":  # autocast has no meta backend
            return True
        return not torch.is_autocast_enabled(device) or x.dtype == torch.get_autocast_dtype(device)

    def new_features(self, x: Tensor) -> Tensor:
        """cat(grow(x)): the (N, out - in, H, W) features this block adds."""
        if self._use_buffer(x):
            return self.grow_into_buffer(x).window(first=1)
        return torch.cat(self.grow(x), 1)

    def forward(self, x: Tensor) -> Tensor:
        if self._use_buffer(x):
            return self.grow_into_buffer(x).window()
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
        feature_buffer: bool = False,
    ) -> None:
        super().__init__()
        channels = 2 * growth_rate
        self.stem = ImageNetDenseStem(channels) if imagenet_stem else CifarDenseStem(channels)
        self.blocks = nn.ModuleList()
        self.transitions = nn.ModuleList()
        for i, n in enumerate(block_layers):
            block = DenseBlock(
                n, channels, growth_rate, bottleneck, memory_efficient, feature_buffer
            )
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


def set_feature_buffer(model: nn.Module, enabled: bool) -> nn.Module:
    """Switch the preallocated feature buffer of every dense block of ``model``; returns it."""
    for module in model.modules():
        if isinstance(module, DenseBlock):
            module.feature_buffer = enabled
    return model
