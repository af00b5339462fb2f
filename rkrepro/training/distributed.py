"""One run trained data-parallel over several processes started by torchrun (DDP).

What stays the paper's: the global batch and the learning rate (each rank trains on
``batch / world`` images of every global batch, and DDP averages the gradients, so one step is
the step of one process on the whole batch); BatchNorm normalises per GPU, as the original
multi-GPU Torch training did, unless ``--sync-bn``. What changes: nothing else. Rank 0 alone
talks to MLflow and writes checkpoints; a checkpoint holds the plain model's state, so a run
resumes on any number of GPUs, or on one.

Every decision that only rank 0 can take (is this run done, which MLflow run, is there a
checkpoint) is taken there and broadcast (:meth:`TorchrunWorld.on_main`); a signal is acted on
at the same step on every rank (:class:`DistributedStop`), so no rank waits forever in a
collective. :class:`TorchrunWorld` is the same interface as the world of one process
(:class:`rkrepro.training.world.World`), so nothing above it branches on being distributed.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from rkrepro.errors import RkreproError
from rkrepro.planning.devices import planned_device_type
from rkrepro.training.signals import StopSignal
from rkrepro.training.world import World

# A rank stuck in a collective (another rank died) fails after this instead of hanging.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)

T = TypeVar("T")


class TorchrunWorld(World):
    """This process's place in the torchrun group, and the collectives a run needs."""

    def __init__(
        self,
        rank: int,
        size: int,
        local_rank: int,
        device: torch.device,
        backend: str,
        cpu_group: Any,  # gloo group for host-side collectives (flags, small objects)
    ) -> None:
        super().__init__(device)
        self.rank, self.size, self.local_rank = rank, size, local_rank
        self.backend, self.cpu_group = backend, cpu_group

    def sum(self, tensor: Tensor) -> Tensor:
        """Sum over ranks, on the training device."""
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def max_int(self, value: int) -> int:
        flag = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.cpu_group)
        return int(flag.item())

    def broadcast(self, obj: T) -> T:
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.cpu_group)
        return box[0]

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 and hand its result, or its error, to every rank."""
        outcome: tuple[bool, Any] = (True, None)
        if self.is_main:
            try:
                outcome = (True, fn())
            except BaseException as error:  # noqa: BLE001 - re-raised on every rank below
                outcome = (False, error)
        ok, value = self.broadcast(outcome)
        if ok:
            return value
        if self.is_main:
            raise value
        if isinstance(value, RkreproError):
            raise value  # the same one-line message and exit code on every rank
        raise RkreproError(f"rank 0 failed: {type(value).__name__}: {value}")

    def barrier(self) -> None:
        dist.barrier(group=self.cpu_group)

    def stop_signal(self) -> DistributedStop:
        return DistributedStop(self)

    def shard(self, train: Any, test: Any, stop: StopSignal) -> tuple[Any, Any]:
        """This rank's share of every global batch of ``train`` (same order on every rank);
        rank 0 alone evaluates, the others get no test batches."""
        assert isinstance(stop, DistributedStop)
        train.shard = (self.rank, self.size)
        return SyncedBatches(train, stop), test if self.is_main else NoBatches()

    def wrap(self, model: nn.Module, sync_bn: bool = False) -> nn.Module:
        """DDP of the placed model. Rank 0's weights and BatchNorm statistics are broadcast at
        the start and its running statistics before every forward (what the test-time model of
        the multi-GPU Torch code was: the first GPU's)."""
        if sync_bn:
            if self.device.type != "cuda":
                raise RkreproError("--sync-bn needs CUDA GPUs (torch's SyncBatchNorm is GPU-only)")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DataParallel(model, device_ids=device_ids)

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def join(device_name: str = "auto") -> TorchrunWorld:
    """Join the group torchrun set up: NCCL on CUDA (GPU = LOCAL_RANK), gloo on the CPU."""
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    use_cuda = planned_device_type(device_name) == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RkreproError(f"device {device_name} asked for, but CUDA is not available here")
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise RkreproError(
                f"local rank {local_rank} has no GPU: {torch.cuda.device_count()} visible, "
                f"lower --nproc-per-node"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"backend": backend, "timeout": COLLECTIVE_TIMEOUT}
        if backend == "nccl":
            kwargs["device_id"] = device
        dist.init_process_group(**kwargs)
    cpu_group = dist.new_group(backend="gloo") if backend != "gloo" else None
    return TorchrunWorld(rank, world, local_rank, device, backend, cpu_group)


# --------------------------------------------------------------------------------------------
# Stopping together.


class DistributedStop(StopSignal):
    """SIGINT/SIGTERM on any rank stops every rank after the same step.

    The handler only notes the signal; :meth:`sync` (called by :class:`SyncedBatches` each time
    a training batch is fetched, which every rank does equally often) all-reduces it, and only
    then does ``signum`` change. So every rank reads the same ``signum`` at the same point of
    the loop, saves (rank 0) and raises ``Interrupted`` together.
    """

    def __init__(self, world: TorchrunWorld) -> None:
        super().__init__()
        self.world = world
        self.pending: int | None = None

    def _handle(self, signum: int, frame: object) -> None:
        if self.pending is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.pending = signum

    def sync(self) -> None:
        agreed = self.world.max_int(self.pending or 0)
        if agreed and self.signum is None:
            self.signum = agreed


class SyncedBatches:
    """A rank's training batches, with a stop check that is collective on every fetch."""

    def __init__(self, source: Any, stop: DistributedStop) -> None:
        self.source = source
        self.stop = stop

    @property
    def num_samples(self) -> int:
        return self.source.num_samples

    def __len__(self) -> int:
        return len(self.source)

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        for batch in self.source.batches(epoch, start):
            self.stop.sync()
            yield batch
        self.stop.sync()


class NoBatches:
    """The test split of ranks other than 0: rank 0 alone evaluates (and logs) the model."""

    num_samples = 0

    def __len__(self) -> int:
        return 0

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        return iter(())


# --------------------------------------------------------------------------------------------
# The model.


class DataParallel(DistributedDataParallel):
    """DDP whose state is the plain model's (checkpoints load on one GPU or many), and whose
    evaluation skips DDP (rank 0 evaluates alone: no collective may run there)."""

    def forward(self, *inputs: Any, **kwargs: Any) -> Any:
        if not self.training:
            return self.module(*inputs, **kwargs)
        return super().forward(*inputs, **kwargs)

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return self.module.load_state_dict(*args, **kwargs)
