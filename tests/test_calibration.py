"""The calibration file: measured throughputs first, scaled ones next, else the fallback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rkrepro import calibration
from rkrepro.errors import RkreproError

H200 = """
devices:
  NVIDIA H200:
    densenet-bc:
      - {depth: 100, growth_rate: 12, batch: 64, images_per_s: 20000, forward_flops: 290000000}
      - {depth: 190, growth_rate: 40, batch: 64, images_per_s: 1000, forward_flops: 9000000000}
"""


def test_shipped_file_loads_and_is_torch_free() -> None:
    code = (
        "import sys; from rkrepro import calibration; calibration.load();"
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_exact_then_scaled_then_none(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(H200)
    entries = calibration.load(path)
    hit = calibration.lookup(entries, "nvidia h200", "densenet-bc", 100, 12, 64, 290_000_000)
    assert hit is not None and hit.exact and hit.images_per_s == 20000
    assert hit.source == "measured on NVIDIA H200"
    big = calibration.lookup(entries, "NVIDIA H200", "densenet-bc", 250, 24, 64, 4_500_000_000)
    assert big is not None and not big.exact and big.images_per_s == pytest.approx(2000)
    assert "scaled by FLOPs from densenet-bc d190 k40" in big.source
    tiny = calibration.lookup(entries, "NVIDIA H200", "densenet-bc", 40, 12, 64, 1_000_000)
    assert tiny is not None and tiny.images_per_s == 20000  # capped at the fastest measured
    assert calibration.lookup(entries, "NVIDIA H200", "resnet", 20, None, 64, 40_000_000) is None
    assert calibration.lookup(entries, "NVIDIA A100", "densenet-bc", 100, 12, 64, 1) is None
    assert calibration.lookup(entries, "NVIDIA H200", "densenet-bc", 100, 12, 128, 1) is None


def test_snippet_round_trips(tmp_path: Path) -> None:
    record = {
        "arm": "T", "device_name": "NVIDIA H200", "family": "resnet", "depth": 20,
        "growth_rate": None, "batch": 64, "images_per_s": 31234.56, "forward_flops": 41_000_000,
        "precision": "bf16", "note": "2026-12-02 torch 2.11",
    }  # fmt: skip
    path = tmp_path / "c.yaml"
    path.write_text(calibration.snippet([record, {**record, "arm": "B"}]))
    (entry,) = calibration.load(path)
    assert entry.device == "NVIDIA H200" and entry.images_per_s == 31234.6


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "text", ["devices: [1, 2]", "devices: {x: {resnet: [{depth: 20}]}}", "devices: {x: 3}", "a: ["]
)
def test_malformed_file_is_one_line(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(RkreproError, match="calibration file") as info:
        calibration.load(path)
    assert "\n" not in str(info.value).strip() or "YAML" in str(info.value)
