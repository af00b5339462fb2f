"""The training loop of Section 4: SGD + Nesterov, step decay, checkpoints that resume exactly.

Tracking-agnostic on purpose: the runner passes callbacks, so this module knows nothing of
MLflow and can be tested on its own. Everything random is either restored from a checkpoint
(model, optimiser, scheduler, scaler, global RNG states) or derived from (seed, epoch) by the
batch sources, which is what makes a resumed CPU run bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import resource
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any
from typing import Protocol as TypingProtocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rkrepro.checkpoints import CHECKPOINT_FORMAT, CheckpointBusy, Checkpoints  # noqa: F401
from rkrepro.errors import RkreproError
from rkrepro.spec import Protocol

# Test hook (documented in the README): make the loss of this global step (1-based) NaN.
FAULT_NAN_ENV = "RKREPRO_FAULT_NAN_AT_STEP"
# On CUDA, finiteness is checked every this many steps (a check is a host-device sync).
CUDA_CHECK_EVERY = 50
MEMORY_EFFICIENT_HINT = "rerun with --memory-efficient (checkpointed dense layers)"


class RunFailure(Exception):
    """This run cannot go on (NaN loss, out of memory); the command goes on to the next one."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NonFiniteLoss(RunFailure):
    pass


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; a checkpoint was written before this was raised."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class BatchSource(TypingProtocol):
    num_samples: int

    def __len__(self) -> int: ...

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]: ...


class Progress(TypingProtocol):
    def epoch_start(self, epoch: int, epochs: int, steps: int, done: int) -> None: ...

    def step(self, done: int, loss: float, error: float) -> None: ...

    def epoch_end(self, record: EpochRecord) -> None: ...


@dataclass
class EpochRecord:
    """One epoch's numbers; errors in %, memory in MiB (process peak RSS on CPU)."""

    epoch: int
    train_loss: float
    train_error: float
    test_error: float
    test_top5_error: float | None
    lr: float
    epoch_seconds: float
    images_per_s: float
    peak_memory_mb: float


# --------------------------------------------------------------------------------------------
# Setup helpers.


def resolve_device(name: str) -> torch.device:
    """``auto`` -> the first GPU if there is one, else the CPU; ``cuda:N`` must exist."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RkreproError(f"unknown device {name!r}: use auto, cpu or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RkreproError(f"device {name} asked for, but CUDA is not available here")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise RkreproError(
                f"device {name} asked for, but there are {torch.cuda.device_count()} GPUs"
            )
        return torch.device("cuda", index)
    if device.type != "cpu":
        raise RkreproError(f"unsupported device {name!r}: use auto, cpu or cuda:N")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_optimizer(model: nn.Module, protocol: Protocol) -> torch.optim.SGD:
    """Torch7 ``optim.sgd`` on the flat parameter vector: weight decay on every parameter
    (biases and BatchNorm too, "applied to all weights and biases"), dampening 0, Nesterov."""
    return torch.optim.SGD(
        model.parameters(),
        lr=protocol.lr,
        momentum=protocol.momentum,
        dampening=0.0,
        weight_decay=protocol.weight_decay,
        nesterov=protocol.nesterov,
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, protocol: Protocol
) -> torch.optim.lr_scheduler.MultiStepLR:
    return torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=list(protocol.lr_milestones), gamma=protocol.lr_gamma
    )


def rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


# --------------------------------------------------------------------------------------------
# Checkpoints.


# --------------------------------------------------------------------------------------------
# Signals.


class StopSignal:
    """Turns the first SIGINT/SIGTERM into a request the loop honours at the next step.

    A second SIGINT raises KeyboardInterrupt at once, for when saving itself hangs.
    """

    def __init__(self) -> None:
        self.signum: int | None = None

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignal]:
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)

    def check(self) -> None:
        if self.signum is not None:
            raise Interrupted(self.signum)


class _StopInEval(Exception):
    pass


# --------------------------------------------------------------------------------------------
# The loop.


class Trainer:
    """Trains one model under one (possibly shortened) protocol, checkpointing every epoch."""

    def __init__(
        self,
        model: nn.Module,
        train_batches: BatchSource,
        test_batches: BatchSource,
        protocol: Protocol,
        device: torch.device,
        checkpoints: Checkpoints,
        *,
        run_id: str | None = None,
        amp: bool = False,
        top5: bool = False,
        progress: Progress | None = None,
        stop: StopSignal | None = None,
        on_epoch: Callable[[EpochRecord], None] | None = None,
        checkpoint_every_s: float = 900.0,
        extra_state: dict[str, Any] | None = None,
        reduce_sums: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        self.model = model
        self.train_batches = train_batches
        self.test_batches = test_batches
        self.protocol = protocol
        self.device = device
        self.checkpoints = checkpoints
        self.run_id = run_id
        self.amp = amp and device.type == "cuda"
        self.top5 = top5
        self.progress = progress
        self.stop = stop or StopSignal()
        self.on_epoch = on_epoch
        self.checkpoint_every_s = checkpoint_every_s
        self.extra_state = extra_state or {}
        # Data-parallel runs (rkrepro.distributed): sums a tensor over every rank, so an epoch's
        # train loss/error/images count the whole data set, not this rank's shard.
        self.reduce_sums = reduce_sums
        self.optimizer = build_optimizer(model, protocol)
        self.scheduler = build_scheduler(self.optimizer, protocol)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp)
        self.epoch = 0  # completed epochs
        self.step_in_epoch = 0
        self.partial: dict[str, float] | None = None
        self.global_step = 0
        self.history: list[EpochRecord] = []
        fault = os.environ.get(FAULT_NAN_ENV, "").strip()
        self.fault_step = int(fault) if fault.isdigit() else None

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
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
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
        self.partial = state.get("partial")
        self.global_step = int(state.get("global_step") or 0)
        self.history = [EpochRecord(**r) for r in state.get("history", [])]
        set_rng_states(state["rng"])

    def save(self) -> None:
        self.checkpoints.save(self.state())

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
        loss_sum = torch.tensor(float(p.get("loss_sum", 0.0)), device=device, dtype=torch.float64)
        wrong = torch.tensor(int(p.get("wrong", 0)), device=device, dtype=torch.int64)
        seen = int(p.get("seen", 0))
        train_s = float(p.get("train_s", 0.0))
        total_s = float(p.get("total_s", 0.0))
        lr = self.optimizer.param_groups[0]["lr"]
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
        autocast = torch.autocast(device.type, dtype=torch.float16, enabled=self.amp)
        for x, y in self.train_batches.batches(epoch, start=step):
            with autocast:
                logits = model(x)
                loss = F.cross_entropy(logits, y)
            self.global_step += 1
            if self.fault_step is not None and self.global_step == self.fault_step:
                loss = loss * float("nan")
            if device.type == "cpu" and not math.isfinite(loss.item()):
                raise NonFiniteLoss(self._nan_reason(epoch, step + 1, loss.item()))
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            with torch.no_grad():
                n = y.numel()
                loss_sum += loss.detach().double() * n
                wrong += (logits.argmax(dim=1) != y).sum()
                seen += n
            step += 1
            check = device.type == "cuda" and (step % CUDA_CHECK_EVERY == 0 or step == steps)
            if check and not math.isfinite(float(loss_sum)):
                raise NonFiniteLoss(self._nan_reason(epoch, step, float("nan")))
            if self.progress and (device.type == "cpu" or step % 20 == 0 or step == steps):
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
        if self.reduce_sums is not None:
            counts = torch.stack([loss_sum, wrong.double(), loss_sum.new_tensor(float(seen))])
            counts = self.reduce_sums(counts)
            loss_sum, wrong, seen = counts[0], counts[1].long(), int(counts[2].item())
        if seen and not math.isfinite(float(loss_sum)):
            raise NonFiniteLoss(self._nan_reason(epoch, step, float("nan")))
        try:
            test_error, test_top5 = self.evaluate()
        except _StopInEval:
            snapshot(step, started, train_done)
            self.save()
            self.stop.check()
            raise
        self.scheduler.step()
        elapsed = total_s + time.perf_counter() - started
        train_time = train_s + train_done
        record = EpochRecord(
            epoch=epoch,
            train_loss=float(loss_sum) / max(seen, 1),
            train_error=100.0 * int(wrong) / max(seen, 1),
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
        autocast = torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp)
        for x, y in self.test_batches.batches(0):
            with autocast:
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


def history_csv(history: list[EpochRecord]) -> str:
    """Per-epoch metrics as CSV text (the run's metrics artifact)."""
    fields = list(EpochRecord.__dataclass_fields__)
    lines = [",".join(fields)]
    for record in history:
        values = asdict(record)
        lines.append(",".join("" if values[f] is None else repr(values[f]) for f in fields))
    return "\n".join(lines) + "\n"


def model_device_setup(model: nn.Module, device: torch.device) -> nn.Module:
    """Move to ``device``; on CUDA use channels-last and let cuDNN pick the fastest kernels."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        return model.to(device, memory_format=torch.channels_last)
    return model.to(device)


__all__ = [
    "Checkpoints",
    "EpochRecord",
    "Interrupted",
    "NonFiniteLoss",
    "RunFailure",
    "StopSignal",
    "Trainer",
    "build_optimizer",
    "build_scheduler",
    "history_csv",
    "resolve_device",
    "seed_everything",
]
