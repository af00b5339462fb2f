"""``rkrepro plan``: cost estimates before launching, from FLOPs when no GPU is present."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from rkrepro.estimate import cost
from rkrepro.cli.app import app
from rkrepro.paper import load_tables, resolve_cells


def test_plan_json_sums_cells_per_row_and_table():
    result = CliRunner().invoke(
        app, ["plan", "table4", "--row", "resnet-20", "--format", "json", "--no-probe"]
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    cells, totals = payload["cells"], payload["totals"]
    assert [c["model"] for c in cells] == [
        "original",
        "RKNet-1x3_1x2_1x2",
        "RKNet-1x3_1x2_1x2",
        "RKNet-3x1_2x1_2x1",
    ]
    row_total = next(t for t in totals if t["row"] == "resnet-20")
    assert row_total["cells"] == 4
    assert row_total["gpu_hours"] == pytest.approx(sum(c["gpu_hours"] for c in cells))
    assert all(c["source"].startswith("FLOPs @ 20 TFLOP/s") for c in cells)


def test_protocol_flops_follow_the_epochs_and_dataset():
    cell = resolve_cells(load_tables(), "table1", "densenet-bc-k12")[0]
    forward = 1_000_000
    expected = 300 * (3 * forward * 50_000 + forward * 10_000)
    assert cost.protocol_flops(cell, forward) == expected


def test_memory_estimate_grows_with_depth_and_batch():
    tables = load_tables()
    small = resolve_cells(tables, "table4", "resnet-20")[0]
    large = resolve_cells(tables, "table4", "resnet-110")[0]
    assert cost.saved_activation_bytes(large) > 4 * cost.saved_activation_bytes(small)
    est_small, est_large = cost.estimate([small, large], probe_device=None)
    assert est_large.peak_memory_gb > est_small.peak_memory_gb > 0
    assert est_large.gpu_hours > est_small.gpu_hours


def test_plan_uses_a_measured_throughput_and_says_so(tmp_path, monkeypatch):
    """An entry for (device, family, depth, batch) replaces the FLOPs estimate; others keep it."""
    argv = ["plan", "table4", "--row", "resnet-20", "--format", "json", "--no-probe"]
    assumed = json.loads(CliRunner().invoke(app, argv).output)["cells"]
    flops = next(c["forward_flops"] for c in assumed if c["model"] == "original")
    assert all(c["source"].startswith("FLOPs @") for c in assumed)
    path = tmp_path / "calibration.yaml"
    path.write_text(
        "devices:\n  NVIDIA H200:\n    resnet:\n"
        "      - {depth: 20, growth_rate: null, batch: 64, images_per_s: 40000,"
        f" forward_flops: {flops}}}\n"
    )
    monkeypatch.setenv("RKREPRO_CALIBRATION_FILE", str(path))
    monkeypatch.setenv("RKREPRO_CALIBRATION_DEVICE", "NVIDIA H200")
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    cells = json.loads(result.output)["cells"]
    original = next(c for c in cells if c["model"] == "original")
    assert original["source"] == "measured on NVIDIA H200 (rkrepro/calibration.yaml)"
    assert original["gpu_hours"] == pytest.approx(300 * (50_000 + 10_000 / 3) / 40_000 / 3600)
    for c in cells:  # a variant is "measured" only when its FLOPs are the measured model's
        want = "measured on" if c["forward_flops"] == flops else "scaled by FLOPs from resnet d20"
        assert c["source"].startswith(want), c
