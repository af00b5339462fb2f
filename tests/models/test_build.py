"""Building every model of the paper (:mod:`rkrepro.models.build`): each printed parameter
count, shapes (meta device, real forwards), weight sharing."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from helpers_models import (
    ALL_SPECS,
    C10,
    C100,
    CELLS,
    FULL_FORWARD,
    IN,
    SHARED_SPECS,
    Cell,
    all_tied,
    assert_conv_weights_shared,
    assert_printed_params,
    meta_model,
    model_periods,
    real_forward,
    spec_id,
    step_params,
)
from torch import nn

from rkrepro.models import (
    arch,
    build_model,
    count_params,
    spec_param_counts,
)
from rkrepro.models.rknet import tie_shared_weights
from rkrepro.spec import ModelSpec


def test_table_has_every_printed_cell() -> None:
    assert len(CELLS) == 66
    assert len({c.id for c in CELLS}) == 66


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.id)
def test_printed_param_count(cell: Cell) -> None:
    paper, total = spec_param_counts(cell.spec)
    assert_printed_params(paper, cell.printed, cell.id)
    assert total > paper  # BatchNorm affine parameters are outside the paper's count


# Exact counts worked out by hand from the architectures (conv + linear weights).
EXACT = [
    (ModelSpec("densenet", C10, 40, 12), 1_040_578),
    (ModelSpec("densenet", C10, 40, 12, ((6, 1), (1, 1), (1, 1)), (2, 14, 26)), 1_846_114),
    (ModelSpec("densenet", C10, 40, 12, ((1, 6), (1, 1), (1, 1)), (2, 14, 26)), 1_768_354),
    (ModelSpec("densenet", C10, 40, 12, ((1, 6), (1, 1), (1, 1)), (2, 14, 26), True), 1_735_954),
    (ModelSpec("densenet", C10, 40, 12, ((3, 2), (1, 1), (1, 1)), (2, 14, 26)), 1_799_458),
    (ModelSpec("densenet", C10, 100, 12), 6_964_738),
    (ModelSpec("densenet-bc", C10, 100, 12), 745_174),
    (ModelSpec("densenet-bc", C10, 100, 12, ((8, 1), (2, 1), (2, 1)), (2, 9, 12)), 914_770),
    (ModelSpec("densenet-bc", C10, 100, 12, ((1, 8), (1, 2), (1, 2)), (2, 9, 12)), 720_658),
    (ModelSpec("densenet-bc", C10, 100, 12, ((1, 8), (1, 2), (1, 2)), (2, 9, 12), True), 330_706),
    (ModelSpec("densenet-bc", C10, 100, 12, ((2, 4), (2, 1), (2, 1)), (2, 9, 12)), 859_474),
    (ModelSpec("densenet", IN, 121, 32), 7_895_208),
    (ModelSpec("resnet", C10, 20), 268_346),
    (ModelSpec("resnet", C10, 20, periods=((1, 3), (1, 2), (1, 2)), share=True), 166_970),
]


@pytest.mark.parametrize("spec, expected", EXACT, ids=[spec_id(s) for s, _ in EXACT])
def test_exact_paper_counts(spec: ModelSpec, expected: int) -> None:
    assert spec_param_counts(spec)[0] == expected


@pytest.mark.parametrize("cell", [c for c in CELLS if c.spec.m is not None], ids=lambda c: c.id)
def test_derived_m_is_the_printed_m(cell: Cell) -> None:
    """Section 3.1's rule (original transition width // k) gives the printed m columns."""
    assert arch.derive_m(cell.spec) == cell.spec.m
    assert arch.rknet_m(replace(cell.spec, m=None)) == cell.spec.m


def test_one_step_variants_round_stages_up() -> None:
    """The printed one-time-step variants use s = ceil(original layers / m) (Section 3.1)."""
    one_step = {
        c.spec.periods
        for c in CELLS
        if c.spec.family != "resnet" and c.spec.periods and all(r == 1 for _, r in c.spec.periods)
    }
    specs = [c.spec for c in CELLS if c.spec.periods in one_step]
    assert len(specs) >= 6
    for spec in specs:
        assert tuple(s for s, _ in spec.periods) == arch.one_step_stages(spec), spec_id(spec)


def test_real_forward_covers_every_kind() -> None:
    """Original, RKNet and shared RKNet of every family and dataset run on real values."""
    kinds = {(s.family, s.dataset, s.is_rknet, s.share) for s in ALL_SPECS if real_forward(s)}
    for family, dataset in [
        ("densenet", C10), ("densenet-bc", C10), ("densenet-bc", C100), ("densenet", IN),
        ("resnet", C10),
    ]:  # fmt: skip
        for rknet, share in [(False, False), (True, False), (True, True)]:
            assert (family, dataset, rknet, share) in kinds


@pytest.mark.parametrize("spec", ALL_SPECS, ids=spec_id)
def test_forward_shape(spec: ModelSpec) -> None:
    size = 64 if spec.dataset == "imagenet" else 32
    if real_forward(spec):
        device = "cuda" if FULL_FORWARD and torch.cuda.is_available() else "cpu"
        torch.manual_seed(0)
        with torch.device(device):
            model = build_model(spec).eval()
    else:
        device, model = "meta", meta_model(spec)
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size, device=device))
    assert out.shape == (2, spec.num_classes)
    if device != "meta":
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("spec", SHARED_SPECS, ids=spec_id)
def test_shared_variants_share_conv_weights_only(spec: ModelSpec) -> None:
    assert_conv_weights_shared(spec)


@pytest.mark.parametrize(
    "spec",
    [
        ModelSpec("densenet-bc", C10, 22, 6, ((1, 3), (2, 2), (1, 2)), share=True),
        ModelSpec("resnet", C10, 20, periods=((1, 3), (1, 2), (1, 2)), share=True),
    ],
    ids=spec_id,
)
def test_shared_storage_on_a_real_device(spec: ModelSpec) -> None:
    torch.manual_seed(0)
    model = build_model(spec)
    for period in model_periods(model):
        ptrs = [[p.data_ptr() for p in step_params(s, nn.Conv2d)] for s in period.steps]
        assert all(row == ptrs[0] for row in ptrs[1:])
    # One optimiser step moves all time-steps' weights together (gradients accumulate once).
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    optimizer.step()
    for period in model_periods(model):
        first = step_params(period.steps[0], nn.Conv2d)
        for step in period.steps[1:]:
            for a, b in zip(step_params(step, nn.Conv2d), first, strict=True):
                assert torch.equal(a, b)
    assert len(list(model.parameters())) < len(model.state_dict())


def test_sharing_survives_conversions_and_can_be_restored() -> None:
    spec = ModelSpec("densenet-bc", C10, 22, 6, ((1, 3), (2, 2), (1, 2)), share=True)
    model = build_model(spec)
    assert all_tied(model.to(torch.float64)) and all_tied(copy.deepcopy(model))
    with torch.device("meta"):
        meta = build_model(spec)
    materialised = meta.to_empty(device="cpu")
    assert not all_tied(materialised)  # to_empty unties: why tie_shared_weights exists
    assert all_tied(tie_shared_weights(materialised))
    assert count_params(materialised) == spec_param_counts(spec)
