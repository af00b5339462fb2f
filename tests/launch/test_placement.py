"""Where jobs go (:mod:`rkrepro.launch.placement`): checked before anything starts, one line."""

from __future__ import annotations

import pytest
from helpers_run import Workspace, invoke

from rkrepro.errors import RkreproError
from rkrepro.launch import placement


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gpus", "0,1"], "--gpus 0,1: no CUDA GPU is visible on this machine"),
        (["--gpus", "0,x"], "expected GPU indices like 0,1,2,3"),
        (["--gpus", "0", "--cpu-jobs", "2"], "use either --gpus or --cpu-jobs"),
        (["--jobs-per-gpu", "2"], "--jobs-per-gpu needs --gpus"),
        (["--launcher", "mpi"], "unknown --launcher 'mpi'"),
        (["--launcher", "torchrun"], "no CUDA GPU is visible here"),
        (
            ["--launcher", "torchrun", "--nproc-per-node", "3", "--device", "cpu"],
            "the batch size 64 of tiny/bc-k4/original/noshare does not divide over 3 processes",
        ),
        (["--nproc-per-node", "2"], "--nproc-per-node needs --launcher torchrun"),
        (["--launcher", "slurm"], '--launcher slurm: Could not detect "srun"'),
    ],
)
@pytest.mark.bad_input
def test_launch_options_fail_in_one_line(ws: Workspace, args: list[str], message: str) -> None:
    result = invoke("--epochs", "1", *args)
    assert result.exit_code == 2, result.output
    error = result.stderr.strip()
    assert error.startswith("Error: ") and "\n" not in error, result.output
    assert message in error, error
    assert ws.runs_of() == []


def test_slots_pin_one_gpu_each_through_the_visible_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    slots = placement.gpu_slots([0, 2], jobs_per_gpu=2)
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in slots] == ["4", "4", "6", "6"]
    assert {s.device for s in slots} == {"cuda:0"}
    groups = placement.gpu_slots([0, 1, 2, 3], nproc=2)
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in groups] == ["4,5", "6,7"]
    placement.check_gpus([0, 3], count=4)
    with pytest.raises(RkreproError, match="GPU 4 does not exist; 4 visible"):
        placement.check_gpus([4], count=4)
