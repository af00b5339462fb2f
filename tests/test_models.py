"""The model zoo against the paper: every printed parameter count, shapes, sharing, torchvision
equivalence of the ImageNet DenseNets, and the memory-efficient path."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import rkrepro
from rkrepro.models import (
    arch,
    build_model,
    count_flops,
    count_params,
    describe_periods,
    input_size_for,
    spec_param_counts,
)
from rkrepro.models.densenet import DenseLayer, load_torchvision_state_dict, torchvision_key
from rkrepro.models.rknet import DenseRKStep, Period, ResNetRKStep, tie_shared_weights
from rkrepro.paper import Printed
from rkrepro.spec import RESNET_STAGES, ModelSpec


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Two intra-op threads on a busy 2-core machine run ~50x slower than one (spin-waiting);
    one thread keeps this file fast everywhere. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def periods_of(name: str) -> tuple[tuple[int, int], ...]:
    """'1x8_1x2_1x2' -> ((1, 8), (1, 2), (1, 2))."""
    return tuple(tuple(int(v) for v in part.split("x")) for part in name.split("_"))  # type: ignore[misc]


@dataclass(frozen=True)
class Cell:
    """One printed "Param (M)" cell: the model and the string the paper prints for it."""

    table: str
    spec: ModelSpec
    printed: str

    @property
    def id(self) -> str:
        s = self.spec
        k = f"-k{s.growth_rate}" if s.growth_rate else ""
        share = "-share" if s.share else ""
        return f"{self.table}-{s.family}{s.depth}{k}-{s.name}{share}"


def _dense_row(
    table: str,
    dataset: str,
    family: str,
    depth: int,
    k: int | None,
    printed: str,
    m: tuple[int, ...],
    variants: list[tuple[str, str, str | None]],
) -> list[Cell]:
    """An original DenseNet and its variants (name, printed, printed with share or None)."""
    original = ModelSpec(family, dataset, depth, k)  # type: ignore[arg-type]
    cells = [Cell(table, original, printed)]
    for name, plain, shared in variants:
        spec = replace(original, periods=periods_of(name), m=m)
        cells.append(Cell(table, spec, plain))
        if shared is not None:
            cells.append(Cell(table, replace(spec, share=True), shared))
    return cells


C10, C100, IN = "cifar10", "cifar100", "imagenet"

# Tables 1-3: (dataset, family, depth, k, printed, m, [(variant, printed, printed with share)]).
_DENSE_ROWS = [
    ("table1", C10, "densenet", 40, 12, "1.0", (2, 14, 26),
     [("6x1_1x1_1x1", "1.85", None), ("1x6_1x1_1x1", "1.77", "1.74"),
      ("3x2_1x1_1x1", "1.80", None)]),
    ("table1", C10, "densenet", 100, 12, "7.0", (2, 34, 66),
     [("16x1_1x1_1x1", "11.7", None), ("1x16_1x1_1x1", "11.1", "11.0")]),
    ("table1", C10, "densenet", 100, 24, "27.8", (2, 34, 66),
     [("16x1_1x1_1x1", "46.9", None), ("1x16_1x1_1x1", "44.4", "44.0")]),
    ("table1", C10, "densenet-bc", 100, 12, "0.75", (2, 9, 12),
     [("8x1_2x1_2x1", "0.91", None), ("1x8_1x2_1x2", "0.72", "0.33"),
      ("2x4_2x1_2x1", "0.86", None)]),
    ("table1", C10, "densenet-bc", 250, 24, "15.1", (2, 21, 31),
     [("21x1_2x1_2x1", "18.4", None), ("1x21_1x2_1x2", "13.2", "6.3"),
      ("3x7_2x1_1x2", "14.5", None)]),
    ("table1", C10, "densenet-bc", 190, 40, "25.4", (2, 16, 23),
     [("16x1_2x1_2x1", "30.4", None), ("1x16_1x2_1x2", "22.3", "10.5"),
      ("4x4_2x1_1x2", "24.6", None)]),
    ("table1", C10, "densenet-bc", 292, 24, "20.1", (2, 25, 36),
     [("1x24_1x2_1x2", "17.5", "8.4")]),
    ("table2", C100, "densenet-bc", 100, 12, "0.8", (2, 9, 12),
     [("1x8_1x2_1x2", "0.7", "0.3")]),
    ("table2", C100, "densenet-bc", 250, 24, "15.2", (2, 21, 31),
     [("1x21_1x2_1x2", "13.3", "6.4")]),
    ("table2", C100, "densenet-bc", 190, 40, "25.6", (2, 16, 23),
     [("1x16_1x2_1x2", "22.4", "10.5")]),
    ("table2", C100, "densenet-bc", 292, 24, "20.3", (2, 25, 36),
     [("1x24_1x2_1x2", "17.6", "8.5")]),
    ("table3", IN, "densenet", 121, 32, "7.9", (2, 4, 8, 16),
     [("3x1_3x1_3x1_1x1", "6.9", None), ("1x3_1x3_1x3_1x1", "5.8", "3.8")]),
    ("table3", IN, "densenet", 169, 32, "14.0", (2, 4, 8, 20),
     [("1x3_1x3_1x4_1x2", "10.8", "5.0")]),
    ("table3", IN, "densenet", 201, 32, "19.8", (2, 4, 8, 28),
     [("1x3_1x3_1x6_1x2", "17.8", "8.0")]),
    ("table3", IN, "densenet", 161, 48, "28.5", (2, 4, 8, 22),
     [("1x3_1x3_1x5_1x2", "28.2", "12.2")]),
]  # fmt: skip

# Table 4: depth -> (printed ResNet, shared Euler variant, printed shared, other variants).
_RESNET_ROWS = {
    20: ("0.27", "1x3_1x2_1x2", "0.17", ["3x1_2x1_2x1"]),
    32: ("0.46", "1x5_1x4_1x4", "0.17", ["5x1_4x1_4x1", "1x5_2x2_2x2"]),
    44: ("0.66", "1x7_1x6_1x6", "0.17", ["7x1_6x1_6x1", "1x7_3x2_3x2", "1x7_2x3_2x3"]),
    56: ("0.85", "1x9_1x8_1x8", "0.17", ["9x1_8x1_8x1", "3x3_4x2_4x2", "1x9_2x4_2x4"]),
    110: ("1.7", "1x18_1x17_1x17", "0.17", []),
}

CELLS: list[Cell] = [c for row in _DENSE_ROWS for c in _dense_row(*row)]
RESNET_VARIANTS: list[ModelSpec] = []  # printed without a parameter count (= the ResNet's)
for _depth, (_printed, _euler, _shared, _others) in _RESNET_ROWS.items():
    _resnet = ModelSpec("resnet", C10, _depth)
    CELLS.append(Cell("table4", _resnet, _printed))
    CELLS.append(Cell("table4", replace(_resnet, periods=periods_of(_euler), share=True), _shared))
    RESNET_VARIANTS += [replace(_resnet, periods=periods_of(n)) for n in [_euler, *_others]]

ALL_SPECS: list[ModelSpec] = list(dict.fromkeys([c.spec for c in CELLS] + RESNET_VARIANTS))


def matches_printed(count: int, printed: str) -> bool:
    return Printed.parse(printed).matches_count(count)


def assert_printed_params(count: int, printed: str, what: str) -> None:
    """``count`` must round to the paper's ``printed`` millions at the printed decimals."""
    assert matches_printed(count, printed), f"{what}: {count:,} does not print as {printed}M"


def spec_id(spec: ModelSpec) -> str:
    k = f"-k{spec.growth_rate}" if spec.growth_rate else ""
    return (
        f"{spec.dataset}-{spec.family}{spec.depth}{k}-{spec.name}{'-share' if spec.share else ''}"
    )


# ------------------------------------------------------------------------ printed counts


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


# -------------------------------------------------------------------------------- shapes


@cache
def meta_model(spec: ModelSpec) -> nn.Module:
    """``spec``'s model on the meta device (shapes only, no memory); shared by the tests."""
    with torch.device("meta"):
        return build_model(spec).eval()


# Real-valued CPU forward passes cost ~620 GFLOP and ~780M initialised weights for all 80
# models; by default they run for the ResNets, the models under 2M parameters and DenseNet-121
# (one of every kind of block, stem and period), and every model runs on the meta device, which
# checks every shape. RKREPRO_FULL_FORWARD=1 runs all of them for real (on CUDA if present).
FULL_FORWARD = os.environ.get("RKREPRO_FULL_FORWARD") == "1"


def _real_forward(spec: ModelSpec) -> bool:
    small = spec.family == "resnet" or spec_param_counts(spec)[0] < 2_000_000
    return FULL_FORWARD or small or (spec.dataset == "imagenet" and spec.depth == 121)


def test_real_forward_covers_every_kind() -> None:
    """Original, RKNet and shared RKNet of every family and dataset run on real values."""
    kinds = {(s.family, s.dataset, s.is_rknet, s.share) for s in ALL_SPECS if _real_forward(s)}
    for family, dataset in [
        ("densenet", C10), ("densenet-bc", C10), ("densenet-bc", C100), ("densenet", IN),
        ("resnet", C10),
    ]:  # fmt: skip
        for rknet, share in [(False, False), (True, False), (True, True)]:
            assert (family, dataset, rknet, share) in kinds


@pytest.mark.parametrize("spec", ALL_SPECS, ids=spec_id)
def test_forward_shape(spec: ModelSpec) -> None:
    size = 64 if spec.dataset == "imagenet" else 32
    if _real_forward(spec):
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


# ------------------------------------------------------------------------------- sharing


def _periods(model: nn.Module) -> list[Period]:
    return [m for m in model.modules() if isinstance(m, Period)]


def _step_params(step: nn.Module, kind: type[nn.Module]) -> list[nn.Parameter]:
    return [p for m in step.modules() if isinstance(m, kind) for p in m.parameters(recurse=False)]


SHARED_SPECS = [s for s in ALL_SPECS if s.share]


@pytest.mark.parametrize("spec", SHARED_SPECS, ids=spec_id)
def test_shared_variants_share_conv_weights_only(spec: ModelSpec) -> None:
    periods = _periods(meta_model(spec))
    assert len(periods) == len(spec.periods)
    for period, (_, r) in zip(periods, spec.periods, strict=True):
        assert len(period.steps) == r and period.shared
        first_convs = _step_params(period.steps[0], nn.Conv2d)
        first_norms = _step_params(period.steps[0], nn.BatchNorm2d)
        assert first_convs and first_norms
        for step in period.steps[1:]:
            convs, norms = _step_params(step, nn.Conv2d), _step_params(step, nn.BatchNorm2d)
            assert all(a is b for a, b in zip(convs, first_convs, strict=True))
            assert not {id(p) for p in norms} & {id(p) for p in first_norms}
    unshared = spec_param_counts(replace(spec, share=False))
    shared = spec_param_counts(spec)
    assert shared[0] < unshared[0] and shared[1] < unshared[1]
    # Exactly the convolutions of r-1 time-steps per period are saved.
    plain_model = meta_model(replace(spec, share=False))
    saved = sum(
        sum(p.numel() for step in period.steps[1:] for p in _step_params(step, nn.Conv2d))
        for period in _periods(plain_model)
    )
    assert unshared[0] - shared[0] == saved


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
    for period in _periods(model):
        ptrs = [[p.data_ptr() for p in _step_params(s, nn.Conv2d)] for s in period.steps]
        assert all(row == ptrs[0] for row in ptrs[1:])
    # One optimiser step moves all time-steps' weights together (gradients accumulate once).
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    optimizer.step()
    for period in _periods(model):
        first = _step_params(period.steps[0], nn.Conv2d)
        for step in period.steps[1:]:
            for a, b in zip(_step_params(step, nn.Conv2d), first, strict=True):
                assert torch.equal(a, b)
    assert len(list(model.parameters())) < len(model.state_dict())


def _all_tied(model: nn.Module) -> bool:
    return all(
        all(
            a is b
            for step in period.steps[1:]
            for a, b in zip(
                _step_params(step, nn.Conv2d), _step_params(period.steps[0], nn.Conv2d), strict=True
            )
        )
        for period in _periods(model)
    )


def test_sharing_survives_conversions_and_can_be_restored() -> None:
    spec = ModelSpec("densenet-bc", C10, 22, 6, ((1, 3), (2, 2), (1, 2)), share=True)
    model = build_model(spec)
    assert _all_tied(model.to(torch.float64)) and _all_tied(copy.deepcopy(model))
    with torch.device("meta"):
        meta = build_model(spec)
    materialised = meta.to_empty(device="cpu")
    assert not _all_tied(materialised)  # to_empty unties: why tie_shared_weights exists
    assert _all_tied(tie_shared_weights(materialised))
    assert count_params(materialised) == spec_param_counts(spec)


# ------------------------------------------------------------------------------- ResNets


ONE_STAGE = [v for v in RESNET_VARIANTS if not v.multi_stage_resnet]
MULTI_STAGE = [v for v in RESNET_VARIANTS if v.multi_stage_resnet]


@pytest.mark.parametrize("wiring", RESNET_STAGES)
@pytest.mark.parametrize("spec", ONE_STAGE, ids=spec_id)
def test_one_stage_resnet_variants_equal_the_resnet(spec: ModelSpec, wiring: str) -> None:
    """Table 4's caption, which speaks of the one-stage variants only: under every reading."""
    spec = replace(spec, resnet_stages=wiring)
    assert spec_param_counts(spec) == spec_param_counts(replace(spec, periods=None))


def _concat_extra(spec: ModelSpec) -> int:
    """Hand count: stage i's first conv sees i*C channels, (i-1)*C*C*9 weights more than a
    ResNet block's; sum_i (i-1) = s(s-1)/2 per time-step."""
    return sum(
        9 * c * c * s * (s - 1) // 2 * r
        for (s, r), c in zip(spec.periods, arch.RESNET_WIDTHS, strict=True)
    )


def test_multi_stage_concat_counts() -> None:
    """The nine multi-stage Table 4 cells are distinct networks under the default reading."""
    assert len(MULTI_STAGE) == 9
    for spec in MULTI_STAGE:
        assert spec.resnet_stages == "concat"
        resnet = spec_param_counts(replace(spec, periods=None))[0]
        assert spec_param_counts(spec)[0] == resnet + _concat_extra(spec), spec_id(spec)
    spec = ModelSpec("resnet", C10, 20, periods=((3, 1), (2, 1), (2, 1)))
    assert spec_param_counts(spec)[0] == 321_338  # the worked example


def test_lincomb_and_euler_counts() -> None:
    """Neither adds conv weights; lincomb adds s(s-1)/2 + s learned scalars per time-step,
    outside the paper's count (conv + FC only), inside the total."""
    spec = ModelSpec("resnet", C10, 56, periods=((3, 3), (4, 2), (4, 2)))
    resnet = spec_param_counts(replace(spec, periods=None))
    euler = spec_param_counts(replace(spec, resnet_stages="euler"))
    lincomb = spec_param_counts(replace(spec, resnet_stages="lincomb"))
    assert euler == resnet and lincomb[0] == resnet[0]
    scalars = sum((s * (s - 1) // 2 + s) * r for s, r in spec.periods)
    assert lincomb[1] == resnet[1] + scalars


def _non_trivial_bn(module: nn.Module) -> None:
    for m in module.modules():  # non-trivial BN so the checks can see misplaced ReLUs
        if isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight)
            nn.init.normal_(m.bias)


def test_concat_step_is_eq7() -> None:
    """Default wiring: k_i = F_i(cat(y, k_1..k_{i-1})), first conv i*C -> C, second C -> C;
    y' = y + sum_i k_i. Fails on the Euler-equivalent wiring (C-channel inputs)."""
    torch.manual_seed(0)
    step = ResNetRKStep(3, 8).eval()
    assert step.wiring == "concat"
    assert [f.conv1.in_channels for f in step.mappings] == [8, 16, 24]
    assert all(f.conv1.out_channels == 8 and f.conv2.in_channels == 8 for f in step.mappings)
    _non_trivial_bn(step)
    y = torch.randn(2, 8, 6, 6)
    f1, f2, f3 = step.mappings

    def mapping(f: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(f.bn2(f.conv2(torch.relu(f.bn1(f.conv1(x))))))

    with torch.no_grad():
        k1 = mapping(f1, y)
        k2 = mapping(f2, torch.cat([y, k1], 1))
        k3 = mapping(f3, torch.cat([y, k1, k2], 1))
        out = step(y)
        # Stage 2 sees y and k_1 separately: moving d from k_1 to y changes its output, which
        # it cannot under the Euler wiring (F_2 of y + k_1).
        moved = mapping(f2, torch.cat([y + 0.5, k1 - 0.5], 1))
    torch.testing.assert_close(out, y + k1 + k2 + k3)
    assert (k1 >= 0).all() and (k3 >= 0).all()
    assert (out < 0).any()  # y is signed and nothing rectifies the sum
    assert not torch.allclose(moved, k2, atol=1e-3)


def test_default_table4_cell_is_not_successive_euler_steps() -> None:
    """The audit's finding, as a check: under ``euler`` an s x 1 period's weights map onto the
    1 x s variant and give the same outputs (s Euler steps); the Table 4 cell as loaded
    (default reading) has wider stage inputs, so no such mapping exists."""
    from rkrepro.paper import find_variant, load_tables, row_cells

    table = load_tables()["table4"]
    row = next(r for r in table.rows if r.id == "resnet-20")
    cell = next(
        c for c in row_cells(table, row) if c.model == find_variant(table, row, "3x1_2x1_2x1").name
    )
    assert cell.spec.resnet_stages == "concat" and cell.reading["resnet_stages"] == "concat"
    model = build_model(cell.spec)
    widths = [f.conv1.in_channels for f in model.periods[0].steps[0].mappings]
    assert widths == [16, 32, 48]

    torch.manual_seed(0)
    stages = build_model(replace(cell.spec, resnet_stages="euler")).eval()
    _non_trivial_bn(stages)
    steps = build_model(replace(cell.spec, periods=((1, 3), (1, 2), (1, 2)))).eval()

    def as_steps(key: str) -> str:  # periods.P.steps.0.mappings.I. -> periods.P.steps.I.mappings.0.
        parts = key.split(".")
        if parts[0] == "periods":
            parts[3], parts[5] = parts[5], parts[3]
        return ".".join(parts)

    steps.load_state_dict({as_steps(k): v for k, v in stages.state_dict().items()})
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(steps(x), stages(x))
    with pytest.raises(RuntimeError, match="size mismatch"):
        steps.load_state_dict({as_steps(k): v for k, v in model.state_dict().items()})


def test_lincomb_step_learns_its_coefficients() -> None:
    """k_i = F_i(y + sum_j a_ij k_j), y' = y + sum_i b_i k_i, C-channel inputs, a and b learned."""
    torch.manual_seed(0)
    step = ResNetRKStep(3, 8, "lincomb").eval()
    assert [f.conv1.in_channels for f in step.mappings] == [8, 8, 8]
    _non_trivial_bn(step)
    with torch.no_grad():
        step.a[0].copy_(torch.tensor([0.5]))
        step.a[1].copy_(torch.tensor([-0.25, 2.0]))
        step.b.copy_(torch.tensor([0.1, -0.3, 0.7]))
    y = torch.randn(2, 8, 6, 6)
    f1, f2, f3 = step.mappings
    with torch.no_grad():
        k1 = f1(y)
        k2 = f2(y + 0.5 * k1)
        k3 = f3(y - 0.25 * k1 + 2.0 * k2)
        out = step(y)
    torch.testing.assert_close(out, y + 0.1 * k1 - 0.3 * k2 + 0.7 * k3)
    step.train()
    step(y).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (*step.a, step.b))
    fresh = ResNetRKStep(2, 4, "lincomb")
    assert torch.equal(fresh.b, torch.ones(2)) and torch.equal(fresh.a[0], torch.ones(1))
    one = ResNetRKStep(1, 4, "lincomb")  # one stage: y + F(y) under every reading
    assert one.wiring == "euler" and not hasattr(one, "b")


MULTI_STAGE_SHARED = [
    ModelSpec("resnet", C10, 32, periods=((1, 5), (2, 2), (2, 2)), share=True, resnet_stages=w)
    for w in ("concat", "lincomb")
]


@pytest.mark.parametrize("spec", MULTI_STAGE_SHARED, ids=lambda s: s.resnet_stages)
def test_multi_stage_sharing_ties_convs_across_time_steps(spec: ModelSpec) -> None:
    test_shared_variants_share_conv_weights_only(spec)
    model = build_model(spec)
    if spec.resnet_stages == "lincomb":  # the scalars are per time-step, like BatchNorm
        a, b = model.periods[1].steps
        assert a.b is not b.b


@pytest.mark.parametrize("wiring", ["concat", "lincomb"])
def test_memory_efficient_resnet_stages_match_plain(wiring: str) -> None:
    spec = MULTI_STAGE_SHARED[0]
    spec = replace(spec, resnet_stages=wiring)
    torch.manual_seed(0)
    plain = build_model(spec).train()
    efficient = build_model(spec, memory_efficient=True).train()
    efficient.load_state_dict(plain.state_dict())
    x, grad = torch.randn(4, 3, 16, 16), torch.randn(4, 10)
    a_out, a_grads, a_state, a_saved = _train_step(plain, x, grad)
    b_out, b_grads, b_state, b_saved = _train_step(efficient, x, grad)
    torch.testing.assert_close(b_out, a_out)
    for name in a_grads:
        torch.testing.assert_close(b_grads[name], a_grads[name], msg=name)
    for name in a_state:
        torch.testing.assert_close(b_state[name], a_state[name], msg=name)
    if wiring == "concat":  # the concatenations are recomputed, not stored
        assert b_saved < a_saved
    else:
        assert b_saved == a_saved


def test_shared_euler_variants_do_not_depend_on_depth() -> None:
    counts = {spec_param_counts(c.spec)[0] for c in CELLS if c.spec.family == "resnet"}
    shared = {spec_param_counts(c.spec)[0] for c in CELLS if c.spec.share and c.table == "table4"}
    assert shared == {166_970}
    assert len(counts) == 6


@pytest.mark.parametrize(
    "periods", [((1, 3), (1, 2), (1, 1)), ((2, 2), (1, 2), (1, 2)), ((3, 1), (2, 1))]
)
def test_resnet_period_mismatch_raises(periods: tuple[tuple[int, int], ...]) -> None:
    spec = ModelSpec("resnet", C10, 20, periods=periods)
    with pytest.raises(ValueError, match="ResNet-20"):
        build_model(spec)
    with pytest.raises(ValueError):
        spec_param_counts(spec)


def test_bad_depths_raise() -> None:
    for spec in [
        ModelSpec("resnet", C10, 21),
        ModelSpec("densenet", C10, 41, 12),
        ModelSpec("densenet-bc", C10, 40 + 3, 12),
        ModelSpec("densenet", IN, 122),
        ModelSpec("densenet-bc", C10, 100, 12, ((1, 8), (1, 2)), m=(2, 9, 12)),
    ]:
        with pytest.raises(ValueError):
            build_model(spec)


def test_euler_rk_step() -> None:
    """``euler``: k_1 = F_1(y), k_2 = F_2(y + k_1), k_3 = F_3(y + k_1 + k_2); y' = y + k_1 + k_2 +
    k_3, with every k_i >= 0 (ReLU at the end of the mapping, none after the addition)."""
    torch.manual_seed(0)
    step = ResNetRKStep(3, 8, "euler").eval()
    for m in step.modules():  # non-trivial BN so the check can see misplaced ReLUs
        if isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight)
            nn.init.normal_(m.bias)
    y = torch.randn(2, 8, 6, 6)
    f1, f2, f3 = step.mappings
    with torch.no_grad():
        k1 = f1(y)
        k2 = f2(y + k1)
        k3 = f3(y + k1 + k2)
        out = step(y)
    torch.testing.assert_close(out, y + k1 + k2 + k3)
    assert (k1 >= 0).all() and (k3 >= 0).all()
    assert (out < 0).any()  # y is signed and nothing rectifies the sum


def test_original_resnet_block_rectifies_after_the_addition() -> None:
    torch.manual_seed(0)
    model = build_model(ModelSpec("resnet", C10, 20)).eval()
    block = model.stages[1][1]
    y = torch.randn(2, 32, 8, 8)
    with torch.no_grad():
        out = block(y)
        inner = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(y)))))
    torch.testing.assert_close(out, torch.relu(inner + y))


def test_resnet_type_a_shortcut_has_no_parameters() -> None:
    model = build_model(ModelSpec("resnet", C10, 20))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19  # 20 weighted layers = 19 convs + the classifier


# ----------------------------------------------------------------------- DenseNet RK step


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


# --------------------------------------------------------------------- ImageNet DenseNets


_TORCHVISION = {
    121: torchvision.models.densenet121,
    169: torchvision.models.densenet169,
    201: torchvision.models.densenet201,
    161: torchvision.models.densenet161,
}


@pytest.mark.parametrize("depth", list(_TORCHVISION))
def test_imagenet_densenet_counts_equal_torchvision(depth: int) -> None:
    with torch.device("meta"):
        theirs = _TORCHVISION[depth](weights=None)
    paper, total = spec_param_counts(ModelSpec("densenet", IN, depth))
    assert total == sum(p.numel() for p in theirs.parameters())
    assert paper == count_params(theirs)[0]


@pytest.mark.parametrize("depth", [121, 161])
def test_imagenet_densenet_outputs_equal_torchvision(depth: int) -> None:
    torch.manual_seed(0)
    theirs = _TORCHVISION[depth](weights=None)
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


# ------------------------------------------------------------------------ memory-efficient


def _train_step(model: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> tuple:
    saved = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    out.backward(grad)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return out.detach(), grads, copy.deepcopy(model.state_dict()), sum(saved)


@pytest.mark.parametrize(
    "spec",
    [
        ModelSpec("densenet-bc", C10, 22, 6),
        ModelSpec("densenet", C10, 13, 4),
        ModelSpec("densenet-bc", C10, 22, 6, ((2, 2), (1, 3), (1, 2)), share=True),
    ],
    ids=spec_id,
)
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
    a_out, a_grads, a_state, a_saved = _train_step(plain, x, grad)
    b_out, b_grads, b_state, b_saved = _train_step(efficient, x, grad)
    torch.testing.assert_close(b_out, a_out)
    assert a_grads.keys() == b_grads.keys()
    for name in a_grads:
        torch.testing.assert_close(b_grads[name], a_grads[name], msg=name)
    for name in a_state:  # running statistics updated once, as without checkpointing
        torch.testing.assert_close(b_state[name], a_state[name], msg=name)
    assert b_saved < a_saved


# ---------------------------------------------------------------------------- counting


def test_count_params_skips_batchnorm_and_dedupes_shared() -> None:
    conv = nn.Conv2d(3, 4, 3, bias=True)  # 108 + 4
    other = nn.Conv2d(3, 4, 3, bias=False)
    other.weight = conv.weight  # shared: counted once
    model = nn.Sequential(conv, nn.BatchNorm2d(4), other, nn.Flatten(), nn.Linear(4, 2))
    assert count_params(model) == (108 + 4 + 8 + 2, 108 + 4 + 8 + 8 + 2)


def test_init_follows_fb_resnet_torch() -> None:
    torch.manual_seed(0)
    model = build_model(ModelSpec("densenet-bc", C10, 100, 12))
    conv = model.transitions[0].conv  # 216 -> 108, 1x1: fan-out 108, fan-in 216
    assert conv.weight.shape == (108, 216, 1, 1)
    assert conv.weight.std().item() == pytest.approx((2 / 108) ** 0.5, rel=0.03)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(bool((n.weight == 1).all()) and bool((n.bias == 0).all()) for n in norms)
    assert bool((model.head.fc.bias == 0).all())
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))


def test_count_flops() -> None:
    resnet = ModelSpec("resnet", C10, 20)
    assert input_size_for(resnet) == (3, 32, 32)
    flops = count_flops(meta_model(resnet), input_size_for(resnet))
    assert 80e6 < flops < 84e6  # ~41M multiply-adds
    spec = ModelSpec("densenet", IN, 121)
    assert input_size_for(spec) == (3, 224, 224)
    with torch.device("meta"):
        theirs = torchvision.models.densenet121(weights=None)
        ours = build_model(spec).train()
    flops = count_flops(ours, input_size_for(spec))
    assert flops == count_flops(theirs, (3, 224, 224))
    assert 5.6e9 < flops < 5.8e9  # 2.87 GMACs
    assert ours.training  # mode restored


# ------------------------------------------------------------------------------ summary


def test_describe_periods() -> None:
    spec = ModelSpec("densenet-bc", C10, 100, 12, ((1, 8), (1, 2), (1, 2)), (2, 9, 12), True)
    rows = describe_periods(spec)
    assert [r["state_channels"] for r in rows] == [24, 108, 144]
    assert [r["units_per_step"] for r in rows] == [2, 9, 12]
    assert all(r["shared"] for r in rows)
    rows = describe_periods(ModelSpec("resnet", C10, 56, periods=((3, 3), (4, 2), (4, 2))))
    assert [(r["state_channels"], r["units_per_step"], r["r"]) for r in rows] == [
        (16, 3, 3), (32, 4, 2), (64, 4, 2)
    ]  # fmt: skip
    rows = describe_periods(ModelSpec("densenet", IN, 121))
    assert [(r["state_channels"], r["units_per_step"]) for r in rows] == [
        (64, 6), (128, 12), (256, 24), (512, 16)
    ]  # fmt: skip
    with pytest.raises(ValueError):
        describe_periods(ModelSpec("resnet", C10, 20, periods=((2, 2), (1, 2), (1, 2))))


@pytest.mark.parametrize("spec", [c.spec for c in CELLS if c.spec.periods], ids=spec_id)
def test_describe_periods_agrees_with_the_model(spec: ModelSpec) -> None:
    model = meta_model(spec)
    for row, period in zip(describe_periods(spec), _periods(model), strict=True):
        assert len(period.steps) == row["r"]
        step = period.steps[0]
        if isinstance(step, DenseRKStep):
            assert len(step.block.layers) == row["units_per_step"]
            assert step.block.in_channels == row["state_channels"]
        else:
            assert len(step.mappings) == row["units_per_step"]
            assert step.mappings[0].conv1.in_channels == row["state_channels"]


def test_summary_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from rkrepro.models.summary import describe_periods\n"
        "from rkrepro.spec import ModelSpec\n"
        "describe_periods(ModelSpec('densenet-bc', 'cifar10', 100, 12, ((1, 8),) * 3))\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    repo_root = Path(rkrepro.__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-c", code], check=True, cwd=repo_root)


# ------------------------------------------------------------------------- feature buffer


@pytest.mark.parametrize(
    "spec",
    [
        ModelSpec("densenet-bc", C10, 22, 6),
        ModelSpec("densenet", C10, 13, 4),
        ModelSpec("densenet-bc", C10, 22, 6, ((2, 2), (1, 3), (1, 2)), share=True),
    ],
    ids=spec_id,
)
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
        assert all(p.shared for p in _periods(buffered))
    x, grad = torch.randn(4, 3, 16, 16), torch.randn(4, 10)
    if channels_last:
        concat = concat.to(memory_format=torch.channels_last)
        buffered = buffered.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    a_out, a_grads, a_state, _ = _train_step(concat, x, grad)
    b_out, b_grads, b_state, _ = _train_step(buffered, x, grad)
    # BatchNorm on a strided window reduces in another order: equal to float rounding.
    torch.testing.assert_close(b_out, a_out)
    assert a_grads.keys() == b_grads.keys()
    for name, a in a_grads.items():  # sums over many pixels: tolerance relative to the largest
        scale = float(a.abs().max())
        torch.testing.assert_close(b_grads[name], a, rtol=1e-4, atol=1e-4 * scale, msg=name)
    for name in a_state:
        torch.testing.assert_close(b_state[name], a_state[name], msg=name)


def _saved_storage_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd saves (views of one buffer count once)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(storages.values())


def test_feature_buffer_and_checkpointing_save_memory() -> None:
    spec = ModelSpec("densenet-bc", C10, 40, 12)
    x = torch.randn(8, 3, 32, 32)
    torch.manual_seed(0)
    concat = _saved_storage_bytes(build_model(spec, feature_buffer=False), x)
    buffered = _saved_storage_bytes(build_model(spec, feature_buffer=True), x)
    efficient = _saved_storage_bytes(build_model(spec, memory_efficient=True), x)
    both = _saved_storage_bytes(build_model(spec, memory_efficient=True, feature_buffer=True), x)
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
