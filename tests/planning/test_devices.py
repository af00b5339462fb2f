"""Where runs train (:mod:`rkrepro.planning.devices`)."""

from __future__ import annotations

import pytest
import torch
from helpers_training import (
    CPU,
)

from rkrepro.errors import RkreproError
from rkrepro.planning.devices import resolve_device


def test_resolve_device() -> None:
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(RkreproError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RkreproError, match="CUDA is not available"):
            resolve_device("cuda:0")
