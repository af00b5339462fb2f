"""A DDP job: torchrun of the same ``rkrepro run`` (:mod:`rkrepro.launch.torchrun`, ``jobs``)."""

from __future__ import annotations

import signal

import helpers_cifar as h
import helpers_workspace as ws_helpers
import pytest
from helpers_launch import series, start_run
from helpers_run import VARIANT, Workspace

from rkrepro.launch import jobs
from rkrepro.planning import options as run_options
from rkrepro.planning import plan as plans
from rkrepro.tracking import keys as mlflow_keys


@pytest.mark.fault
def test_torchrun_job_stops_on_sigterm_and_resumes_the_same_run(ws: Workspace) -> None:
    """Real torchrun (2 gloo ranks, the real DenseNet, per-GPU BatchNorm) under the queue."""
    h.write_random_cifar10(ws.data, n_train=512, n_test=64)
    args = ("--variant", "original", "--no-share", "--epochs", "6")
    args += ("--launcher", "torchrun", "--nproc-per-node", "2", "--device", "cpu")
    proc = start_run(ws, *args)
    ws_helpers.wait_for_epoch(ws.runs, 1, lambda: proc.poll() is None, timeout=180)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, output
    (stopped,) = ws.runs_of()
    assert stopped.info.status == "KILLED", output
    log = next((ws.runs / "logs").rglob("*.log")).read_text()
    assert "stopped; checkpoint saved" in log and "x 2 processes" in log

    again = start_run(ws, *args)
    output = again.communicate(timeout=240)[0]
    assert again.returncode == 0, output
    (run,) = ws.runs_of()
    assert run.info.run_id == stopped.info.run_id and run.info.status == "FINISHED"
    assert "resuming run" in next((ws.runs / "logs").rglob("*.log")).read_text()
    assert run.data.tags[mlflow_keys.TAG_WORLD_SIZE] == "2"
    for name in (mlflow_keys.M_TRAIN_LOSS, mlflow_keys.M_TEST_ERROR):
        assert [s for s, _ in series(ws, run.info.run_id, name)] == list(range(1, 7))


def test_a_ddp_job_is_torchrun_of_the_same_rkrepro_command(ws: Workspace) -> None:
    from rkrepro import paper

    cells = paper.resolve_cells(paper.load_tables(), "tiny", "bc-k4", [VARIANT], "share")
    options = run_options.RunOptions(epochs=2, sync_bn=True, fast_path="-cuda_graph")
    (plan,) = plans.make_plans(cells, [3], options, "cuda")
    job = jobs.job_for(plan, "auto", nproc=4)
    args = list(job.args)
    assert args[:2] == ["-m", "rkrepro.launch.torchrun"] and "--nproc-per-node=4" in args
    rk = args[args.index("rkrepro") + 1 :]
    assert rk[:9] == [
        "run",
        "tiny",
        "--row",
        "bc-k4",
        "--variant",
        VARIANT,
        "--share",
        "--seed",
        "3",
    ]
    assert "--sync-bn" in rk and rk[rk.index("--launcher") + 1] == "torchrun"
    assert rk[rk.index("--fast-path") + 1] == "-cuda_graph"  # the job plans the same precision
    assert rk[rk.index("--tracking-uri") + 1].startswith("sqlite:////")
    assert job.log.name == f"{VARIANT}-share-seed3.log"
