"""The processes one run trains in: alone (a world of one), or a torchrun group.

The session and the trainer talk to this interface only, so they hold no "am I distributed?"
branches: alone, rank 0 of 1 decides, ``barrier`` has nobody to wait for and ``sum`` is the
identity; :class:`rkrepro.training.distributed.TorchrunWorld` does the same for N processes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from rkrepro.training.signals import StopSignal

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

T = TypeVar("T")


class World:
    """One process training alone: rank 0 of a world of 1."""

    rank = 0
    size = 1

    def __init__(self, device: torch.device) -> None:
        self.device = device

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that decides, logs to MLflow and writes checkpoints."""
        return self.rank == 0

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 and give every process its result (or its error)."""
        return fn()

    def barrier(self) -> None:
        """Wait until every process is here."""

    def sum(self, tensor: Tensor) -> Tensor:
        """``tensor`` summed over the processes (an epoch's loss, errors and images)."""
        return tensor

    def stop_signal(self) -> StopSignal:
        """The stop request every process acts on at the same step."""
        return StopSignal()

    def shard(self, train: Any, test: Any, stop: StopSignal) -> tuple[Any, Any]:
        """This process's training batches and test batches (rank 0 evaluates)."""
        return train, test

    def wrap(self, model: nn.Module, sync_bn: bool = False) -> nn.Module:
        """The placed model as this world trains it (DDP in a group)."""
        return model

    def close(self) -> None:
        """Leave the world (a group's processes disband)."""
