"""The probe of real steps on this machine: warmed up, a second of steps per cell at least,
the median step, its spread said, and the cells of a row timed in turn."""

from __future__ import annotations

import helpers_workspace as wsh
import pytest

from rkrepro import paper
from rkrepro.estimate import probe as probe_mod

pytest.importorskip("torch")


@pytest.fixture
def cells(tmp_path, monkeypatch):
    for key, value in wsh.make_workspace(tmp_path, n_train=8, n_test=8).items():
        monkeypatch.setenv(key, value)
    return paper.all_cells(paper.load_tables())


def test_each_cell_fills_a_second_with_its_median_step(cells, monkeypatch) -> None:
    order: list[str] = []
    seconds: dict[str, list[float]] = {}
    real_step = probe_mod._Stepper.step

    def step(self) -> float:
        took = real_step(self)
        order.append(f"{id(self)}")
        seconds.setdefault(f"{id(self)}", []).append(took)
        return took

    monkeypatch.setattr(probe_mod._Stepper, "step", step)
    found = probe_mod.probe_cells(cells, "cpu", "fp32")
    assert set(found) == {cell.key for cell in cells}
    for result in found.values():
        assert result.steps >= probe_mod.MIN_STEPS and result.batch == 16
        assert result.spread >= 0 and result.device == "CPU" and result.peak_gb is None
        assert result.threads == 1  # one thread: see rkrepro.estimate.probe
        assert result.source.startswith("measured on CPU (") and "median of" in result.source
    # Each cell's timed steps (after its warm-ups) fill a second.
    for steps in seconds.values():
        assert sum(steps[probe_mod.WARMUP_STEPS :]) >= probe_mod.MIN_SECONDS
    # Warm-ups first, then the row's three cells take turns.
    timed = order[len(cells) * probe_mod.WARMUP_STEPS :]
    assert len(set(timed[:3])) == 3 and timed[:3] == timed[3:6]


def test_the_plan_of_a_cpu_run_measures_each_cell_once(cells, monkeypatch) -> None:
    from rkrepro.estimate import cost, target

    built: list[str] = []
    real_init = probe_mod._Stepper.__init__

    def init(self, cell, device, precision) -> None:
        built.append(cell.key)
        real_init(self, cell, device, precision)

    monkeypatch.setattr(probe_mod._Stepper, "__init__", init)
    monkeypatch.setattr(probe_mod, "MIN_SECONDS", 0.05)
    estimates = cost.estimate(cells + cells[:1], target.this_cpu())
    assert sorted(built) == sorted(cell.key for cell in cells)
    assert all(e.method == "measured" and e.gpu_hours > 0 for e in estimates)
    assert "(m) measured on CPU" in cost.describe_sources(estimates)
