"""Period summaries (:mod:`rkrepro.models.summary`), torch-free."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers_models import (
    C10,
    CELLS,
    IN,
    meta_model,
    model_periods,
    spec_id,
)

import rkrepro
from rkrepro.models import (
    describe_periods,
)
from rkrepro.models.rknet import DenseRKStep
from rkrepro.spec import ModelSpec


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
    for row, period in zip(describe_periods(spec), model_periods(model), strict=True):
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
