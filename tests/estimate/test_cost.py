"""``rkrepro plan``: cost estimates before launching, for a GPU that need not be here."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from rkrepro.cli.app import app
from rkrepro.estimate import cost, target
from rkrepro.models.analytic import model_cost
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
    # No GPU here and none named: the roofline of the default GPU, said so.
    assert payload["device"] == "NVIDIA H100 SXM5 80 GB"
    assert all(c["method"] == "roofline" and c["source"].startswith("roofline (") for c in cells)


def test_protocol_flops_follow_the_epochs_and_dataset():
    cell = resolve_cells(load_tables(), "table1", "densenet-bc-k12")[0]
    forward = 1_000_000
    expected = 300 * (3 * forward * 50_000 + forward * 10_000)
    assert cost.protocol_flops(cell, forward) == expected


def test_memory_estimate_grows_with_depth_and_batch():
    tables = load_tables()
    small = resolve_cells(tables, "table4", "resnet-20")[0]
    large = resolve_cells(tables, "table4", "resnet-110")[0]
    saved = [model_cost(cell.spec).saved_activation_bytes for cell in (small, large)]
    assert saved[1] > 4 * saved[0]
    est_small, est_large = cost.estimate([small, large], target.named_gpu("a100-80gb"))
    assert est_large.peak_memory_gb > est_small.peak_memory_gb > 0
    assert est_large.gpu_hours > est_small.gpu_hours


def test_plan_uses_a_measured_throughput_and_says_so(tmp_path, monkeypatch):
    """An entry for (device, family, depth, batch, precision) replaces the roofline; others are
    scaled from it by FLOPs. The entry is bf16 (the file's default), so the plan is too: an
    fp32 plan must not use a bf16 measurement."""
    argv = ["plan", "table4", "--row", "resnet-20", "--format", "json", "--no-probe"]
    argv += ["--precision", "bf16"]
    assumed = json.loads(CliRunner().invoke(app, argv).output)["cells"]
    flops = next(c["forward_flops"] for c in assumed if c["model"] == "original")
    assert all(c["source"].startswith("roofline (") for c in assumed)
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
        assert c["source"].startswith(want) and c["method"] == "calibration", c
    fp32 = CliRunner().invoke(app, argv[:-2])
    assert all(c["method"] == "roofline" for c in json.loads(fp32.output)["cells"])


def test_the_papers_plan_for_a_gpu_counts_without_torch(tmp_path) -> None:
    """``plan --gpu h100`` of all four tables: per-table and total hours with their source,
    from the spec alone (no model built, neither torch nor mlflow imported)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "RKREPRO_RUNS_DIR": str(tmp_path / "runs")}
    env.pop("RKREPRO_TABLES_DIR", None)
    argv = [sys.executable, "-X", "importtime", "-m", "rkrepro", "plan", "--gpu", "h100"]
    done = subprocess.run(
        [*argv, "-f", "json"], env=env, capture_output=True, text=True, check=True
    )
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}
    assert not {name for name in imported if name.split(".")[0] in ("torch", "mlflow")}
    payload = json.loads(done.stdout)
    assert payload["device"] == "NVIDIA H100 SXM5 80 GB" and payload["precision"] == "fp32"
    totals = {t["table"]: t for t in payload["totals"] if t["row"] in ("(table)", "(paper)")}
    assert list(totals) == ["table1", "table2", "table3", "table4", "all"]
    assert totals["all"]["cells"] == 80
    assert totals["all"]["gpu_hours"] == pytest.approx(
        sum(totals[t]["gpu_hours"] for t in ("table1", "table2", "table3", "table4"))
    )
    assert {c["method"] for c in payload["cells"]} == {"roofline"}
    rich = CliRunner().invoke(app, ["plan", "--gpu", "h200"], env={"COLUMNS": "200"})
    text = " ".join(rich.stdout.split())
    assert "on NVIDIA H200 SXM 141 GB, fp32" in text and "total (paper)" in text
    assert "(b) roofline (fp32 67 TFLOP/s x 0.5, 4,800 GB/s x 0.7" in text
