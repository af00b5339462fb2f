"""The training loop (:mod:`rkrepro.training.loop`): exact resume, failures, and that it learns."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import helpers_cifar as h
import pytest
import torch
from helpers_training import (
    CPU,
    PAPER,
    TINY,
    TINY_RK,
    emulated_trainer,
    split,
    step_losses,
    tiny_trainer,
)

from rkrepro.data import cifar
from rkrepro.models import build_model
from rkrepro.planning.fast_path import FastPath
from rkrepro.training import loop, state
from rkrepro.training.checkpoints import Checkpoints
from rkrepro.training.loop import Trainer
from rkrepro.training.setup import Execution
from rkrepro.training.signals import Interrupted, NonFiniteLoss, StopSignal


def test_resume_mid_epoch_is_bit_identical(tmp_path: Path) -> None:
    protocol = replace(PAPER, epochs=2, lr_milestones=(1,), batch_size=16)
    reference = tiny_trainer(tmp_path / "ref", protocol)
    ref_history = reference.fit()

    stop = StopSignal()

    class StopAt:
        """Progress hook that raises the stop flag at epoch 2, step 3 (as SIGTERM would)."""

        epoch = 0

        def epoch_start(self, epoch: int, epochs: int, steps: int, done: int) -> None:
            self.epoch = epoch

        def step(self, done: int, loss: float, error: float) -> None:
            if self.epoch == 2 and done == 3:
                stop.signum = 15

        def epoch_end(self, record: state.EpochRecord) -> None:
            pass

    first = tiny_trainer(tmp_path / "run", protocol, progress=StopAt(), stop=stop)
    with pytest.raises(Interrupted) as info:
        first.fit()
    assert info.value.exit_code == 143
    saved = Checkpoints(tmp_path / "run").load()
    assert saved["epoch"] == 1 and saved["step_in_epoch"] == 3

    torch.manual_seed(1234)  # a fresh process would have other RNG state: restore must fix it
    second = tiny_trainer(tmp_path / "run", protocol)
    second.restore(saved)
    history = second.fit()
    assert [r.train_loss for r in history] == [r.train_loss for r in ref_history]
    assert [r.test_error for r in history] == [r.test_error for r in ref_history]
    for key, value in reference.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[key]), key


def test_nan_loss_stops_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(loop.FAULT_NAN_ENV, "3")
    trainer = tiny_trainer(tmp_path, replace(PAPER, epochs=2, batch_size=16))
    with pytest.raises(NonFiniteLoss, match="non-finite training loss"):
        trainer.fit()
    assert trainer.global_step == 3


def test_small_rknet_learns_digits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An RKNet (1x2_1x1_1x1, k=8) on scikit-learn's digits, in CIFAR format: far below chance."""
    monkeypatch.setenv(cifar.VERIFY_ENV, "0")
    monkeypatch.setenv(cifar.DOWNLOAD_ENV, "0")
    h.write_digits_cifar10(tmp_path / "data")
    tr_split, te_split = cifar.load_cifar("cifar10", tmp_path / "data")
    protocol = replace(PAPER, epochs=4, lr_milestones=(3,), batch_size=32)
    spec = replace(TINY_RK, growth_rate=8)
    state.seed_everything(0)
    model = build_model(spec)
    execution = Execution.local(CPU)
    tr, te = cifar.cifar_batches(tr_split, te_split, 32, CPU, 0, None, execution.channels_last)
    trainer = Trainer(model, tr, te, protocol, execution, Checkpoints(tmp_path / "ck"))
    history = trainer.fit()
    assert history[-1].test_error < 40.0, [r.test_error for r in history]  # chance: 90 %
    assert history[-1].train_loss < history[0].train_loss


def test_fast_and_plain_cpu_paths_train_alike(tmp_path: Path) -> None:
    """Same init, same batches: the CPU fast path (NHWC, here with the feature buffer too)
    changes only rounding, so the epoch losses agree closely."""
    protocol = replace(PAPER, epochs=2, lr_milestones=(1,), batch_size=16)
    fast = tiny_trainer(tmp_path / "fast", protocol, fast=FastPath(feature_buffer=True)).fit()
    plain = tiny_trainer(tmp_path / "plain", protocol, fast=FastPath.off()).fit()
    for a, b in zip(fast, plain, strict=True):
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-2)


def test_train_step_matches_fit_and_checkpoint_lr_is_a_float(tmp_path: Path) -> None:
    protocol = replace(PAPER, epochs=1, batch_size=16)
    trainer = tiny_trainer(tmp_path, protocol)
    x, y = next(iter(trainer.train_batches.batches(1)))
    trainer.train_step(x, y)
    loss_sum, wrong = trainer.running_sums
    assert float(loss_sum) > 0 and trainer.global_step == 1
    trainer.optimizer.param_groups[0]["lr"] = torch.tensor(0.1)  # as the CUDA graph path has it
    assert trainer.state()["optimizer"]["param_groups"][0]["lr"] == 0.1
    assert isinstance(trainer.state()["optimizer"]["param_groups"][0]["lr"], float)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_step_trains_like_eager(tmp_path: Path) -> None:
    """The captured step (after warm-up, tail batch eager) against the eager fp32 path."""
    cuda = torch.device("cuda")
    protocol = replace(PAPER, epochs=1, batch_size=16)
    histories = []
    for fast in (FastPath(), FastPath.off()):
        state.seed_everything(0)
        model = build_model(TINY)
        execution = Execution.local(cuda, fast=fast)
        tr, te = cifar.cifar_batches(
            split(200, 0), split(24, 1), 16, cuda, 0, None, execution.channels_last
        )
        trainer = Trainer(model, tr, te, protocol, execution, Checkpoints(tmp_path / str(fast)))
        histories.append(trainer.fit())
        assert (trainer.captured is not None) == fast.cuda_graph
    assert histories[0][0].train_loss == pytest.approx(histories[1][0].train_loss, rel=1e-3)


def test_fit_through_the_graph_path_follows_the_schedule(tmp_path: Path) -> None:
    graph = emulated_trainer(tmp_path / "g", FastPath()).fit()
    eager = emulated_trainer(tmp_path / "e", FastPath(cuda_graph=False)).fit()
    assert [r.lr for r in graph] == [0.1, 0.01]
    for a, b in zip(graph, eager, strict=True):
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-4)
        assert a.test_error == pytest.approx(b.test_error, abs=5.0)


def test_bf16_autocast_on_cpu_through_the_cuda_path(tmp_path: Path) -> None:
    bf16 = emulated_trainer(tmp_path / "b", FastPath(), precision="bf16-autocast")
    fp32 = emulated_trainer(tmp_path / "f", FastPath())
    x, y = next(iter(bf16.train_batches.batches(1)))
    with bf16.execution.autocast():
        logits = bf16.model(x.contiguous(memory_format=torch.channels_last))
    assert logits.dtype == torch.bfloat16
    b, f = step_losses(bf16, 1), step_losses(fp32, 1)
    assert b[0] == pytest.approx(f[0], rel=2e-2) and b == pytest.approx(f, rel=5e-2)
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())  # weights stay fp32
