"""Checkpoints (:mod:`rkrepro.training.checkpoints`): atomic, plain data, read defensively."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from helpers_training import (
    PAPER,
    tiny_trainer,
)

from rkrepro.training import state
from rkrepro.training.checkpoints import CHECKPOINT_FORMAT, Checkpoints


def test_checkpoints_are_atomic_and_fall_back_to_prev(tmp_path: Path) -> None:
    ck = Checkpoints(tmp_path)
    state = {"format": CHECKPOINT_FORMAT, "epoch": 1, "run_id": "a"}
    ck.save(state)
    ck.save({**state, "epoch": 2})
    assert ck.load()["epoch"] == 2 and ck.peek()["epoch"] == 2
    ck.last.write_bytes(ck.last.read_bytes()[:10])  # torn write
    assert ck.load()["epoch"] == 1
    assert not list(tmp_path.glob("*.tmp"))


def test_checkpoint_state_is_plain_data_and_older_numpy_rng_still_loads(tmp_path: Path) -> None:
    """The trainer's state needs no global beyond torch's weights-only allow-list; a checkpoint
    written before (NumPy's RNG tuple inside) still loads, through the scoped NumPy allow-list."""
    import io

    import numpy as np

    trainer = tiny_trainer(tmp_path / "a", replace(PAPER, epochs=1, lr_milestones=(1,)))
    buffer = io.BytesIO()
    torch.save(trainer.state(), buffer)
    buffer.seek(0)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(buffer) == []

    old = {**trainer.state(), "rng": {**state.rng_states(), "numpy": np.random.get_state()}}
    ck = Checkpoints(tmp_path / "old")
    ck.save(old)
    expected = np.random.get_state()[1].copy()
    np.random.seed(99)
    state.set_rng_states(ck.load()["rng"])
    assert (np.random.get_state()[1] == expected).all()
