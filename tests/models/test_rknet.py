"""The DenseNet RK step (:mod:`rkrepro.models.rknet`): groups of m growth layers, user variants."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from helpers_models import (
    C10,
)

from rkrepro.models import (
    arch,
    build_model,
    describe_periods,
)
from rkrepro.models.rknet import DenseRKStep
from rkrepro.spec import ModelSpec


@pytest.mark.parametrize("bottleneck", [False, True])
def test_dense_rk_step_sums_groups_of_m_growth_layers(bottleneck: bool) -> None:
    torch.manual_seed(0)
    s, m, k = 3, 2, 4
    step = DenseRKStep(s, m, k, bottleneck).eval()
    assert len(step.block.layers) == s * m
    assert [layer.norm1.num_features for layer in step.block.layers] == [
        m * k + j * k for j in range(s * m)
    ]
    y = torch.randn(2, m * k, 5, 5)
    with torch.no_grad():
        features = [y]
        for layer in step.block.layers:
            features.append(layer(features))
        new = features[1:]
        groups = [torch.cat(new[i * m : (i + 1) * m], 1) for i in range(s)]
        out = step(y)
    torch.testing.assert_close(out, y + sum(groups))


def test_odd_user_variant_builds_and_runs() -> None:
    spec = ModelSpec("densenet-bc", C10, 40, 12, periods=((3, 2), (1, 3), (2, 2)))
    for share in (False, True):
        model = build_model(replace(spec, share=share)).train()
        out = model(torch.randn(2, 3, 16, 16))
        assert out.shape == (2, 10)
        out.sum().backward()
    m = arch.derive_m(spec)
    rows = describe_periods(spec)
    assert [(row["s"], row["r"]) for row in rows] == [(3, 2), (1, 3), (2, 2)]
    assert [row["state_channels"] for row in rows] == [mi * 12 for mi in m]
    # An explicit m with four periods also builds (CIFAR input is 32 -> 4x4 at the end).
    four = ModelSpec(
        "densenet", C10, 40, 8, periods=((2, 1), (1, 2), (2, 1), (1, 1)), m=(2, 3, 5, 4)
    )
    assert build_model(four)(torch.randn(2, 3, 32, 32)).shape == (2, 10)
