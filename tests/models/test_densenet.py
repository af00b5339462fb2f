"""DenseNets (:mod:`rkrepro.models.densenet`): torchvision's ImageNet models exactly, the
memory-efficient path and the feature buffer."""

from __future__ import annotations

import pytest
import torch
from helpers_models import (
    C10,
    IN,
    TORCHVISION_DEPTHS,
    model_periods,
    saved_storage_bytes,
    spec_id,
    train_step_outputs,
)
from torch import nn

from rkrepro.models import (
    build_model,
    count_params,
    spec_param_counts,
)
from rkrepro.models.densenet import DenseLayer, load_torchvision_state_dict, torchvision_key
from rkrepro.spec import ModelSpec


@pytest.mark.parametrize("depth", list(TORCHVISION_DEPTHS))
def test_imagenet_densenet_counts_equal_torchvision(depth: int) -> None:
    with torch.device("meta"):
        theirs = TORCHVISION_DEPTHS[depth](weights=None)
    paper, total = spec_param_counts(ModelSpec("densenet", IN, depth))
    assert total == sum(p.numel() for p in theirs.parameters())
    assert paper == count_params(theirs)[0]


@pytest.mark.parametrize("depth", [121, 161])
def test_imagenet_densenet_outputs_equal_torchvision(depth: int) -> None:
    torch.manual_seed(0)
    theirs = TORCHVISION_DEPTHS[depth](weights=None)
    for m in theirs.modules():  # non-trivial BN statistics, so a mis-mapped BN would show
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            nn.init.uniform_(m.weight, 0.5, 1.5)
    ours = build_model(ModelSpec("densenet", IN, depth))
    load_torchvision_state_dict(ours, theirs.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), theirs.eval()(x))


def test_torchvision_key_mapping() -> None:
    assert torchvision_key("features.denseblock2.denselayer3.conv1.weight") == (
        "blocks.1.layers.2.conv1.weight"
    )
    assert torchvision_key("features.transition3.norm.running_var") == (
        "transitions.2.norm.running_var"
    )
    assert torchvision_key("classifier.bias") == "head.fc.bias"
    with pytest.raises(KeyError):
        torchvision_key("features.pool0.weight")


# Plain and memory-efficient DenseNets, BC and not, with RK periods and sharing.
MEMORY_EFFICIENT_SPECS = [
    ModelSpec("densenet-bc", C10, 22, 6),
    ModelSpec("densenet", C10, 13, 4),
    ModelSpec("densenet-bc", C10, 22, 6, ((2, 2), (1, 3), (1, 2)), share=True),
]


@pytest.mark.parametrize("spec", MEMORY_EFFICIENT_SPECS, ids=spec_id)
@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
        ),
    ],
)
def test_memory_efficient_matches_plain(spec: ModelSpec, device: str) -> None:
    torch.manual_seed(0)
    with torch.device(device):
        plain = build_model(spec).train()
        efficient = build_model(spec, memory_efficient=True).train()
        efficient.load_state_dict(plain.state_dict())
        x = torch.randn(4, 3, 16, 16)
        grad = torch.randn(4, 10)
    assert any(isinstance(m, DenseLayer) and m.memory_efficient for m in efficient.modules())
    a_out, a_grads, a_state, a_saved = train_step_outputs(plain, x, grad)
    b_out, b_grads, b_state, b_saved = train_step_outputs(efficient, x, grad)
    torch.testing.assert_close(b_out, a_out)
    assert a_grads.keys() == b_grads.keys()
    for name in a_grads:
        torch.testing.assert_close(b_grads[name], a_grads[name], msg=name)
    for name in a_state:  # running statistics updated once, as without checkpointing
        torch.testing.assert_close(b_state[name], a_state[name], msg=name)
    assert b_saved < a_saved


@pytest.mark.parametrize("spec", MEMORY_EFFICIENT_SPECS, ids=spec_id)
@pytest.mark.parametrize("memory_efficient", [False, True], ids=["plain", "memory-efficient"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_feature_buffer_matches_concatenation(
    spec: ModelSpec, memory_efficient: bool, channels_last: bool
) -> None:
    torch.manual_seed(0)
    concat = build_model(spec, feature_buffer=False).train()
    buffered = build_model(spec, memory_efficient=memory_efficient, feature_buffer=True).train()
    buffered.load_state_dict(concat.state_dict())
    if spec.share:
        assert all(p.shared for p in model_periods(buffered))
    x, grad = torch.randn(4, 3, 16, 16), torch.randn(4, 10)
    if channels_last:
        concat = concat.to(memory_format=torch.channels_last)
        buffered = buffered.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    a_out, a_grads, a_state, _ = train_step_outputs(concat, x, grad)
    b_out, b_grads, b_state, _ = train_step_outputs(buffered, x, grad)
    # BatchNorm on a strided window reduces in another order: equal to float rounding.
    torch.testing.assert_close(b_out, a_out)
    assert a_grads.keys() == b_grads.keys()
    for name, a in a_grads.items():  # sums over many pixels: tolerance relative to the largest
        scale = float(a.abs().max())
        torch.testing.assert_close(b_grads[name], a, rtol=1e-4, atol=1e-4 * scale, msg=name)
    for name in a_state:
        torch.testing.assert_close(b_state[name], a_state[name], msg=name)


def test_feature_buffer_and_checkpointing_save_memory() -> None:
    spec = ModelSpec("densenet-bc", C10, 40, 12)
    x = torch.randn(8, 3, 32, 32)
    torch.manual_seed(0)
    concat = saved_storage_bytes(build_model(spec, feature_buffer=False), x)
    buffered = saved_storage_bytes(build_model(spec, feature_buffer=True), x)
    efficient = saved_storage_bytes(build_model(spec, memory_efficient=True), x)
    both = saved_storage_bytes(build_model(spec, memory_efficient=True, feature_buffer=True), x)
    assert buffered < 0.8 * concat  # 77% measured
    assert both < efficient < 0.6 * concat  # 54% and 59% measured (depth 40: short blocks)


def test_feature_buffer_switch_and_autocast_fallback() -> None:
    from rkrepro.models.densenet import DenseBlock, set_feature_buffer

    model = build_model(ModelSpec("densenet-bc", C10, 22, 4))
    blocks = [m for m in model.modules() if isinstance(m, DenseBlock)]
    assert blocks and not any(b.feature_buffer for b in blocks)
    set_feature_buffer(model, True)
    assert all(b.feature_buffer for b in blocks)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 16, 16))  # stem output in bf16: buffer in bf16
    assert out.shape == (2, 10)
