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

from rkrepro.checkpoints import CHECKPOINT_FORMAT, Checkpoints
from rkrepro.fast_path import FastPath
from rkrepro.spec import Protocol

# Test hook (documented in the README): make the loss of this global step (1-based) NaN.
FAULT_NAN_ENV = "RKREPRO_FAULT_NAN_AT_STEP"
# On CUDA, finiteness is checked every this many steps (a check is a host-device sync); with a
# captured step it is checked once per epoch instead.
CUDA_CHECK_EVERY = 50
# Real training steps run eagerly (on a side stream) before the step is captured: cuDNN
# autotuning, optimizer state and autograd's lazy set-up must exist before capture.
GRAPH_WARMUP_STEPS = 3
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
# The captured CUDA step.


class CudaGraphStep:
    """A captured training step: a replay copies a batch into static inputs and relaunches
    every kernel of ``body`` at once (no per-op launch overhead, no host synchronisation).

    Parameters, gradients, optimizer state, BatchNorm buffers and running sums are updated in
    place by every replay; one capture serves one batch shape. Off CUDA (the CPU tests of this
    logic) nothing is captured and a "replay" calls ``body`` eagerly on the static inputs after
    ``reset`` (setting the gradients to None, as a capture starts them: a replay writes them
    afresh, an eager backward would otherwise accumulate).
    """

    def __init__(
        self,
        body: Callable[[Tensor, Tensor], None],
        x: Tensor,
        y: Tensor,
        reset: Callable[[], None] | None = None,
    ) -> None:
        self.x = x.clone(memory_format=torch.preserve_format)
        self.y = y.clone()
        self.body, self.reset = body, reset
        self.graph: torch.cuda.CUDAGraph | None = None
        if x.device.type == "cuda":
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                body(self.x, self.y)

    def matches(self, x: Tensor, y: Tensor) -> bool:
        return x.shape == self.x.shape and x.stride() == self.x.stride() and y.shape == self.y.shape

    def __call__(self, x: Tensor, y: Tensor) -> None:
        self.x.copy_(x)
        self.y.copy_(y)
        if self.graph is not None:
            self.graph.replay()
            return
        if self.reset is not None:
            self.reset()
        self.body(self.x, self.y)


class _LaggedReadout:
    """Running sums copied to pinned host memory without waiting; a read returns the last
    copy that has landed, so a progress bar costs no host-device synchronisation. On the CPU
    a copy lands at once, so a read returns the previous request's sums (the same lag)."""

    def __init__(self, device: torch.device) -> None:
        cuda = device.type == "cuda"
        self.host = torch.zeros(2, dtype=torch.float64)
        self.host = self.host.pin_memory() if cuda else self.host
        self.event = torch.cuda.Event() if cuda else None
        self.pending_seen = 0
        self.value = (float("nan"), float("nan"))

    def request(self, loss_sum: Tensor, wrong: Tensor, seen: int) -> tuple[float, float]:
        landed = self.event is None or self.event.query()
        if self.pending_seen and landed:
            loss, bad = self.host.tolist()
            self.value = (loss / self.pending_seen, 100.0 * bad / self.pending_seen)
            self.pending_seen = 0
        if not self.pending_seen:
            self.host.copy_(torch.stack([loss_sum, wrong.double()]), non_blocking=True)
            if self.event is not None:
                self.event.record()
            self.pending_seen = seen
        return self.value


def keep_freed_memory() -> bool:
    """glibc ``mallopt``: serve every allocation from the heap (no per-tensor mmap) and never
    trim it, so a training step reuses the pages of the last one. False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**30))
    except (OSError, AttributeError):  # not glibc
        return False


def _as_float(value: float | Tensor) -> float:
    """A learning rate as a Python float; a float32 device tensor's value is rounded back to
    the 7 significant digits it holds (0.1, not 0.10000000149)."""
    return float(f"{value.item():.7g}") if isinstance(value, Tensor) else float(value)


# --------------------------------------------------------------------------------------------
# Setup helpers.


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_optimizer(model: nn.Module, protocol: Protocol, fused: bool = False) -> torch.optim.SGD:
    """Torch7 ``optim.sgd`` on the flat parameter vector: weight decay on every parameter
    (biases and BatchNorm too, "applied to all weights and biases"), dampening 0, Nesterov.
    ``fused`` (CUDA) does the whole update in one kernel, same arithmetic."""
    return torch.optim.SGD(
        model.parameters(),
        lr=protocol.lr,
        momentum=protocol.momentum,
        dampening=0.0,
        weight_decay=protocol.weight_decay,
        nesterov=protocol.nesterov,
        fused=True if fused else None,
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, protocol: Protocol
) -> torch.optim.lr_scheduler.MultiStepLR:
    return torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=list(protocol.lr_milestones), gamma=protocol.lr_gamma
    )


def rng_states() -> dict[str, Any]:
    """Every RNG's state as tensors, ints and tuples only: checkpoints load with
    ``weights_only=True``, which admits no NumPy object."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    numpy_state = states["numpy"]
    if isinstance(numpy_state, dict):
        keys = np.asarray(numpy_state["keys"].numpy(), dtype=np.uint32)
        numpy_state = (
            numpy_state["name"],
            keys,
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    np.random.set_state(numpy_state)
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


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
        fast: FastPath | None = None,
        emulate_cuda: bool = False,
    ) -> None:
        from torch.nn.parallel import DistributedDataParallel

        from rkrepro.models.densenet import set_feature_buffer

        # emulate_cuda: the CUDA step's logic on the CPU (see FastPath.for_device).
        self.fast = (fast if fast is not None else FastPath.from_env()).for_device(
            device, emulate_cuda
        )
        set_feature_buffer(model, self.fast.feature_buffer)
        wrapped = isinstance(model, DistributedDataParallel)
        if self.fast.channels_last and not wrapped:  # DDP: model_device_setup did it before
            model = model.to(memory_format=torch.channels_last)
        _set_cudnn_benchmark(self.fast)
        if self.fast.cpu_malloc:
            keep_freed_memory()
        self.model = model
        self.train_batches = train_batches
        self.test_batches = test_batches
        self.protocol = protocol
        self.device = device
        self.checkpoints = checkpoints
        self.run_id = run_id
        self.amp = amp and device.type == "cuda"
        # --amp keeps its fp16 + GradScaler; otherwise the fast path's bf16 needs no scaler.
        self.autocast_dtype = torch.float16 if self.amp else torch.bfloat16
        self.autocast = self.amp or self.fast.bf16
        self.top5 = top5
        self.progress = progress
        self.stop = stop or StopSignal()
        self.on_epoch = on_epoch
        self.checkpoint_every_s = checkpoint_every_s
        self.extra_state = extra_state or {}
        # Data-parallel runs (rkrepro.distributed): sums a tensor over every rank, so an epoch's
        # train loss/error/images count the whole data set, not this rank's shard.
        self.reduce_sums = reduce_sums
        self.optimizer = build_optimizer(model, protocol, fused=self.fast.fused_sgd)
        self.scheduler = build_scheduler(self.optimizer, protocol)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp)
        self.epoch = 0  # completed epochs
        self.step_in_epoch = 0
        self.partial: dict[str, float] | None = None
        self.global_step = 0
        self.history: list[EpochRecord] = []
        fault = os.environ.get(FAULT_NAN_ENV, "").strip()
        self.fault_step = int(fault) if fault.isdigit() else None
        # The scaler's inf check, the fault hook and DDP's bucketed all-reduce need the host
        # inside the step: those runs stay eager.
        self.use_graph = (
            self.fast.cuda_graph
            and not self.amp
            and self.fault_step is None
            and not wrapped
            and reduce_sums is None
        )
        self.graph: CudaGraphStep | None = None
        self._lr_tensors: list[Tensor] = []
        self._eager_steps = 0
        self._loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        self._wrong = torch.zeros((), device=device, dtype=torch.int64)

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
            "optimizer": self._optimizer_state(),
            "scheduler": self._scheduler_state(),
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

    def _optimizer_state(self) -> dict[str, Any]:
        """The optimizer's state with a float learning rate (a graph's device tensor is not
        something a checkpoint should carry)."""
        state = self.optimizer.state_dict()
        for group in state["param_groups"]:
            group["lr"] = _as_float(group["lr"])
        return state

    def _scheduler_state(self) -> dict[str, Any]:
        """The scheduler's state with float learning rates: a scheduler reading a tensor lr
        keeps copies of it (``_last_lr``), device tensors a CPU process could not load."""
        state = self.scheduler.state_dict()
        for key in ("_last_lr", "base_lrs"):
            if key in state:
                state[key] = [_as_float(v) for v in state[key]]
        return state

    # -- one step -------------------------------------------------------------------------

    def _forward(self, x: Tensor, y: Tensor, cache: bool = True) -> tuple[Tensor, Tensor]:
        dtype, enabled = self.autocast_dtype, self.autocast
        with torch.autocast(self.device.type, dtype=dtype, enabled=enabled, cache_enabled=cache):
            logits = self.model(x)
            loss = F.cross_entropy(logits, y)
        return logits, loss

    def _accumulate(self, logits: Tensor, loss: Tensor, y: Tensor) -> None:
        with torch.no_grad():
            self._loss_sum += loss.detach().double() * y.numel()
            self._wrong += (logits.argmax(dim=1) != y).sum()

    def _graph_body(self, x: Tensor, y: Tensor) -> None:
        """Forward, backward, SGD and running sums, with nothing that waits for the host."""
        logits, loss = self._forward(x, y, cache=False)
        loss.backward()
        self.optimizer.step()
        self._accumulate(logits, loss, y)

    def _lr_to_device(self) -> None:
        """Make the learning rate a device tensor that a replay reads; the scheduler updates
        it in place (``fill_``), so the captured step follows the schedule."""
        self._lr_tensors = []
        for group in self.optimizer.param_groups:
            if not isinstance(group["lr"], Tensor):
                group["lr"] = torch.tensor(float(group["lr"]), device=self.device)
            self._lr_tensors.append(group["lr"])

    def _step_scheduler(self) -> None:
        """Step the schedule and keep the captured learning-rate tensors current: torch
        versions whose scheduler replaces a tensor lr (instead of ``fill_``) would otherwise
        leave a replay reading the old rate for the rest of the run."""
        self.scheduler.step()
        for group, tensor in zip(self.optimizer.param_groups, self._lr_tensors, strict=False):
            if group["lr"] is not tensor:
                tensor.fill_(_as_float(group["lr"]))
                group["lr"] = tensor

    def _capture(self, x: Tensor, y: Tensor) -> bool:
        """Capture the step for batches shaped like ``x``. On failure train eagerly from now
        on: nothing runs during a capture, so the model and optimizer are untouched."""
        try:
            self._lr_to_device()
            self.optimizer.zero_grad(set_to_none=True)
            reset = None if x.device.type == "cuda" else self._zero_grad
            self.graph = CudaGraphStep(self._graph_body, x, y, reset)
        except torch.cuda.OutOfMemoryError:
            raise  # not a capture problem: fit() turns it into the --memory-efficient hint
        except Exception as error:  # noqa: BLE001 - any capture failure: fall back to eager
            print(f"warning: CUDA graph capture failed, training eagerly: {error}", file=sys.stderr)
            self.graph, self.use_graph = None, False
            self.optimizer.zero_grad(set_to_none=True)
            return False
        return True

    def _zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def train_step(self, x: Tensor, y: Tensor, epoch: int = 0, step: int = 0) -> None:
        """One step exactly as :meth:`fit` takes it (memory format, captured graph or eager);
        the loss and error go into the device-side running sums (:attr:`running_sums`)."""
        if self.fast.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        self.global_step += 1
        self._train_step(x, y, epoch, step)

    @property
    def running_sums(self) -> tuple[Tensor, Tensor]:
        """(sum of loss x batch size, wrong predictions) of the epoch so far, on the device."""
        return self._loss_sum, self._wrong

    def _train_step(self, x: Tensor, y: Tensor, epoch: int, step: int) -> None:
        """One optimisation step: a graph replay (CUDA, full batches after warm-up), or eager
        (CPU, warm-up, the last partial batch of an epoch, or when capture is off)."""
        if self.use_graph:
            if self.graph is not None and self.graph.matches(x, y):
                self.graph(x, y)
                return
            full = x.shape[0] == self.protocol.batch_size
            warm = self._eager_steps >= GRAPH_WARMUP_STEPS
            if full and warm and self.graph is None and self._capture(x, y):
                assert self.graph is not None
                self.graph(x, y)
                return
            if self.graph is None and self.use_graph and self.device.type == "cuda":
                # Warm-up runs on a side stream, as capture requires.
                current = torch.cuda.current_stream(self.device)
                side = torch.cuda.Stream(self.device)
                side.wait_stream(current)
                with torch.cuda.stream(side):
                    self._eager_step(x, y, epoch, step)
                current.wait_stream(side)
                return
        self._eager_step(x, y, epoch, step)

    def _eager_step(self, x: Tensor, y: Tensor, epoch: int, step: int) -> None:
        logits, loss = self._forward(x, y)
        if self.fault_step is not None and self.global_step == self.fault_step:
            loss = loss * float("nan")
        if self.device.type == "cpu" and not math.isfinite(loss.item()):
            raise NonFiniteLoss(self._nan_reason(epoch, step + 1, loss.item()))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self._accumulate(logits, loss, y)
        self._eager_steps += 1

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
        loss_sum, wrong = self._loss_sum, self._wrong  # updated in place (also by the graph)
        loss_sum.fill_(float(p.get("loss_sum", 0.0)))
        wrong.fill_(int(p.get("wrong", 0)))
        seen = int(p.get("seen", 0))
        train_s = float(p.get("train_s", 0.0))
        total_s = float(p.get("total_s", 0.0))
        lr = _as_float(self.optimizer.param_groups[0]["lr"])
        readout = _LaggedReadout(device) if self.use_graph else None
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
            self.train_step(x, y, epoch, step)
            seen += y.numel()
            step += 1
            check = (
                device.type == "cuda"
                and not self.use_graph
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
        self._step_scheduler()
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
        autocast = torch.autocast(
            self.device.type, dtype=self.autocast_dtype, enabled=self.autocast
        )
        for x, y in self.test_batches.batches(0):
            if self.fast.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
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


def _set_cudnn_benchmark(fast: FastPath) -> None:
    """cuDNN autotunes each convolution shape once (the fast path's ``cudnn_benchmark``)."""
    if fast.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True


def model_device_setup(
    model: nn.Module, device: torch.device, fast: FastPath | None = None
) -> nn.Module:
    """Move to ``device`` with the fast path's memory format and cuDNN autotuning
    (``fast`` defaults to :data:`FAST_PATH_ENV`, else everything on)."""
    fast = (fast if fast is not None else FastPath.from_env()).for_device(device)
    _set_cudnn_benchmark(fast)
    if fast.channels_last:
        return model.to(device, memory_format=torch.channels_last)
    return model.to(device)


__all__ = [
    "CudaGraphStep",
    "EpochRecord",
    "Interrupted",
    "NonFiniteLoss",
    "RunFailure",
    "StopSignal",
    "Trainer",
    "build_optimizer",
    "build_scheduler",
    "history_csv",
    "seed_everything",
]
