"""The random draws every data set shares: per-epoch seeds, data-parallel shards of a batch,
and the fixed ``--train-subset`` draw. Every random choice of an epoch comes from a generator
seeded by (seed, epoch), so a run resumed at any step sees exactly the batches it would have
seen uninterrupted."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

# The --train-subset draw does not depend on the run's seed, so every model and seed of a
# shortened sweep trains on the same images.
SUBSET_SEED = 20180201


def epoch_seed(seed: int, epoch: int, purpose: str = "train") -> int:
    """A 63-bit seed from (seed, epoch): independent streams per epoch, same on every resume."""
    digest = hashlib.sha256(f"rkrepro:{purpose}:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def shard_bounds(lo: int, hi: int, shard: tuple[int, int]) -> tuple[int, int]:
    """A rank's part ``(rank, world)`` of the global batch ``[lo, hi)`` in data-parallel runs.

    Every rank gets ``(hi - lo) // world`` images, so each rank's gradient has the same weight
    in DDP's average; the last batch's remainder (fewer than ``world`` images) is left out.
    """
    rank, world = shard
    per = (hi - lo) // world
    return lo + rank * per, lo + (rank + 1) * per


def sharded_len(n: int, batch_size: int, world: int) -> int:
    """Steps per epoch: the global batches, less a last one too small to give every rank one."""
    steps = math.ceil(n / batch_size)
    if world > 1 and steps and n - (steps - 1) * batch_size < world:
        steps -= 1
    return steps


def subset_indices(n: int, size: int | None) -> Tensor | None:
    """The fixed random subset of ``size`` training images, or None for the whole set."""
    if size is None or size >= n:
        return None
    gen = torch.Generator().manual_seed(SUBSET_SEED)
    return torch.randperm(n, generator=gen)[:size].sort().values


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """torch's global CPU generator seeded with ``seed`` inside, as it was after. Only the CPU
    generator: ``torch.manual_seed`` would also queue a seed for every accelerator, with a
    captured stack trace each time (about a millisecond per image in a DataLoader worker)."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield
