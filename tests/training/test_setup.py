"""One plan's way of training in this process (:mod:`rkrepro.training.setup`)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers_training import (
    CPU,
    PAPER,
    TINY,
    tiny_trainer,
)

from rkrepro.models import build_model
from rkrepro.planning.fast_path import FAST_PATH_ENV, FastPath
from rkrepro.training.setup import Execution


def test_an_fp32_process_configures_no_tf32() -> None:
    """PyTorch lets cuDNN use TF32 by default: fp32 (the paper's arithmetic) switches it off for
    convolutions and matrix products, tf32 switches it on, in one place per process."""
    from rkrepro.training.setup import apply_precision

    backends = torch.backends
    try:
        apply_precision("tf32")
        assert backends.cudnn.conv.fp32_precision == "tf32"
        assert backends.cuda.matmul.fp32_precision == "tf32"
        execution = Execution.local(CPU)
        execution.place(build_model(TINY))  # what every trainer does first
        assert backends.cudnn.conv.fp32_precision == "ieee"
        assert backends.cuda.matmul.fp32_precision == "ieee"
        assert backends.cudnn.rnn.fp32_precision == "ieee"
    finally:
        apply_precision("fp32")


def test_fast_path_env_reaches_the_trainer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rkrepro.models.densenet import DenseBlock

    monkeypatch.setenv(FAST_PATH_ENV, "off")
    trainer = tiny_trainer(tmp_path, replace(PAPER, epochs=1))
    assert trainer.execution.fast == FastPath.off()
    assert not any(m.feature_buffer for m in trainer.model.modules() if isinstance(m, DenseBlock))
    monkeypatch.setenv(FAST_PATH_ENV, "+feature_buffer")
    trainer = tiny_trainer(tmp_path, replace(PAPER, epochs=1))
    conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(m.feature_buffer for m in trainer.model.modules() if isinstance(m, DenseBlock))
