"""``--launcher slurm`` against a real single-node SLURM cluster started for the session."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import helpers_workspace as hw
import pytest
from services import real_env, wait_queue_empty

pytestmark = pytest.mark.integration


def _rkrepro(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "rkrepro", "run", "tiny", "--row", "bc-k4", *args]
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def _wait_queue_empty(env: dict[str, str], timeout: float) -> None:
    left = wait_queue_empty(env, timeout)
    if left:
        pytest.fail(f"jobs still queued after {timeout:.0f} s: {left}")


def _workspace(
    root: Path, template: Path, cluster, n_train: int = 96, store: Path | None = None
) -> dict[str, str]:
    """A tiny workspace under ``root`` and the env of an rkrepro command that reaches
    ``cluster``. Its store, a copy of ``template``, is the default one (``runs/mlflow.db``)
    or the SQLite file ``store`` (passed with ``--tracking-uri``)."""
    env = real_env(hw.make_workspace(root, n_train=n_train), **cluster.env)
    if store is None:
        hw.new_store(template, root / "runs")
    else:
        shutil.copy(template, store)
    return env


def _submit(env: dict[str, str], cwd: Path, *args: str) -> str:
    """Submit one task (the row's original model, one seed); returns its SLURM job id
    (submitit makes a one-task array a plain job)."""
    one = ("--variant", "original", "--seeds", "1", "--device", "cpu", "--launcher", "slurm")
    result = _rkrepro(env, cwd, *one, "--cpus-per-task", "1", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "submitted 1 tasks as slurm array job" in result.stdout, result.stdout
    (task,) = re.findall(r"^  (\S+): tiny/", result.stdout, flags=re.M)
    return task


def _job(env: dict[str, str], task: str) -> dict[str, str]:
    """``scontrol show job`` of one task as a dict (JobState, Reason, Restarts, ...)."""
    out = subprocess.run(
        ["scontrol", "show", "job", "-o", task], env=env, capture_output=True, text=True
    ).stdout
    return dict(t.split("=", 1) for t in out.split() if "=" in t)


def _wait(check: Callable[[], bool], timeout: float, what: str, log: Callable[[], str]) -> None:
    print(time.strftime("%T"), "waiting:", what, file=sys.stderr)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    pytest.fail(f"{what}: not within {timeout:.0f} s\n{log()[-3000:]}")


def _checkpoint(runs: Path) -> dict:
    """The single run's latest checkpoint info (``last.json``), or {} before the first."""
    for info in runs.glob("checkpoints/**/last.json"):
        try:
            return json.loads(info.read_text())
        except (OSError, ValueError):
            pass
    return {}


def _logs(runs: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(runs.glob("slurm/*/*_log.*")))


def _report(env: dict[str, str], runs: Path, task: str) -> str:
    """What a failed wait shows: the task's logs, what slurmd said of it, its job record."""
    log = Path(env["SLURM_CONF"]).parent / "log" / "slurmd.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    said = [x for x in text.splitlines() if f"job {task} " in x.lower() or f"[{task}." in x]
    return _logs(runs) + "\nslurmd:\n" + "\n".join(said[-20:]) + "\n" + str(_job(env, task))


def _steps_done(env: dict[str, str], job_id: str, attempts: int) -> bool:
    """slurmd has ended the batch step and step 0 of ``attempts`` runs of this job (the
    requeued task must not start beside the steps of its previous run)."""
    log = Path(env["SLURM_CONF"]).parent / "log" / "slurmd.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    done = (text.count(f"[{job_id}.{step}] done with job") for step in ("batch", "0"))
    return all(count >= attempts for count in done)


def _release_requeue_hold(
    env: dict[str, str], task: str, restarts: int, log, timeout: float = 90
) -> None:
    """Wait for the requeued task, then let it start now.

    SLURM (22.05) holds a requeued batch job for about two minutes (``Reason=BeginTime``,
    EligibleTime = requeue + 121 s measured here) before it may run again; the operator can
    lift that with ``StartTime=now`` (and ``scontrol release`` after a ``scontrol hold``).
    Only the wait changes, nothing rkrepro does.

    Not within the second of the requeue, though: at the requeue slurmd revokes the job's
    credentials up to that second (whole seconds), and refuses a launch whose credential is
    not newer ("Job N already killed, do not launch batch job"): the task then ends FAILED,
    NonZeroExitCode, RunTime 0, nothing in its log. SLURM's own two-minute hold is what
    prevents that for users.
    """

    def held() -> bool:
        job = _job(env, task)
        if job.get("Restarts") != str(restarts) or job.get("JobState") != "PENDING":
            return False
        return _steps_done(env, job["JobId"], restarts)

    _wait(held, timeout, f"{task} requeued ({restarts} restarts)", log)
    requeued_by = int(time.time())  # the requeue's kill came before this second ended
    while int(time.time()) <= requeued_by:
        time.sleep(0.02)
    update = ["scontrol", "update", f"JobId={task}", "StartTime=now"]
    subprocess.run(update, env=env, check=True, timeout=30)
    subprocess.run(["scontrol", "release", task], env=env, capture_output=True, timeout=30)


def _child_started(env: dict[str, str], workspace: Path) -> bool:
    """The task's ``rkrepro run`` process exists: the one reading this test's data folder
    (the submitting command is long gone; other rkrepro processes may run on this host)."""
    pattern = f"rkrepro run tiny .*--data-dir {re.escape(str(workspace / 'data'))}"
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, env=env)
    return found.returncode == 0


def _history(uri: str, run_id: str, key: str) -> list[int]:
    from mlflow.tracking import MlflowClient

    return sorted(m.step for m in MlflowClient(tracking_uri=uri).get_metric_history(run_id, key))


def _runs(uri: str) -> list:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    return [r for e in c.search_experiments() for r in c.search_runs([e.experiment_id])]


def test_cpu_array_job_finishes_and_a_resubmit_has_nothing_to_do(
    slurm_cluster, store_template: Path, tmp_path: Path
) -> None:
    env = _workspace(tmp_path, store_template, slurm_cluster)
    args = ("--variant", "original", "--seeds", "2", "--epochs", "1", "--device", "cpu")
    args += ("--launcher", "slurm", "--time", "10")
    result = _rkrepro(env, tmp_path, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "submitted 2 tasks as slurm array job" in result.stdout, result.stdout
    script = next((tmp_path / "runs" / "slurm").glob("*/*_submission.sh")).read_text()
    assert "gpus" not in script and "--cpus-per-task=" in script  # a CPU job asks no GPU
    assert "--device cpu" in script or "'--device', 'cpu'" in script or "cpu" in script
    _wait_queue_empty(env, 240)
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    runs = _runs(uri)
    logs = "".join(p.read_text() for p in (tmp_path / "runs" / "slurm").glob("*/*.err"))
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 2, logs[-3000:]
    again = _rkrepro(env, tmp_path, *args)
    assert again.returncode == 0 and "nothing to submit: 2 runs done" in again.stdout, again


def test_what_sbatch_refuses_is_one_line_with_slurms_reason(
    slurm_cluster, store_template: Path, tmp_path: Path
) -> None:
    env = _workspace(tmp_path, store_template, slurm_cluster)
    result = _rkrepro(env, tmp_path, "--epochs", "1", "--launcher", "slurm", "--gpus-per-node", "1")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    (error,) = [x for x in result.stderr.splitlines() if x.startswith("Error")]  # MLflow INFO aside
    assert "sbatch refused the job" in error and "Invalid generic resource" in error, error


@pytest.fixture(scope="module")
def time_limited(slurm_cluster, store_template: Path, tmp_path_factory: pytest.TempPathFactory):
    """A task under a real 2-minute limit (its store another SQLite file than the default, by
    its absolute path), submitted before the preemption test so that its wait for SLURM's
    signal overlaps that test (each task asks for 1 of the node's CPUs). Once the signal has
    requeued it, it is held (``scontrol hold``) so that SLURM does not start it on its own
    before the time-limit test is there to watch."""
    root = tmp_path_factory.mktemp("time-limited")
    store = root / "other.db"
    env = _workspace(root, store_template, slurm_cluster, n_train=512, store=store)
    uri = f"sqlite:///{store}"
    limits = ("--time", "2", "--signal-delay", "30")
    task = _submit(env, root, "--epochs", "300", *limits, "--tracking-uri", uri)
    stop = threading.Event()

    def hold_once_requeued() -> None:
        while not stop.is_set():
            job = _job(env, task)
            if job.get("Restarts") == "1" and job.get("JobState") == "PENDING":
                subprocess.run(["scontrol", "hold", task], env=env, capture_output=True)
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=hold_once_requeued, daemon=True)
    watcher.start()
    yield SimpleNamespace(root=root, env=env, task=task, watcher=watcher, uri=uri)
    stop.set()


@pytest.mark.usefixtures("time_limited")  # its limit runs out meanwhile
def test_usr2_and_requeue_resume_the_same_run_with_every_epoch_once(
    slurm_cluster, store_template: Path, tmp_path: Path
) -> None:
    """Preempted twice, two ways: ``scancel --signal=USR2`` (what SLURM sends before the time
    limit: the task checkpoints its run and requeues itself through submitit) and
    ``scontrol requeue`` (SIGTERM: the run checkpoints, SLURM requeues the task). Each time
    the requeued task resumes the same MLflow run from its checkpoint; it ends FINISHED with
    every epoch logged once. The store is another SQLite file than the default, spelled
    relative to the folder the task is submitted from (SLURM starts the task there)."""
    store = tmp_path / "other.db"
    env = _workspace(tmp_path, store_template, slurm_cluster, n_train=512, store=store)
    runs = tmp_path / "runs"
    epochs = 14
    task = _submit(env, tmp_path, "--epochs", str(epochs), "--time", "10",
                   "--tracking-uri", "sqlite:///other.db")  # fmt: skip
    log = lambda: _report(env, runs, task)  # noqa: E731

    _wait(lambda: _checkpoint(runs).get("epoch", 0) >= 2, 120, "epoch 2", log)
    subprocess.run(["scancel", "--signal=USR2", task], env=env, check=True, timeout=30)
    _release_requeue_hold(env, task, 1, log)
    first = _checkpoint(runs)
    _wait(lambda: _checkpoint(runs).get("epoch", 0) > first["epoch"] + 1, 120, "resumed", log)
    subprocess.run(["scontrol", "requeue", task], env=env, check=True, timeout=30)
    _release_requeue_hold(env, task, 2, log)
    _wait(lambda: _job(env, task).get("JobState") == "COMPLETED", 180, "completed", log)

    uri = f"sqlite:///{store}"
    (run,) = _runs(uri)
    assert not (runs / "mlflow.db").exists()  # nothing went to the default store
    assert run.info.status == "FINISHED", log()
    assert first["run_id"] == run.info.run_id  # one run throughout: the preempted one finished
    assert _checkpoint(runs) == {}  # finished: the resume state is gone, the final weights kept
    assert len(list(runs.glob("checkpoints/**/final.pt"))) == 1
    assert _history(uri, run.info.run_id, "test_error") == list(range(1, epochs + 1))
    assert len(_history(uri, run.info.run_id, "params_total")) == 1
    text = _logs(runs)
    assert "Caught signal SIGUSR2" in text and "DUE TO JOB REQUEUE" in text, text[-3000:]
    assert text.count("stopped; checkpoint saved") == 2, text[-3000:]


def test_a_time_limit_requeues_and_a_task_without_progress_fails(time_limited) -> None:
    """``--time 2 --signal-delay 30``: SLURM's own USR2 comes 30 to 90 s into the task (SLURM
    may send it up to 60 s earlier than asked, never later); the run checkpoints, and the task
    is requeued and resumes the run. When the signal comes again before the requeued task has
    trained a step (here sent the moment its ``rkrepro run`` starts), requeueing would loop
    forever: the task is not requeued and its run becomes FAILED, saying why."""
    env, task, workspace = time_limited.env, time_limited.task, time_limited.root
    runs = workspace / "runs"
    uri = time_limited.uri  # another store than the default: where the task looks must follow
    log = lambda: _report(env, runs, task)  # noqa: E731
    script = next(runs.glob("slurm/*/*_submission.sh")).read_text()
    assert "--signal=USR2@30" in script and "--time=2" in script, script

    time_limited.watcher.join(timeout=150)  # the time limit's own signal requeued it
    _release_requeue_hold(env, task, 1, log)
    text = _logs(runs)
    assert "Caught signal SIGUSR2" in text and "stopped; checkpoint saved" in text, text[-3000:]
    assert "DUE TO TIME LIMIT" not in text  # stopped by the signal, before SLURM's kill
    stopped_at = _checkpoint(runs)
    assert stopped_at.get("epoch", 0) + stopped_at.get("step_in_epoch", 0) > 0, stopped_at

    _wait(lambda: _child_started(env, workspace), 60, "the requeued task's rkrepro run", log)
    subprocess.run(["scancel", "--signal=USR2", task], env=env, check=True, timeout=30)
    _wait(lambda: _job(env, task).get("JobState") == "FAILED", 60, "task FAILED", log)
    time.sleep(3)  # a requeue, had there been one, would show by now
    job = _job(env, task)
    assert job["JobState"] == "FAILED" and job["Restarts"] == "1", job

    (run,) = _runs(uri)
    assert run.info.status == "FAILED", log()
    reason = run.data.tags.get("rkrepro.failure", "")
    assert "no progress since the task started" in reason and "--time" in reason, run.data.tags
    assert _checkpoint(runs) == stopped_at  # kept: a longer --time resumes from it
    steps = _history(uri, run.info.run_id, "test_error")
    assert steps == list(range(1, len(steps) + 1))  # each epoch once
    assert "not requeued" in _logs(runs)
    text = _logs(runs)
    assert "starting; checkpoint none yet" in text and "starting; checkpoint at epoch" in text
