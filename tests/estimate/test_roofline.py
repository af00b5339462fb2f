"""The roofline estimate: a GPU's rates and bandwidth against each op's FLOPs and bytes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from rkrepro import paper
from rkrepro.estimate import gpus, roofline
from rkrepro.models.analytic import model_cost


@pytest.fixture(scope="module")
def costs():
    tables = paper.load_tables()

    def cost(table: str, row: str):
        return model_cost(paper.resolve_cells(tables, table, row, ["original"])[0].spec)

    return {
        "resnet-20": cost("table4", "resnet-20"),
        "bc-k12": cost("table1", "densenet-bc-k12"),
        "densenet-121": cost("table3", "densenet-121"),
    }


def test_faster_hardware_and_arithmetic_are_faster(costs) -> None:
    h100, a100, v100 = gpus.find("h100"), gpus.find("a100-80gb"), gpus.find("v100")
    for cost in costs.values():
        fp32 = roofline.training_rate(cost, h100, "fp32", 64).images_per_s
        bf16 = roofline.training_rate(cost, h100, "bf16-autocast", 64).images_per_s
        assert bf16 > fp32 > 0
        older = roofline.training_rate(cost, v100, "fp32", 64).images_per_s
        assert roofline.training_rate(cost, a100, "fp32", 64).images_per_s > older
        assert fp32 > older
    # No TF32 tensor cores on a V100: tf32 runs at the fp32 rate, and says so.
    cost = costs["densenet-121"]
    tf32 = roofline.training_rate(cost, v100, "tf32", 256)
    assert tf32.images_per_s == roofline.training_rate(cost, v100, "fp32", 256).images_per_s
    assert "no tf32 tensor cores" in tf32.source


def test_more_bandwidth_helps_a_memory_bound_network(costs) -> None:
    h100, h200 = gpus.find("h100"), gpus.find("h200")
    cost = costs["bc-k12"]
    rate = roofline.training_rate(cost, h100, "bf16-autocast", 64)
    assert rate.compute_share < 0.5  # a small CIFAR DenseNet waits on memory in bf16
    assert roofline.training_rate(cost, h200, "bf16-autocast", 64).images_per_s > rate.images_per_s


def test_the_estimate_is_bounded_by_each_roof(costs) -> None:
    gpu = gpus.find("a100-80gb")
    for cost in costs.values():
        rate = roofline.training_rate(cost, gpu, "fp32", 64)
        peak = dict(gpu.tflops)["fp32"] * 1e12 * roofline.COMPUTE_EFFICIENCY
        arithmetic_limit = peak / (roofline.BACKWARD_FACTOR * cost.forward_flops)
        floor_limit = 64 / (roofline.BACKWARD_FACTOR * len(cost.ops) * roofline.MIN_OP_SECONDS)
        assert rate.images_per_s <= min(arithmetic_limit, floor_limit) * (1 + 1e-9)
        # An infinitely fast GPU is left with the per-op floor.
        fast = replace(gpu, tflops=(("fp32", 1e9),), bandwidth_gbs=1e12)
        assert roofline.training_rate(cost, fast, "fp32", 64).images_per_s == pytest.approx(
            floor_limit
        )


def test_the_source_states_rates_and_efficiencies(costs) -> None:
    rate = roofline.training_rate(costs["resnet-20"], gpus.find("h100"), "fp32", 64)
    assert rate.source == ("roofline (fp32 67 TFLOP/s x 0.5, 3,350 GB/s x 0.7, >= 3 us per op)")
