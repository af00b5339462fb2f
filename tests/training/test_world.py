"""The processes a run trains in (:mod:`rkrepro.training.world`): alone, a world of one in
which every collective is what it would be for one process, so the session needs no branch."""

from __future__ import annotations

import pytest
import torch

from rkrepro.training.signals import StopSignal
from rkrepro.training.world import World


def test_a_process_alone_is_rank_0_of_a_world_of_1() -> None:
    world = World(torch.device("cpu"))
    assert (world.rank, world.size, world.is_main) == (0, 1, True)
    assert world.on_main(lambda: "decided") == "decided"
    with pytest.raises(ValueError, match="rank 0's error"):  # raised where it was taken
        world.on_main(lambda: (_ for _ in ()).throw(ValueError("rank 0's error")))
    world.barrier()
    counts = torch.tensor([3.0, 1.0, 64.0])
    assert torch.equal(world.sum(counts), counts)
    train, test = object(), object()
    assert world.shard(train, test, world.stop_signal()) == (train, test)
    model = torch.nn.Linear(2, 2)
    assert world.wrap(model) is model
    stop = world.stop_signal()
    assert type(stop) is StopSignal and stop.signum is None
    stop.sync()  # nothing to agree on alone
    assert stop.signum is None
