"""The precision choice (:mod:`rkrepro.planning.precision`): fp32 by default, identity, hashes."""

from __future__ import annotations

import pytest
from helpers_training import (
    PAPER,
    TINY,
)

from rkrepro.errors import RkreproError
from rkrepro.planning.options import RunOptions
from rkrepro.planning.plan import make_plans


def test_precision_is_identity_and_fp32_hashes_are_stable() -> None:
    """fp32 (the paper's) is the default on every device; tf32, bf16 and fp16 name other runs;
    the overhead switches do not; fp32, fp16 and bf16 configurations hash as they did before
    the precision became a choice, so the runs already in users' stores are still found."""
    from rkrepro.paper import Cell
    from rkrepro.tracking.keys import (
        PRECISION_BF16,
        PRECISION_FP16_AMP,
        PRECISION_FP32,
        PRECISION_TF32,
    )

    cell = Cell("t", "r", "original", False, TINY, PAPER, None, None, None)

    def plan(device_type: str, **options):
        return make_plans([cell], [0], RunOptions(**options), device_type)[0]

    cpu = plan("cpu")
    assert cpu.precision == PRECISION_FP32 and cpu.fast_path == "channels_last,cpu_malloc"
    assert cpu.config_hash == "30dfd6c758a2e5ed"  # computed by the code before precision existed
    cuda = plan("cuda")
    assert cuda.precision == PRECISION_FP32 and cuda.config_hash == cpu.config_hash  # default
    assert "cpu_malloc" not in cuda.fast_path and "cuda_graph" in cuda.fast_path
    assert plan("cuda", fast_path="off").config_hash == cpu.config_hash
    assert plan("cpu", fast_path="off").fast_path == "off"
    bf16 = plan("cuda", precision="bf16")
    assert bf16.precision == PRECISION_BF16 and bf16.config_hash == "bf44559b36d09c26"  # as before
    amp = plan("cuda", precision="fp16")
    assert amp.precision == PRECISION_FP16_AMP and amp.config_hash == "2e18d35d33d3ae92"  # --amp
    tf32 = plan("cuda", precision="tf32")
    assert tf32.precision == PRECISION_TF32
    assert len({cpu.config_hash, bf16.config_hash, amp.config_hash, tf32.config_hash}) == 4
    assert plan("cuda", precision="bf16-autocast").config_hash == bf16.config_hash
    assert bf16.tags()["rkrepro.precision"] == PRECISION_BF16
    assert bf16.config()["precision"] == PRECISION_BF16
    args = RunOptions(precision="tf32").job_args()
    assert args[args.index("--precision") + 1] == "tf32"  # every launched job repeats it
    with pytest.raises(RkreproError, match="--precision bf16 needs a CUDA device"):
        plan("cpu", precision="bf16")
    with pytest.raises(RkreproError, match="--precision 'fp64': use one of fp32, tf32, bf16, fp16"):
        plan("cuda", precision="fp64")
    with pytest.raises(RkreproError, match="bad fast-path switch 'warp'"):
        plan("cpu", fast_path="warp")
