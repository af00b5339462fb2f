"""The paper's printed parameter cells (Tables 1-4) and the model helpers shared by the
model tests."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, replace
from functools import cache

import torch
import torchvision
from torch import nn

from rkrepro.models import (
    arch,
    build_model,
    spec_param_counts,
)
from rkrepro.models.rknet import Period
from rkrepro.paper import Printed
from rkrepro.spec import ModelSpec


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


def dense_row(
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
DENSE_ROWS = [
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
RESNET_ROWS = {
    20: ("0.27", "1x3_1x2_1x2", "0.17", ["3x1_2x1_2x1"]),
    32: ("0.46", "1x5_1x4_1x4", "0.17", ["5x1_4x1_4x1", "1x5_2x2_2x2"]),
    44: ("0.66", "1x7_1x6_1x6", "0.17", ["7x1_6x1_6x1", "1x7_3x2_3x2", "1x7_2x3_2x3"]),
    56: ("0.85", "1x9_1x8_1x8", "0.17", ["9x1_8x1_8x1", "3x3_4x2_4x2", "1x9_2x4_2x4"]),
    110: ("1.7", "1x18_1x17_1x17", "0.17", []),
}

CELLS: list[Cell] = [c for row in DENSE_ROWS for c in dense_row(*row)]
RESNET_VARIANTS: list[ModelSpec] = []  # printed without a parameter count (= the ResNet's)
for _depth, (_printed, _euler, _shared, _others) in RESNET_ROWS.items():
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


def real_forward(spec: ModelSpec) -> bool:
    small = spec.family == "resnet" or spec_param_counts(spec)[0] < 2_000_000
    return FULL_FORWARD or small or (spec.dataset == "imagenet" and spec.depth == 121)


def model_periods(model: nn.Module) -> list[Period]:
    return [m for m in model.modules() if isinstance(m, Period)]


def step_params(step: nn.Module, kind: type[nn.Module]) -> list[nn.Parameter]:
    return [p for m in step.modules() if isinstance(m, kind) for p in m.parameters(recurse=False)]


SHARED_SPECS = [s for s in ALL_SPECS if s.share]


def assert_conv_weights_shared(spec: ModelSpec) -> None:
    """A shared variant shares its time-steps' convolutions, never their BatchNorms, and saves
    exactly the convolutions of r-1 time-steps per period."""
    periods = model_periods(meta_model(spec))
    assert len(periods) == len(spec.periods)
    for period, (_, r) in zip(periods, spec.periods, strict=True):
        assert len(period.steps) == r and period.shared
        first_convs = step_params(period.steps[0], nn.Conv2d)
        first_norms = step_params(period.steps[0], nn.BatchNorm2d)
        assert first_convs and first_norms
        for step in period.steps[1:]:
            convs, norms = step_params(step, nn.Conv2d), step_params(step, nn.BatchNorm2d)
            assert all(a is b for a, b in zip(convs, first_convs, strict=True))
            assert not {id(p) for p in norms} & {id(p) for p in first_norms}
    unshared = spec_param_counts(replace(spec, share=False))
    shared = spec_param_counts(spec)
    assert shared[0] < unshared[0] and shared[1] < unshared[1]
    # Exactly the convolutions of r-1 time-steps per period are saved.
    plain_model = meta_model(replace(spec, share=False))
    saved = sum(
        sum(p.numel() for step in period.steps[1:] for p in step_params(step, nn.Conv2d))
        for period in model_periods(plain_model)
    )
    assert unshared[0] - shared[0] == saved


def all_tied(model: nn.Module) -> bool:
    return all(
        all(
            a is b
            for step in period.steps[1:]
            for a, b in zip(
                step_params(step, nn.Conv2d), step_params(period.steps[0], nn.Conv2d), strict=True
            )
        )
        for period in model_periods(model)
    )


ONE_STAGE = [v for v in RESNET_VARIANTS if not v.multi_stage_resnet]


MULTI_STAGE = [v for v in RESNET_VARIANTS if v.multi_stage_resnet]


def concat_extra(spec: ModelSpec) -> int:
    """Hand count: stage i's first conv sees i*C channels, (i-1)*C*C*9 weights more than a
    ResNet block's; sum_i (i-1) = s(s-1)/2 per time-step."""
    return sum(
        9 * c * c * s * (s - 1) // 2 * r
        for (s, r), c in zip(spec.periods, arch.RESNET_WIDTHS, strict=True)
    )


def non_trivial_bn(module: nn.Module) -> None:
    for m in module.modules():  # non-trivial BN so the checks can see misplaced ReLUs
        if isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight)
            nn.init.normal_(m.bias)


MULTI_STAGE_SHARED = [
    ModelSpec("resnet", C10, 32, periods=((1, 5), (2, 2), (2, 2)), share=True, resnet_stages=w)
    for w in ("concat", "lincomb")
]


TORCHVISION_DEPTHS = {
    121: torchvision.models.densenet121,
    169: torchvision.models.densenet169,
    201: torchvision.models.densenet201,
    161: torchvision.models.densenet161,
}


def train_step_outputs(model: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> tuple:
    saved = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    out.backward(grad)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return out.detach(), grads, copy.deepcopy(model.state_dict()), sum(saved)


def saved_storage_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd saves (views of one buffer count once)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(storages.values())
