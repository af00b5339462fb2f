"""The step and what wraps it on a GPU (:mod:`rkrepro.training.step`), its CUDA logic on the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers_training import (
    CPU,
    emulated_trainer,
    step_losses,
)

from rkrepro.planning.fast_path import FastPath
from rkrepro.training import state
from rkrepro.training.step import LaggedReadout


def test_graph_body_on_cpu_matches_the_eager_step_step_for_step(tmp_path: Path) -> None:
    graph = emulated_trainer(tmp_path / "g", FastPath())
    eager = emulated_trainer(tmp_path / "e", FastPath(cuda_graph=False))
    assert graph.captured and not eager.captured and graph.execution.fast.fused_sgd
    g, e = step_losses(graph, 1), step_losses(eager, 1)
    assert graph.captured.static is not None and graph.captured.graph is None  # = eager body
    assert isinstance(graph.optimizer.param_groups[0]["lr"], torch.Tensor)
    assert len(g) == 6 and g == pytest.approx(e, rel=1e-5)  # fp32 vs float32 tensor lr
    for key, value in eager.model.state_dict().items():
        assert torch.allclose(value.float(), graph.model.state_dict()[key].float(), atol=1e-5)


def test_captured_lr_tensor_follows_a_scheduler_that_replaces_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Older torch assigns a new lr instead of ``fill_``: the replayed tensor must follow."""
    from torch.optim import lr_scheduler

    if not hasattr(lr_scheduler, "_update_param_group_val"):
        pytest.skip("this torch's scheduler has no _update_param_group_val to patch")

    def assign(group: dict, key: str, value: object) -> None:
        group[key] = float(value)  # type: ignore[arg-type]

    monkeypatch.setattr(lr_scheduler, "_update_param_group_val", assign)
    trainer = emulated_trainer(tmp_path, FastPath())
    step_losses(trainer, 1)
    captured = trainer.optimizer.param_groups[0]["lr"]
    trainer.scheduler.step()
    trainer.captured.follow_lr(state.plain_lr)
    assert trainer.optimizer.param_groups[0]["lr"] is captured
    assert float(captured) == pytest.approx(0.01)
    saved = trainer.state()
    assert all(isinstance(v, float) for v in saved["scheduler"]["_last_lr"])


def test_lagged_readout_on_cpu_returns_the_previous_request() -> None:
    readout = LaggedReadout(CPU)
    loss, wrong = torch.tensor(8.0, dtype=torch.float64), torch.tensor(2)
    first = readout.request(loss, wrong, 4)
    assert all(v != v for v in first)  # nothing has landed yet: NaN
    loss += 4.0
    assert readout.request(loss, wrong, 8) == (2.0, 50.0)  # the sums of the first request
    assert readout.request(loss, wrong, 8) == (1.5, 25.0)
