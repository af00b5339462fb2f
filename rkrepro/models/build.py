"""ModelSpec -> nn.Module: the one entry point that turns a table cell into a network."""

from __future__ import annotations

from torch import nn

from rkrepro.models import arch
from rkrepro.models.densenet import DenseNet
from rkrepro.models.resnet import CifarResNet
from rkrepro.models.rknet import DenseRKNet, ResNetRKNet
from rkrepro.spec import ModelSpec


def build_model(
    spec: ModelSpec, memory_efficient: bool = False, feature_buffer: bool = False
) -> nn.Module:
    """Build the (randomly initialised) network ``spec`` describes, on the current default device.

    ``memory_efficient`` checkpoints the concatenations of dense growth layers (Pleiss et al.
    2017) and those of ``concat``-wired ResNet stages; plain ResNets have none.
    ``feature_buffer`` lets dense blocks write their feature maps into one preallocated
    buffer instead of concatenating them per layer (less memory, same results to float rounding; see
    :mod:`rkrepro.models.densenet`). Wrap the call in ``with torch.device("meta"):`` to get
    shapes and counts without allocating weights (a model moved off meta with ``to_empty``
    needs :func:`rkrepro.models.rknet.tie_shared_weights` to share again, and initialising).
    Raises :class:`rkrepro.models.arch.SpecError` (a ``ValueError``) for unbuildable specs.
    """
    arch.validate(spec)
    if spec.family == "resnet":
        if spec.periods is None:
            return CifarResNet(spec.depth, spec.num_classes)
        return ResNetRKNet(
            spec.periods,
            spec.num_classes,
            share=spec.share,
            wiring=spec.resnet_stages,
            memory_efficient=memory_efficient,
        )

    k = arch.growth_rate(spec)
    imagenet = spec.dataset == "imagenet"
    if spec.periods is None:
        return DenseNet(
            arch.densenet_block_layers(spec),
            k,
            spec.num_classes,
            bottleneck=spec.bottleneck,
            compression=spec.bottleneck,
            imagenet_stem=imagenet,
            memory_efficient=memory_efficient,
            feature_buffer=feature_buffer,
        )
    return DenseRKNet(
        spec.periods,
        arch.rknet_m(spec),
        k,
        spec.num_classes,
        bottleneck=spec.bottleneck,
        share=spec.share,
        imagenet_stem=imagenet,
        memory_efficient=memory_efficient,
        feature_buffer=feature_buffer,
    )
