"""Launching a table or the paper: every row without ``--row``, ``all``, ``--row`` repeated, the
campaign summary before a launch of many rows (and with ``--dry-run``), the bad inputs, and a
campaign stopped half-way that the same command finishes (the real local queue)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import helpers_workspace as wsh
import pytest
from typer.testing import CliRunner

from rkrepro.cli.app import app
from rkrepro.tracking import keys as mlflow_keys

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = wsh.make_workspace(tmp_path, n_train=256, n_test=32)
    tiny = tmp_path / "tables" / "tiny.yaml"
    tiny.write_text(tiny.read_text() + wsh.SECOND_ROW)
    other = wsh.TINY_TABLE.replace("id: tiny", "id: other").split("rows:")[0]
    (tmp_path / "tables" / "other.yaml").write_text(other + "rows:\n" + wsh.SECOND_ROW)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RKREPRO_CALIBRATION_DEVICE", raising=False)
    monkeypatch.chdir(tmp_path)
    return values


def _run(*args: str):
    return CliRunner().invoke(app, ["run", *args], env={"COLUMNS": "250"})


def _cells(output: str) -> list[str]:
    return [line.split()[0] for line in output.splitlines() if "  status=" in line]


def test_a_table_without_row_is_every_row_and_says_so_first(env) -> None:
    result = _run("tiny", "--dry-run", "--gpu", "h100")
    assert result.exit_code == 0, result.output
    assert _cells(result.stdout) == [
        "tiny/bc-k4/original/noshare",
        "tiny/bc-k4/RKNet-1x2_1x1_1x1/noshare",
        "tiny/bc-k4/RKNet-1x2_1x1_1x1/share",
        "tiny/bc-k2/original/noshare",
    ]
    text = result.stdout
    assert "campaign: 1 table(s), 2 rows, 4 cells x 1 seed(s) = 4 runs: 0 done" in text
    assert "tiny: 2 rows, 4 cells, 4 runs, 0 done;" in text and "GPU-hours to train" in text
    assert "still to train: " in text and "on NVIDIA H100 SXM5 80 GB in fp32" in text
    assert "(b) roofline" in text and "order: the paper's" in text
    assert not (Path(env["RKREPRO_RUNS_DIR"]) / "mlflow.db").exists()  # a dry run writes nothing


def test_repeated_rows_and_all_tables(env) -> None:
    both = _run("tiny", "--row", "bc-k2", "--row", "bc-k4", "--variant", "original", "--dry-run")
    assert both.exit_code == 0, both.output
    # Every --row given (the last one alone used to run), in the order given.
    assert _cells(both.stdout) == ["tiny/bc-k2/original/noshare", "tiny/bc-k4/original/noshare"]
    assert "measured on CPU" in both.stdout and "CPU-hours" in both.stdout  # trains here: CPU
    every = _run("all", "--dry-run", "--gpu", "a100-80gb", "--seeds", "2")
    assert every.exit_code == 0, every.output
    assert [c.split("/")[0] for c in _cells(every.stdout)] == ["other"] + ["tiny"] * 4
    assert "campaign: 2 table(s), 3 rows, 5 cells x 2 seed(s) = 10 runs" in every.stdout


@pytest.mark.bad_input
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["all", "--row", "bc-k4"], "run all takes no --row"),
        (["tiny", "--row", "bc-k4", "--row", "bc-k9"], "unknown row 'bc-k9'"),
        (["tiny", "--launcher", "slurm", "--max-parallel", "0"], "--max-parallel must be >= 1"),
        (["tiny", "--cpu-jobs", "2", "--max-parallel", "2"], "--max-parallel is for --launcher"),
        (["tiny", "--dry-run", "--gpu", "h1000"], "--gpu h1000: unknown GPU; did you mean h100"),
        (["tiny", "--gpu", "h100"], "this command trains on this machine"),
        (["tiny", "--gpu", "h100", "--cpu-jobs", "2", "--dry-run"], "train on the CPU"),
        (["tiny", "--order", "random"], "--order random: use paper or claims"),
    ],
)
def test_bad_campaign_input_is_one_line_and_starts_nothing(env, args, message) -> None:
    result = _run(*args, "--epochs", "1")
    assert result.exit_code == 2, result.output
    error = result.stderr.strip()
    assert error.startswith("Error: ") and "\n" not in error and message in error, error
    runs = Path(env["RKREPRO_RUNS_DIR"])
    assert not (runs / "mlflow.db").exists() and not (runs / "logs").exists()


def _runs(runs: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
    exp = client.get_experiment_by_name(mlflow_keys.experiment_name("tiny"))
    return client.search_runs([exp.experiment_id]) if exp else []


def _checkpoints(runs: Path) -> int:
    """Runs that have trained an epoch: a checkpoint, or the final weights a finished run keeps."""
    return len(
        {p.parent for p in runs.glob("checkpoints/*/*") if p.name in ("last.json", "final.pt")}
    )


@pytest.mark.fault
def test_a_stopped_campaign_resumes_and_finishes_with_the_same_command(env, tmp_path) -> None:
    runs = Path(env["RKREPRO_RUNS_DIR"])
    command = [sys.executable, "-m", "rkrepro", "run", "tiny", "--cpu-jobs", "2", "--epochs", "3"]
    child_env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(
        command, cwd=tmp_path, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while _checkpoints(runs) < 2 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    first.send_signal(signal.SIGINT)  # Ctrl-C: every job checkpoints and stops
    output = first.communicate(timeout=300)[0]
    assert first.returncode == 130, output
    assert "campaign: 1 table(s), 2 rows, 4 cells" in output  # said before it started
    stopped = {r.info.run_id: r.info.status for r in _runs(runs)}
    assert stopped and set(stopped.values()) <= {"KILLED", "FINISHED"}, stopped
    assert "KILLED" in stopped.values()

    again = subprocess.run(
        command, cwd=tmp_path, env=child_env, capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "to resume" in again.stdout
    finished = _runs(runs)
    assert len(finished) == 4 and {r.info.status for r in finished} == {"FINISHED"}
    # The stopped runs went on in the same MLflow runs, every epoch logged once.
    assert set(stopped) <= {r.info.run_id for r in finished}
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
    for run in finished:
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss"))
        assert steps == [1, 2, 3], (run.info.run_id, steps)
    done = subprocess.run(
        command, cwd=tmp_path, env=child_env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and "0 jobs to run: 4 runs done" in done.stdout, done.stdout
