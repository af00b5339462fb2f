"""The GPU table: the GPUs a plan can be made for, each rate with its source, found by the
names users type and torch reports."""

from __future__ import annotations

import pytest

from rkrepro.errors import RkreproError
from rkrepro.estimate import gpus

REQUIRED = ("v100", "a100-40gb", "a100-80gb", "h100", "h200", "l40s", "rtx3090", "rtx4090")


def test_every_required_gpu_has_rates_bandwidth_and_a_source() -> None:
    table = {gpu.id: gpu for gpu in gpus.load()}
    assert set(REQUIRED) <= set(table)
    for gpu in table.values():
        rates = dict(gpu.tflops)
        assert set(rates) == {"fp32", "tf32", "bf16", "fp16"}
        assert rates["fp32"] and rates["fp32"] > 0 and gpu.bandwidth_gbs > 0 and gpu.memory_gb > 0
        for rate in (rates["tf32"], rates["bf16"]):
            assert rate is None or rate >= rates["fp32"]
        assert gpu.source and gpu.url.startswith("https://") and gpu.names


def test_datasheet_figures() -> None:
    h100, h200 = gpus.find("h100"), gpus.find("h200")
    assert dict(h100.tflops)["bf16"] == pytest.approx(1979 / 2)  # dense: half the sparse figure
    assert (h100.bandwidth_gbs, h200.bandwidth_gbs) == (3350, 4800)
    assert dict(h100.tflops) == dict(h200.tflops)  # the same GH100 compute
    assert gpus.find("a100-40gb").bandwidth_gbs < gpus.find("a100-80gb").bandwidth_gbs
    v100 = gpus.find("v100")
    assert v100.peak_tflops("tf32") == (15.7, "no tf32 tensor cores: fp32 rate")
    assert v100.peak_tflops("bf16-autocast")[1].startswith("no bf16")
    assert h100.peak_tflops("fp32") == (67.0, "fp32")
    assert h100.peak_tflops("fp16-amp") == (989.5, "fp16")


@pytest.mark.parametrize(
    ("typed", "found"),
    [
        ("H100", "h100"),
        ("h100-sxm", "h100"),
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("RTX 4090", "rtx4090"),
        ("NVIDIA GeForce RTX 3090", "rtx3090"),
        ("A100_80GB", "a100-80gb"),
        ("NVIDIA A100-SXM4-40GB", "a100-40gb"),
        ("Tesla V100-SXM2-32GB", "v100"),
    ],
)
def test_found_by_typed_and_reported_names(typed: str, found: str) -> None:
    assert gpus.find(typed).id == found


@pytest.mark.bad_input
@pytest.mark.parametrize(
    ("typed", "hint"),
    [("a100", "a100-40gb, a100-80gb"), ("h10", "h100"), ("x\n" * 30, "known: v100")],
)
def test_an_unknown_name_is_one_line_with_the_closest_names(typed: str, hint: str) -> None:
    with pytest.raises(RkreproError) as info:
        gpus.find(typed)
    message = str(info.value)
    assert "\n" not in message and "unknown GPU" in message and hint in message


def test_a_device_torch_names_that_the_table_lacks_is_none() -> None:
    assert gpus.for_device("NVIDIA H200").id == "h200"
    assert gpus.for_device("NVIDIA B200") is None
