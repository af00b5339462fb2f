"""The fast path's switches (:mod:`rkrepro.planning.fast_path`)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from helpers_training import (
    CPU,
)

from rkrepro.errors import RkreproError
from rkrepro.planning.fast_path import FastPath


def test_fast_path_switches_parse_and_apply_per_device() -> None:
    on, off = FastPath(), FastPath.off()
    assert all(getattr(on, f) for f in ("channels_last", "cuda_graph", "fused_sgd"))
    assert off.describe() == "off"
    assert FastPath.parse("") == on and FastPath.parse("off") == off
    assert FastPath.parse("-cuda_graph,-fused_sgd") == replace(
        on, cuda_graph=False, fused_sgd=False
    )
    assert FastPath.parse("off,+channels_last") == replace(off, channels_last=True)
    with pytest.raises(RkreproError, match="bad fast-path switch"):
        FastPath.parse("-warp_speed")
    with pytest.raises(RkreproError, match="use --precision bf16"):
        FastPath.parse("-bf16")  # the precision is not an overhead switch
    cpu = on.for_device(CPU)
    assert cpu.channels_last and not cpu.feature_buffer
    assert not (cpu.cuda_graph or cpu.fused_sgd or cpu.cudnn_benchmark)
