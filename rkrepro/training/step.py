"""The training step of Section 4, and what wraps it on a GPU.

:class:`SgdStep` is the step itself, on one screen: forward, loss, backward, SGD update, and the
epoch's running loss and error summed on the device. :class:`CapturedStep` replays it as one
CUDA graph; :class:`LaggedReadout` reads the running sums for a progress bar without waiting for
the device. Neither changes the step's arithmetic.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rkrepro.training.setup import Execution

# Real training steps run eagerly (on a side stream) before the step is captured: cuDNN
# autotuning, optimizer state and autograd's lazy set-up must exist before capture.
GRAPH_WARMUP_STEPS = 3


class SgdStep:
    """One optimisation step on a batch; the running sums live on the device."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        execution: Execution,
    ) -> None:
        self.model, self.optimizer, self.scaler = model, optimizer, scaler
        # A captured step needs autocast's weight cache off; an eager one may keep it.
        self.autocast = lambda: execution.autocast(cache=not execution.captures_step)
        self.loss_sum = torch.zeros((), device=execution.device, dtype=torch.float64)
        self.wrong = torch.zeros((), device=execution.device, dtype=torch.int64)

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        with self.autocast():
            logits = self.model(x)
            loss = F.cross_entropy(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        with torch.no_grad():
            self.loss_sum += loss.detach().double() * y.numel()
            self.wrong += (logits.argmax(dim=1) != y).sum()
        return loss


class CapturedStep:
    """``step`` captured as one CUDA graph and replayed per batch: a replay copies the batch
    into static inputs and relaunches every kernel at once (no per-op launch overhead, no host
    synchronisation). Parameters, gradients, optimizer state, BatchNorm buffers and the running
    sums are updated in place by every replay.

    The first :data:`GRAPH_WARMUP_STEPS` steps run eagerly (on a side stream on CUDA), then the
    first full batch is captured; batches of another shape (an epoch's last, partial one) run
    eagerly. The learning rate becomes a device tensor that a replay reads. If capture fails the
    step stays eager. Off CUDA (the CPU tests of this logic) nothing is captured and a "replay"
    calls the step eagerly on the static inputs.
    """

    def __init__(self, step: SgdStep, full_batch: int, device: torch.device) -> None:
        self.step, self.full_batch, self.device = step, full_batch, device
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: tuple[Tensor, Tensor] | None = None
        self.failed = False
        self.eager_steps = 0
        self.lr_tensors: list[Tensor] = []

    def __call__(self, x: Tensor, y: Tensor) -> Tensor | None:
        """The step on ``x, y``: its loss when it ran eagerly, None for a replay."""
        if self.static is not None and self._fits(x, y):
            self._replay(x, y)
            return None
        ready = not self.failed and self.eager_steps >= GRAPH_WARMUP_STEPS
        if ready and self.static is None and x.shape[0] == self.full_batch and self._capture(x, y):
            self._replay(x, y)
            return None
        self.eager_steps += 1
        if self.device.type != "cuda" or self.static is not None or self.failed:
            return self.step(x, y)
        current = torch.cuda.current_stream(self.device)  # warm-up: on a side stream
        side = torch.cuda.Stream(self.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            loss = self.step(x, y)
        current.wait_stream(side)
        return loss

    def _fits(self, x: Tensor, y: Tensor) -> bool:
        sx, sy = self.static  # type: ignore[misc]
        return x.shape == sx.shape and x.stride() == sx.stride() and y.shape == sy.shape

    def _replay(self, x: Tensor, y: Tensor) -> None:
        sx, sy = self.static  # type: ignore[misc]
        sx.copy_(x)
        sy.copy_(y)
        if self.graph is not None:
            self.graph.replay()
        else:
            self.step(sx, sy)

    def _capture(self, x: Tensor, y: Tensor) -> bool:
        """Capture the step for batches shaped like ``x``. On failure train eagerly from now
        on: nothing runs during a capture, so the model and optimizer are untouched."""
        try:
            self._lr_to_device()
            self.step.optimizer.zero_grad(set_to_none=True)
            static = (x.clone(memory_format=torch.preserve_format), y.clone())
            if self.device.type == "cuda":
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    self.step(*static)
                self.graph = graph
            self.static = static
        except torch.cuda.OutOfMemoryError:
            raise  # not a capture problem: the trainer turns it into the --memory-efficient hint
        except Exception as error:  # noqa: BLE001 - any capture failure: fall back to eager
            print(f"warning: CUDA graph capture failed, training eagerly: {error}", file=sys.stderr)
            self.graph, self.static, self.failed = None, None, True
            self.step.optimizer.zero_grad(set_to_none=True)
            return False
        return True

    def _lr_to_device(self) -> None:
        """The learning rate as a device tensor that a replay reads (see :meth:`follow_lr`)."""
        self.lr_tensors = []
        for group in self.step.optimizer.param_groups:
            if not isinstance(group["lr"], Tensor):
                group["lr"] = torch.tensor(float(group["lr"]), device=self.device)
            self.lr_tensors.append(group["lr"])

    def follow_lr(self, plain: Callable[[float | Tensor], float]) -> None:
        """After a scheduler step: keep the captured learning-rate tensors current. torch
        versions whose scheduler replaces a tensor lr (instead of ``fill_``) would otherwise
        leave a replay reading the old rate for the rest of the run."""
        groups = self.step.optimizer.param_groups
        for group, tensor in zip(groups, self.lr_tensors, strict=False):
            if group["lr"] is not tensor:
                tensor.fill_(plain(group["lr"]))
                group["lr"] = tensor


class LaggedReadout:
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
