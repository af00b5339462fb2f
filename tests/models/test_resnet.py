"""ResNets and their RKNets (:mod:`rkrepro.models.resnet`, ``rknet``): counts per stage wiring,
Eq. (7) literally, sharing across time-steps, the original block."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from helpers_models import (
    C10,
    CELLS,
    IN,
    MULTI_STAGE,
    MULTI_STAGE_SHARED,
    ONE_STAGE,
    assert_conv_weights_shared,
    concat_extra,
    non_trivial_bn,
    spec_id,
    train_step_outputs,
)
from torch import nn

from rkrepro.models import (
    build_model,
    spec_param_counts,
)
from rkrepro.models.rknet import ResNetRKStep
from rkrepro.spec import RESNET_STAGES, ModelSpec


@pytest.mark.parametrize("wiring", RESNET_STAGES)
@pytest.mark.parametrize("spec", ONE_STAGE, ids=spec_id)
def test_one_stage_resnet_variants_equal_the_resnet(spec: ModelSpec, wiring: str) -> None:
    """Table 4's caption, which speaks of the one-stage variants only: under every reading."""
    spec = replace(spec, resnet_stages=wiring)
    assert spec_param_counts(spec) == spec_param_counts(replace(spec, periods=None))


def test_multi_stage_concat_counts() -> None:
    """The nine multi-stage Table 4 cells are distinct networks under the default reading."""
    assert len(MULTI_STAGE) == 9
    for spec in MULTI_STAGE:
        assert spec.resnet_stages == "concat"
        resnet = spec_param_counts(replace(spec, periods=None))[0]
        assert spec_param_counts(spec)[0] == resnet + concat_extra(spec), spec_id(spec)
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


def test_concat_step_is_eq7() -> None:
    """Default wiring: k_i = F_i(cat(y, k_1..k_{i-1})), first conv i*C -> C, second C -> C;
    y' = y + sum_i k_i. Fails on the Euler-equivalent wiring (C-channel inputs)."""
    torch.manual_seed(0)
    step = ResNetRKStep(3, 8).eval()
    assert step.wiring == "concat"
    assert [f.conv1.in_channels for f in step.mappings] == [8, 16, 24]
    assert all(f.conv1.out_channels == 8 and f.conv2.in_channels == 8 for f in step.mappings)
    non_trivial_bn(step)
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
    non_trivial_bn(stages)
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
    non_trivial_bn(step)
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


@pytest.mark.parametrize("spec", MULTI_STAGE_SHARED, ids=lambda s: s.resnet_stages)
def test_multi_stage_sharing_ties_convs_across_time_steps(spec: ModelSpec) -> None:
    assert_conv_weights_shared(spec)
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
    a_out, a_grads, a_state, a_saved = train_step_outputs(plain, x, grad)
    b_out, b_grads, b_state, b_saved = train_step_outputs(efficient, x, grad)
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
