"""The counts from the spec (no model built) against the built models: parameters
(``count_params``), forward FLOPs (``count_flops``'s FlopCounterMode) and the bytes autograd
saves for backward, for every cell of the shipped tables and for wirings they do not use."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from rkrepro import paper
from rkrepro.models import build_model, count_params, input_size_for
from rkrepro.models.analytic import model_cost, param_counts
from rkrepro.spec import ModelSpec


def _measured(spec: ModelSpec) -> tuple[tuple[int, int], int, int]:
    """(count_params, forward FLOPs, saved bytes) of the built model: one meta-device build and
    one training-mode forward pass with the FLOP counter and the saved-tensor hooks at once."""
    with torch.device("meta"):
        model = build_model(spec)
    model.train()
    saved: dict[int, torch.Tensor] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved[id(tensor)] = tensor  # held, so ids stay unique; a tensor saved twice counts once
        return tensor

    counter = FlopCounterMode(display=False)
    with counter, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.zeros(1, *input_size_for(spec), device="meta"))
    nbytes = sum(t.numel() * t.element_size() for t in saved.values())
    return count_params(model), int(counter.get_total_flops()), nbytes


def _assert_counts_match(spec: ModelSpec) -> None:
    params, flops, saved = _measured(spec)
    cost = model_cost(spec)
    assert (cost.params_paper, cost.params_total) == params, spec
    assert param_counts(spec) == params
    assert cost.forward_flops == flops, spec
    assert cost.saved_activation_bytes + cost.saved_parameter_bytes == saved, spec


@pytest.mark.parametrize("table", ["table1", "table2", "table3", "table4"])
def test_every_shipped_cell_counts_as_its_built_model(table: str) -> None:
    specs = {cell.spec for cell in paper.all_cells(paper.load_tables(), table)}
    assert specs
    for spec in specs:
        _assert_counts_match(spec)


@pytest.mark.parametrize(
    "spec",
    [
        # Multi-stage ResNet variants under the other two wirings, shared and not.
        ModelSpec("resnet", "cifar10", 20, periods=((3, 1), (2, 1), (2, 1)), resnet_stages="euler"),
        ModelSpec(
            "resnet", "cifar10", 32, periods=((5, 1), (2, 2), (2, 2)), resnet_stages="lincomb"
        ),
        ModelSpec(
            "resnet", "cifar100", 32, periods=((5, 1), (2, 2), (2, 2)), share=True,
            resnet_stages="lincomb",
        ),
        # A non-BC DenseNet variant with several stages and steps, shared; an ImageNet one.
        ModelSpec("densenet", "cifar10", 40, 12, ((2, 3), (3, 2), (1, 1)), share=True),
        ModelSpec("densenet", "imagenet", 121, None, ((2, 3), (1, 3), (3, 2), (1, 2)), share=True),
        # A user's own m and a growth rate the paper does not use.
        ModelSpec("densenet-bc", "cifar100", 40, 7, ((1, 3), (2, 2), (1, 2)), m=(3, 4, 5)),
    ],
    ids=["euler", "lincomb", "lincomb-share", "densenet-share", "imagenet-share", "own-m"],
)  # fmt: skip
def test_wirings_the_tables_do_not_use_count_as_built(spec: ModelSpec) -> None:
    _assert_counts_match(spec)


def test_an_unbuildable_spec_is_refused_as_building_it_would() -> None:
    from rkrepro.models.arch import SpecError

    with pytest.raises(SpecError, match="s\\*r"):
        model_cost(ModelSpec("resnet", "cifar10", 20, periods=((2, 2), (1, 2), (1, 2))))


def test_counting_imports_no_torch() -> None:
    code = (
        "import sys; from rkrepro import paper; from rkrepro.models.analytic import model_cost;"
        "[model_cost(c.spec) for c in paper.all_cells(paper.load_tables())];"
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_traffic_and_ops_follow_the_network() -> None:
    tables = paper.load_tables()
    small = model_cost(paper.resolve_cells(tables, "table4", "resnet-20", ["original"])[0].spec)
    large = model_cost(paper.resolve_cells(tables, "table4", "resnet-110", ["original"])[0].spec)
    assert len(large.ops) > 5 * len(small.ops)
    assert large.forward_elements > 5 * small.forward_elements > 0
    assert sum(op.flops for op in small.ops) == small.forward_flops
    assert {op.kind for op in small.ops} >= {"conv", "bn", "relu", "add", "pool", "linear"}
