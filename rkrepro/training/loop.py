"""The training loop of Section 4: SGD + Nesterov, step decay, checkpoints that resume exactly.

Tracking-agnostic on purpose: the session passes callbacks, so this module knows nothing of
MLflow and can be tested on its own. Everything random is either restored from a checkpoint
(model, optimiser, scheduler, scaler, global RNG states) or derived from (seed, epoch) by the
batch sources, which is what makes a resumed CPU run bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import math
import os
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any
from typing import Protocol as TypingProtocol

import torch
from torch import Tensor, nn

from rkrepro.spec import Protocol
from rkrepro.training.checkpoints import CHECKPOINT_FORMAT, Checkpoints
from rkrepro.training.optim import build_optimizer, build_scheduler
from rkrepro.training.setup import Execution
from rkrepro.training.signals import MEMORY_EFFICIENT_HINT, NonFiniteLoss, RunFailure, StopSignal
from rkrepro.training.state import (
    EpochRecord,
    plain_lr,
    plain_optimizer_state,
    plain_scheduler_state,
    rng_states,
    set_rng_states,
)
from rkrepro.training.step import CapturedStep, LaggedReadout, SgdStep

# Test hook (documented in the README): make the loss of this global step (1-based) NaN.
FAULT_NAN_ENV = "RKREPRO_FAULT_NAN_AT_STEP"
# On CUDA, finiteness is checked every this many steps (a check is a host-device sync); with a
# captured step it is checked once per epoch instead.
CUDA_CHECK_EVERY = 50


class BatchSource(TypingProtocol):
    num_samples: int

    def __len__(self) -> int: ...

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]: ...


class Progress(TypingProtocol):
    def epoch_start(self, epoch: int, epochs: int, steps: int, done: int) -> None: ...

    def step(self, done: int, loss: float, error: float) -> None: ...

    def epoch_end(self, record: EpochRecord) -> None: ...


class _StopInEval(Exception):
    pass


class Trainer:
    """Trains one model under one (possibly shortened) protocol, checkpointing every epoch.

    The batch sources yield batches already on the device and in the execution's memory format;
    the model is placed by :meth:`Execution.place`.
    """

    def __init__(
        self,
        model: nn.Module,
        train_batches: BatchSource,
        test_batches: BatchSource,
        protocol: Protocol,
        execution: Execution,
        checkpoints: Checkpoints,
        *,
        run_id: str | None = None,
        progress: Progress | None = None,
        stop: StopSignal | None = None,
        on_epoch: Callable[[EpochRecord], None] | None = None,
        checkpoint_every_s: float = 900.0,
        extra_state: dict[str, Any] | None = None,
    ) -> None:
        self.execution = execution
        self.device = execution.device
        self.model = execution.place(model)
        self.train_batches, self.test_batches = train_batches, test_batches
        self.protocol = protocol
        self.checkpoints = checkpoints
        self.run_id = run_id
        self.top5 = protocol.dataset == "imagenet"
        self.progress = progress
        self.stop = stop or StopSignal()
        self.on_epoch = on_epoch
        self.checkpoint_every_s = checkpoint_every_s
        self.extra_state = extra_state or {}
        self.optimizer = build_optimizer(self.model, protocol, fused=execution.fast.fused_sgd)
        self.scheduler = build_scheduler(self.optimizer, protocol)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=execution.loss_scaling)
        self.step = SgdStep(self.model, self.optimizer, self.scaler, execution)
        fault = os.environ.get(FAULT_NAN_ENV, "").strip()
        self.fault_step = int(fault) if fault.isdigit() else None
        # The fault hook needs the host inside the step: such runs stay eager.
        captured = execution.captures_step and self.fault_step is None
        self.captured = (
            CapturedStep(self.step, protocol.batch_size, self.device) if captured else None
        )
        self.epoch = 0  # completed epochs
        self.step_in_epoch = 0
        self.partial: dict[str, float] | None = None
        self.global_step = 0
        self.history: list[EpochRecord] = []

    # -- state ----------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "epoch": self.epoch,
            "epochs": self.protocol.epochs,
            "step_in_epoch": self.step_in_epoch,
            "partial": self.partial,
            "global_step": self.global_step,
            "model": self.model.state_dict(),
            "optimizer": plain_optimizer_state(self.optimizer),
            "scheduler": plain_scheduler_state(self.scheduler),
            "scaler": self.scaler.state_dict(),
            "rng": rng_states(),
            "history": [asdict(r) for r in self.history],
            "run_id": self.run_id,
            **self.extra_state,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        self.step_in_epoch = int(state.get("step_in_epoch") or 0)
        # An interrupted epoch's partial sums are rank 0's: counted once, by it.
        self.partial = state.get("partial") if self.execution.world.is_main else None
        self.global_step = int(state.get("global_step") or 0)
        self.history = [EpochRecord(**r) for r in state.get("history", [])]
        set_rng_states(state["rng"])

    def save(self) -> None:
        self.checkpoints.save(self.state())

    # -- one step -------------------------------------------------------------------------

    def train_step(self, x: Tensor, y: Tensor) -> None:
        """One SGD step (:class:`SgdStep`) as :meth:`fit` takes it: around it only the fault
        hook, the captured graph and, on the CPU, the finiteness check of the loss."""
        self.global_step += 1
        if self.global_step == self.fault_step:
            x = x * float("nan")
        loss = self.captured(x, y) if self.captured is not None else self.step(x, y)
        if loss is not None and self.device.type == "cpu" and not math.isfinite(loss.item()):
            step = self.step_in_epoch + 1
            raise NonFiniteLoss(self._nan_reason(self.epoch + 1, step, loss.item()))

    @property
    def running_sums(self) -> tuple[Tensor, Tensor]:
        """(sum of loss x batch size, wrong predictions) of the epoch so far, on the device."""
        return self.step.loss_sum, self.step.wrong

    # -- loop -----------------------------------------------------------------------------

    def fit(self) -> list[EpochRecord]:
        """Train from the current state to the last epoch; returns every epoch's record."""
        try:
            while self.epoch < self.protocol.epochs:
                self._epoch(self.epoch + 1)
        except torch.cuda.OutOfMemoryError:
            self.optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            raise RunFailure(
                f"CUDA out of memory at epoch {self.epoch + 1} (batch size "
                f"{self.protocol.batch_size}); {MEMORY_EFFICIENT_HINT}"
            ) from None
        return self.history

    def _epoch(self, epoch: int) -> None:
        model, device = self.model, self.device
        steps = len(self.train_batches)
        p = self.partial or {}
        loss_sum, wrong = self.running_sums  # updated in place by every step (and replay)
        loss_sum.fill_(float(p.get("loss_sum", 0.0)))
        wrong.fill_(int(p.get("wrong", 0)))
        seen = int(p.get("seen", 0))
        train_s = float(p.get("train_s", 0.0))
        total_s = float(p.get("total_s", 0.0))
        lr = plain_lr(self.optimizer.param_groups[0]["lr"])
        readout = LaggedReadout(device) if self.captured is not None else None
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        if self.progress:
            self.progress.epoch_start(epoch, self.protocol.epochs, steps, self.step_in_epoch)

        def snapshot(step: int, started: float, train_done: float) -> None:
            self.step_in_epoch = step
            elapsed = time.perf_counter() - started
            self.partial = {
                "loss_sum": float(loss_sum),
                "wrong": int(wrong),
                "seen": seen,
                "train_s": train_s + train_done,
                "total_s": total_s + elapsed,
            }

        started = time.perf_counter()
        last_save = started
        step = self.step_in_epoch
        model.train()
        for x, y in self.train_batches.batches(epoch, start=step):
            self.train_step(x, y)
            seen += y.numel()
            step += 1
            self.step_in_epoch = step
            check = (
                device.type == "cuda"
                and self.captured is None
                and (step % CUDA_CHECK_EVERY == 0 or step == steps)
            )
            if check and not math.isfinite(float(loss_sum)):
                raise NonFiniteLoss(self._nan_reason(epoch, step, float("nan")))
            if self.progress and (device.type == "cpu" or step % 20 == 0 or step == steps):
                if readout is not None:
                    self.progress.step(step, *readout.request(loss_sum, wrong, seen))
                else:
                    self.progress.step(step, float(loss_sum) / seen, 100.0 * int(wrong) / seen)
            now = time.perf_counter()
            if self.stop.signum is not None or now - last_save > self.checkpoint_every_s:
                snapshot(step, started, now - started)
                self.save()
                last_save = now
                self.stop.check()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_done = time.perf_counter() - started
        counts = torch.stack([loss_sum, wrong.double(), loss_sum.new_tensor(float(seen))])
        counts = self.execution.world.sum(counts)  # every process's share of the epoch
        loss_total, wrong_total, seen = float(counts[0]), int(counts[1]), int(counts[2].item())
        if seen and not math.isfinite(loss_total):
            raise NonFiniteLoss(self._nan_reason(epoch, step, float("nan")))
        try:
            test_error, test_top5 = self.evaluate()
        except _StopInEval:
            snapshot(step, started, train_done)
            self.save()
            self.stop.check()
            raise
        self.scheduler.step()
        if self.captured is not None:
            self.captured.follow_lr(plain_lr)
        elapsed = total_s + time.perf_counter() - started
        train_time = train_s + train_done
        record = EpochRecord(
            epoch=epoch,
            train_loss=loss_total / max(seen, 1),
            train_error=100.0 * wrong_total / max(seen, 1),
            test_error=test_error,
            test_top5_error=test_top5,
            lr=lr,
            epoch_seconds=elapsed,
            images_per_s=seen / train_time if train_time > 0 else 0.0,
            peak_memory_mb=peak_memory_mb(device),
        )
        self.history.append(record)
        self.epoch, self.step_in_epoch, self.partial = epoch, 0, None
        self.save()
        if self.progress:
            self.progress.epoch_end(record)
        if self.on_epoch:
            self.on_epoch(record)
        self.stop.check()

    def _nan_reason(self, epoch: int, step: int, value: float) -> str:
        return (
            f"non-finite training loss ({value}) at epoch {epoch}, step {step} "
            f"(global step {self.global_step})"
        )

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float | None]:
        """Test error % (top-1, and top-5 when asked), in eval mode on the whole test split."""
        self.model.eval()
        wrong1 = torch.zeros((), dtype=torch.int64, device=self.device)
        wrong5 = torch.zeros((), dtype=torch.int64, device=self.device)
        seen = 0
        for x, y in self.test_batches.batches(0):
            with self.execution.autocast():
                logits = self.model(x)
            wrong1 += (logits.argmax(dim=1) != y).sum()
            if self.top5:
                top = logits.topk(min(5, logits.shape[1]), dim=1).indices
                wrong5 += (~(top == y[:, None]).any(dim=1)).sum()
            seen += y.numel()
            if self.stop.signum is not None:
                raise _StopInEval
        self.model.train()
        seen = max(seen, 1)
        top5 = 100.0 * int(wrong5) / seen if self.top5 else None
        return 100.0 * int(wrong1) / seen, top5


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20
