"""Parallel and cluster launches on the CPU: the local queue, DDP on gloo, submitit's local
executor, and several writers on one SQLite store.

What needs GPUs (NCCL, SyncBatchNorm, CUDA_VISIBLE_DEVICES pinning on real devices) and a real
SLURM cluster is not exercised here; the code paths they share with these tests are.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import helpers_cifar as h
import helpers_workspace as ws_helpers
import pytest
import test_run_cli as base
import torch

from rkrepro.errors import RkreproError
from rkrepro.launch import jobs, placement, slurm
from rkrepro.planning import options as run_options
from rkrepro.planning import plan as plans
from rkrepro.tracking import keys as mlflow_keys
from rkrepro.tracking import store

# The workspace of the run tests: a tiny table, tiny CIFAR files, an SQLite store (fixtures).
mlflow_template = base.mlflow_template
ws = base.ws
REPO, VARIANT, Workspace, invoke, _new_store = (
    base.REPO,
    base.VARIANT,
    base.Workspace,
    base.invoke,
    base._new_store,
)

# DDP vs one process at the same global batch, BatchNorm-free model: the only difference is the
# order of float32 sums (two half-batch gradients averaged vs one batch), so the per-epoch train
# loss agrees to this relative tolerance after every epoch.
DDP_RTOL = 1e-5


def _env(ws: Workspace, runs: Path | None = None, **extra: str) -> dict[str, str]:
    env = {**os.environ, **ws.env, "OMP_NUM_THREADS": "1", **extra}
    if runs is not None:
        env["RKREPRO_RUNS_DIR"] = str(runs)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _rkrepro(ws: Workspace, *args: str, **popen: object) -> subprocess.Popen:
    command = [sys.executable, "-m", "rkrepro", "run", "tiny", "--row", "bc-k4", *args]
    return subprocess.Popen(
        command,
        cwd=ws.root,
        env=_env(ws),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,  # type: ignore[arg-type]
    )


def _series(ws: Workspace, run_id: str, name: str, runs: Path | None = None) -> list:
    return sorted((m.step, m.value) for m in ws.client(runs).get_metric_history(run_id, name))


# --------------------------------------------------------------------------------------------
# Validation: one line, exit 2, before anything starts.


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


def test_dry_run_shows_the_plan_estimate(ws: Workspace) -> None:
    result = invoke("--dry-run", "--cpu-jobs", "2")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "status=" in line]
    assert len(lines) == 3 and all("hours=" in x and "peak_gb=" in x for x in lines)
    # CPU jobs: estimated by a short probe on the CPU, in CPU-hours (issue 17).
    assert "CPU-hours still to train (2 parallel slots)" in result.output
    assert "measured on CPU" in result.output


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


# --------------------------------------------------------------------------------------------
# SQLite: lock contention is waited out, not lost.


@pytest.mark.fault
def test_a_writer_waits_for_a_held_lock(ws: Workspace) -> None:
    db = ws.runs / "mlflow.db"
    client = store.client(f"sqlite:///{db}")
    client.search_experiments()  # the store is open before another process locks it
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    threading.Timer(1.0, lambda: holder.execute("COMMIT")).start()
    started = time.monotonic()
    exp = client.create_experiment("locked-out")
    assert time.monotonic() - started >= 0.9 and client.get_experiment(exp).name == "locked-out"
    holder.close()


@pytest.mark.fault
def test_four_concurrent_jobs_lose_nothing(ws: Workspace) -> None:
    """4 real subprocesses write 4 runs to one SQLite store at the same time."""
    h.write_random_cifar10(ws.data, n_train=640, n_test=64)  # epochs outlast the start-up
    epochs = 4
    proc = _rkrepro(
        ws,
        *("--variant", "original", "--variant", VARIANT, "--no-share", "--seeds", "2"),
        *("--epochs", str(epochs), "--cpu-jobs", "4"),
    )
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output
    assert "4/4 jobs done" in output
    runs = ws.runs_of()
    assert len(runs) == 4
    for run in runs:
        assert run.info.status == "FINISHED", run.info
        for name in (
            mlflow_keys.M_TRAIN_LOSS,
            mlflow_keys.M_TEST_ERROR,
            mlflow_keys.M_LR,
            mlflow_keys.M_TRAIN_ERROR,
        ):
            steps = [s for s, _ in _series(ws, run.info.run_id, name)]
            assert steps == list(range(1, epochs + 1)), (name, steps)
        assert mlflow_keys.M_FINAL_TEST_ERROR in run.data.metrics
        assert run.data.params["protocol.epochs"] == str(epochs)
    # They did overlap: every run started before any of them ended.
    assert max(r.info.start_time for r in runs) < min(r.info.end_time for r in runs)
    logs = sorted(p.name for p in (ws.runs / "logs" / "tiny" / "bc-k4").glob("*.log"))
    assert len(logs) == 4 and all(
        "finished" in (ws.runs / "logs" / "tiny" / "bc-k4" / n).read_text() for n in logs
    )


# --------------------------------------------------------------------------------------------
# DDP on gloo.


class _NoBatchNorm(torch.nn.Module):
    """A BatchNorm-free stand-in for the model, so one process and two agree exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1, bias=False),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, stride=2, padding=1),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(16, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _train_tiny(env: dict[str, str], world: int, rank: int, epochs: int) -> int:
    """Train the tiny table's original cell with the BN-free model; DDP when ``world > 1``."""
    os.environ.update(env)
    torch.set_num_threads(1)
    from rich.console import Console

    import rkrepro.models
    from rkrepro import paper
    from rkrepro.training.ledger import Ledger
    from rkrepro.training.session import Session
    from rkrepro.training.world import World

    rkrepro.models.build_model = lambda spec, memory_efficient=False: _NoBatchNorm()
    cells = paper.resolve_cells(paper.load_tables(), "tiny", "bc-k4", ["original"], "no-share")
    options = run_options.RunOptions(
        epochs=epochs, data_dir=Path(env["RKREPRO_DATA_DIR"]), device="cpu"
    )
    ledger = Ledger(options.tracking_uri, console=Console(quiet=True))
    if world == 1:
        planned = plans.make_plans(cells, [0], options)
        return Session(ledger, World(torch.device("cpu")), options.data_dir).run(planned)
    from rkrepro.training import distributed

    group = distributed.join("cpu")
    try:
        assert group.backend == "gloo" and group.size == world and group.rank == rank
        planned = plans.make_plans(cells, [0], options, "cpu", group.size)
        return Session(ledger, group, options.data_dir).run(planned)
    finally:
        group.close()


def _ddp_rank(rank: int, world: int, port: int, env: dict[str, str], epochs: int) -> None:
    dist_env = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world)}
    dist_env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    assert _train_tiny({**env, **dist_env}, world, rank, epochs) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_match_one_process(
    ws: Workspace, mlflow_template: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same global batch, lr and data: 2 gloo ranks = 1 process (BN-free model, DDP_RTOL)."""
    h.write_random_cifar10(ws.data, n_train=200, n_test=64)  # 200 = 3 x 64 + 8: a short batch
    epochs = 3
    single = ws.root / "runs-single"
    _new_store(mlflow_template, single)
    env = {**ws.env, "RKREPRO_RUNS_DIR": str(single)}
    import rkrepro.models

    # _train_tiny patches it; monkeypatch puts the real one back afterwards.
    monkeypatch.setattr(rkrepro.models, "build_model", rkrepro.models.build_model)
    assert _train_tiny(env, 1, 0, epochs) == 0

    env = {**ws.env, "RKREPRO_RUNS_DIR": str(ws.runs)}
    torch.multiprocessing.spawn(_ddp_rank, args=(2, _free_port(), env, epochs), nprocs=2)

    (one,) = ws.runs_of(single)
    (ddp,) = ws.runs_of()
    assert one.info.status == ddp.info.status == "FINISHED"
    assert ddp.data.tags[mlflow_keys.TAG_WORLD_SIZE] == "2"
    assert ddp.data.tags[mlflow_keys.TAG_BATCHNORM] == "per-gpu"
    for name in (mlflow_keys.M_TRAIN_LOSS, mlflow_keys.M_TRAIN_ERROR, mlflow_keys.M_TEST_ERROR):
        a = _series(ws, one.info.run_id, name, single)
        b = _series(ws, ddp.info.run_id, name)
        assert [s for s, _ in a] == [s for s, _ in b] == [1, 2, 3]
        for (_, x), (_, y) in zip(a, b, strict=True):
            assert y == pytest.approx(x, rel=DDP_RTOL, abs=1e-6), name
    # Rank 0's final weights are the plain model's state, equal to the single process's.
    config_hash = one.data.tags[mlflow_keys.TAG_CONFIG_HASH]
    assert ddp.data.tags[mlflow_keys.TAG_CONFIG_HASH] == config_hash
    w1 = torch.load(single / "checkpoints" / config_hash / "final.pt", weights_only=True)
    w2 = torch.load(ws.runs / "checkpoints" / config_hash / "final.pt", weights_only=True)
    assert w1["model"].keys() == w2["model"].keys()
    assert not any(k.startswith("module.") for k in w2["model"])
    for key in w1["model"]:
        torch.testing.assert_close(w2["model"][key], w1["model"][key], rtol=1e-4, atol=1e-6)


@pytest.mark.fault
def test_torchrun_job_stops_on_sigterm_and_resumes_the_same_run(ws: Workspace) -> None:
    """Real torchrun (2 gloo ranks, the real DenseNet, per-GPU BatchNorm) under the queue."""
    h.write_random_cifar10(ws.data, n_train=512, n_test=64)
    args = ("--variant", "original", "--no-share", "--epochs", "6")
    args += ("--launcher", "torchrun", "--nproc-per-node", "2", "--device", "cpu")
    proc = _rkrepro(ws, *args)
    ws_helpers.wait_for_epoch(ws.runs, 1, lambda: proc.poll() is None, timeout=180)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, output
    (stopped,) = ws.runs_of()
    assert stopped.info.status == "KILLED", output
    log = next((ws.runs / "logs").rglob("*.log")).read_text()
    assert "stopped; checkpoint saved" in log and "x 2 processes" in log

    again = _rkrepro(ws, *args)
    output = again.communicate(timeout=240)[0]
    assert again.returncode == 0, output
    (run,) = ws.runs_of()
    assert run.info.run_id == stopped.info.run_id and run.info.status == "FINISHED"
    assert "resuming run" in next((ws.runs / "logs").rglob("*.log")).read_text()
    assert run.data.tags[mlflow_keys.TAG_WORLD_SIZE] == "2"
    for name in (mlflow_keys.M_TRAIN_LOSS, mlflow_keys.M_TEST_ERROR):
        assert [s for s, _ in _series(ws, run.info.run_id, name)] == list(range(1, 7))


# --------------------------------------------------------------------------------------------
# SLURM's mechanics through submitit's local executor.


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds processes via /proc")
@pytest.mark.fault
def test_slurm_task_preempted_requeues_and_resumes_the_same_run(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("submitit")
    from submitit.core.utils import pickle_load

    h.write_random_cifar10(ws.data, n_train=512, n_test=64)
    monkeypatch.setenv(slurm.SUBMITIT_CLUSTER_ENV, "local")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    args = ("--variant", "original", "--no-share", "--epochs", "5", "--launcher", "slurm")
    result = invoke(*args, "--time", "30", "--force")
    assert result.exit_code == 0, result.output
    assert "local SQLite store" in result.stderr  # slurm with sqlite: warned
    line = next(x for x in result.stdout.splitlines() if "array job" in x)
    controller = int(line.split("array job ")[1].split()[0])
    folder = ws.runs / "slurm" / str(controller)

    ws_helpers.wait_for_epoch(ws.runs, 1, lambda: _alive(controller), timeout=180)
    (running,) = ws.runs_of()
    assert running.info.status == "RUNNING"
    (task,) = _children(controller)
    os.kill(task, signal.SIGUSR2)  # what SLURM sends before the time limit (or preemption)

    result_file = folder / f"{controller}_0_result.pkl"
    deadline = time.monotonic() + 240
    while not result_file.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    out = "".join(p.read_text() for p in sorted(folder.glob("*.out")))
    err = "".join(p.read_text() for p in sorted(folder.glob("*.err")))
    assert result_file.exists(), out + err
    outcome, value = pickle_load(result_file)
    assert outcome == "success", (value, out, err)
    assert "Requeued" in err or "requeue" in (out + err).lower()
    assert "resuming run " + running.info.run_id in out, out
    (run,) = ws.runs_of()
    assert run.info.run_id == running.info.run_id and run.info.status == "FINISHED"
    for name in (mlflow_keys.M_TRAIN_LOSS, mlflow_keys.M_TEST_ERROR):
        assert [s for s, _ in _series(ws, run.info.run_id, name)] == list(range(1, 6))


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and every process below it (found first, then killed)."""
    family, todo = [], [pid]
    while todo:
        family.append(todo.pop())
        todo += _children(family[-1])
    for member in family:
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds processes via /proc")
def test_a_slurm_task_watches_the_checkpoints_of_the_store_its_job_writes_to(
    ws: Workspace, mlflow_template: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At SLURM's signal a task is requeued only if its run made progress, judged by the run's
    checkpoint: with a store other than the default (``--tracking-uri``) the task must look in
    the folder its job saves to for that store, or every signal fails the run unrequeued."""
    pytest.importorskip("submitit")
    from submitit.core.utils import DelayedSubmission

    h.write_random_cifar10(ws.data, n_train=512, n_test=64)
    other = ws.root / "other.db"
    shutil.copy(mlflow_template, other)
    uri = f"sqlite:///{other}"
    monkeypatch.setenv(slurm.SUBMITIT_CLUSTER_ENV, "local")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    args = ("--variant", "original", "--no-share", "--epochs", "50", "--launcher", "slurm")
    result = invoke(*args, "--time", "30", "--tracking-uri", uri)
    assert result.exit_code == 0, result.output
    line = next(x for x in result.stdout.splitlines() if "array job" in x)
    controller = int(line.split("array job ")[1].split()[0])
    try:
        ws_helpers.wait_for_epoch(ws.runs, 1, lambda: _alive(controller), timeout=180)
        (saved,) = ws.runs.glob("checkpoints/**/last.json")
        (pickled,) = (ws.runs / "slurm" / str(controller)).glob("*_submitted.pkl")
        run = DelayedSubmission.load(pickled).function.run  # what the task itself loads
        assert run.tracking_uri == uri
        assert Path(run.checkpoint_dir) == saved.parent, (run, saved)
        assert run.progress() is not None
    finally:
        _kill_tree(controller)


def _script(settings: slurm.SlurmSettings, monkeypatch: pytest.MonkeyPatch) -> str:
    from submitit.slurm.slurm import SlurmExecutor

    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 2))  # "srun exists"
    executor = slurm.make_executor(settings)
    return executor._executor._make_submission_file_text("CMD", "uid")


def test_slurm_script_asks_for_what_the_options_say(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("submitit")
    monkeypatch.setattr(slurm, "node_cpus", lambda partition: 64)
    settings = slurm.SlurmSettings(
        partition="gpu", account="proj", gpus_per_node=4, time_min=600, folder=tmp_path / "%j"
    )
    script = _script(settings, monkeypatch)
    for part in (
        "--partition=gpu",
        "--account=proj",
        "--gpus-per-node=4",
        "--time=600",
        "--cpus-per-task=32",
        f"--signal=USR2@{slurm.SIGNAL_DELAY_MAX_S}",
        "--nodes=1",
        "--ntasks-per-node=1",
    ):
        assert part in script, part


def test_a_cpu_slurm_job_asks_for_no_gpu_and_what_the_node_has(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("submitit")
    monkeypatch.setattr(slurm, "node_cpus", lambda partition: 2)
    settings = slurm.SlurmSettings(gpus_per_node=0, time_min=3, folder=tmp_path / "%j")
    script = _script(settings, monkeypatch)
    assert "gpus" not in script and "gres" not in script
    assert "--cpus-per-task=2" in script  # the node's 2 CPUs, not 8 that would pend forever
    assert "--signal=USR2@18" in script  # a tenth of 3 minutes, not 180 s after every start
    gpu = slurm.SlurmSettings(gpus_per_node=1, folder=tmp_path / "%j")
    assert "--cpus-per-task=2" in _script(gpu, monkeypatch)  # 8 per GPU, capped by the node
    assert slurm.SlurmSettings(time_min=3, signal_delay_s=40).signal_delay == 40


@pytest.mark.bad_input
@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"partition": "gpu\n#SBATCH --time=1"},
            "--partition 'gpu\\n#SBATCH --time=1': a SLURM name",
        ),
        ({"account": "a;rm -rf ~"}, "--slurm-account"),
        ({"time_min": 0}, "--time must be >= 1 minute"),
        ({"time_min": 3, "signal_delay_s": 600}, "--signal-delay 600: must be between"),
        ({"gpus_per_node": -1}, "--gpus-per-node must be >= 0"),
    ],
)
def test_slurm_values_that_would_reach_a_job_script_are_checked(
    settings: dict, message: str
) -> None:
    with pytest.raises(RkreproError) as caught:
        slurm.SlurmSettings(**settings)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_requeued_task_resumes_instead_of_forcing_again() -> None:
    import pickle

    pytest.importorskip("submitit")
    task = slurm.CellTask(["-m", "rkrepro", "run", "t", "--force"], {"A": "1"}, "cell seed 0")
    again = pickle.loads(pickle.dumps(task.checkpoint()))
    assert again.function.args == ("-m", "rkrepro", "run", "t")
    assert again.function.env == {"A": "1"} and again.function.label == "cell seed 0"


def test_a_finished_task_ignores_a_late_time_limit_signal() -> None:
    """After its child exits the task has nothing to checkpoint: a late USR2 must neither
    requeue a finished run nor kill the task (SLURM then marks the task FAILED)."""
    import signal

    previous = signal.signal(signal.SIGUSR2, signal.SIG_DFL)
    try:
        task = slurm.CellTask(["-c", "pass"], {}, "cell seed 0")
        assert task() == "cell seed 0: done"
        assert signal.getsignal(signal.SIGUSR2) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_a_short_slurm_time_limit_is_warned_about() -> None:
    (warning,) = slurm.SlurmSettings(time_min=3).warnings()
    assert warning.startswith("warning: --time 3:") and "up to 60 s" in warning
    assert "2 minutes" in warning and "\n" not in warning
    assert slurm.SlurmSettings(time_min=slurm.SHORT_TIME_MIN).warnings() == []
    assert slurm.SlurmSettings(time_min=3, cluster="local").warnings() == []


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


def test_a_slurm_rehearsal_calls_no_slurm_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With RKREPRO_SUBMITIT_CLUSTER=local nothing may ask a cluster (``sinfo`` for the CPUs)."""
    pytest.importorskip("submitit")
    bin_dir, called = tmp_path / "bin", tmp_path / "sinfo-called"
    bin_dir.mkdir()
    (bin_dir / "sinfo").write_text(f"#!/bin/sh\ntouch {called}\necho 64\n")
    (bin_dir / "sinfo").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    slurm.make_executor(slurm.SlurmSettings(cluster="local", folder=tmp_path / "%j"))
    assert not called.exists()
    slurm.SlurmSettings(cluster="slurm", folder=tmp_path / "%j").cpus()
    assert called.exists()  # the fake sinfo is reachable: the check above can fail


def test_a_job_folder_with_a_control_character_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("submitit")
    settings = slurm.SlurmSettings(cluster="local", folder=tmp_path / "a\nb" / "%j")
    with pytest.raises(RkreproError, match="control character"):
        slurm.make_executor(settings)
