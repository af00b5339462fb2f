"""``--launcher slurm`` (:mod:`rkrepro.launch.slurm`) through submitit's local executor and its
sbatch script; a real cluster is in tests/integration/."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import helpers_cifar as h
import helpers_workspace as ws_helpers
import pytest
from helpers_launch import alive, children, kill_tree, sbatch_script, series
from helpers_run import REPO, Workspace, invoke

from rkrepro.errors import RkreproError
from rkrepro.launch import slurm
from rkrepro.tracking import keys as mlflow_keys


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

    ws_helpers.wait_for_epoch(ws.runs, 1, lambda: alive(controller), timeout=180)
    (running,) = ws.runs_of()
    assert running.info.status == "RUNNING"
    (task,) = children(controller)
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
        assert [s for s, _ in series(ws, run.info.run_id, name)] == list(range(1, 6))


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
        ws_helpers.wait_for_epoch(ws.runs, 1, lambda: alive(controller), timeout=180)
        (saved,) = ws.runs.glob("checkpoints/**/last.json")
        (pickled,) = (ws.runs / "slurm" / str(controller)).glob("*_submitted.pkl")
        run = DelayedSubmission.load(pickled).function.run  # what the task itself loads
        assert run.tracking_uri == uri
        assert Path(run.checkpoint_dir) == saved.parent, (run, saved)
        assert run.progress() is not None
    finally:
        kill_tree(controller)


def test_slurm_script_asks_for_what_the_options_say(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("submitit")
    monkeypatch.setattr(slurm, "node_cpus", lambda partition: 64)
    settings = slurm.SlurmSettings(
        partition="gpu", account="proj", gpus_per_node=4, time_min=600, folder=tmp_path / "%j"
    )
    script = sbatch_script(settings, monkeypatch)
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
    script = sbatch_script(settings, monkeypatch)
    assert "gpus" not in script and "gres" not in script
    assert "--cpus-per-task=2" in script  # the node's 2 CPUs, not 8 that would pend forever
    assert "--signal=USR2@18" in script  # a tenth of 3 minutes, not 180 s after every start
    gpu = slurm.SlurmSettings(gpus_per_node=1, folder=tmp_path / "%j")
    assert "--cpus-per-task=2" in sbatch_script(gpu, monkeypatch)  # 8 per GPU, capped by the node
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
