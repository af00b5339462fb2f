"""Injected faults with real processes and files; afterwards the store and checkpoints are whole.

Each test trains a tiny DenseNet-BC on a tiny CIFAR folder through ``python -m rkrepro`` and
compares the final metrics with an uninterrupted reference run: a fault may cost time, never
results.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import helpers_workspace as ws
import pytest

from rkrepro.tracking import keys as mlflow_keys
from rkrepro.training.checkpoints import CHECKPOINT_FORMAT, Checkpoints

pytestmark = pytest.mark.fault

REPO = Path(__file__).resolve().parent.parent
ARGS = ("run", "tiny", "--row", "bc-k4", "--variant", "original", "--epochs", "3")


class Space:
    """A folder with tables, data and one or more run stores; runs ``python -m rkrepro``."""

    def __init__(self, root: Path, template: Path) -> None:
        self.root = root
        self.template = template
        self.base_env = ws.make_workspace(root)

    def store(self, name: str) -> Path:
        return ws.new_store(self.template, self.root / name)

    def env(self, runs: Path, **extra: str) -> dict[str, str]:
        env = {
            **os.environ,
            **self.base_env,
            "RKREPRO_RUNS_DIR": str(runs),
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            **extra,
        }
        env.pop("MLFLOW_TRACKING_URI", None)
        return env

    def spawn(self, runs: Path, *args: str, **extra: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "rkrepro", *(args or ARGS), "--device", "cpu"],
            cwd=self.root,
            env=self.env(runs, **extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def run(self, runs: Path, *args: str, **extra: str) -> tuple[int, str]:
        proc = self.spawn(runs, *args, **extra)
        output = proc.communicate(timeout=300)[0]
        return proc.returncode, output

    def runs_of(self, runs: Path) -> list:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
        exp = client.get_experiment_by_name(mlflow_keys.experiment_name("tiny"))
        if exp is None:
            return []
        return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])

    def series(self, runs: Path, run_id: str, name: str) -> list[tuple[int, float]]:
        from mlflow.tracking import MlflowClient

        history = MlflowClient(f"sqlite:///{runs / 'mlflow.db'}").get_metric_history(run_id, name)
        return sorted((m.step, m.value) for m in history)

    def checkpoints(self, runs: Path) -> Checkpoints:
        (folder,) = [p for p in (runs / "checkpoints").iterdir() if p.is_dir()]
        return Checkpoints(folder)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, template: Path):
    """One uninterrupted run: what every faulty run must end up equal to."""
    space = Space(tmp_path_factory.mktemp("reference"), template)
    runs = space.store("runs")
    code, output = space.run(runs)
    assert code == 0, output
    (run,) = space.runs_of(runs)
    return space, runs, run


@pytest.fixture
def space(tmp_path: Path, template: Path) -> Space:
    return Space(tmp_path, template)


def assert_same_results(space: Space, runs: Path, reference) -> None:
    ref_space, ref_runs, ref_run = reference
    (run,) = [r for r in space.runs_of(runs) if r.info.status == "FINISHED"]
    for name in (mlflow_keys.M_TRAIN_LOSS, mlflow_keys.M_TEST_ERROR, mlflow_keys.M_LR):
        assert space.series(runs, run.info.run_id, name) == ref_space.series(
            ref_runs, ref_run.info.run_id, name
        ), name
    for name in (mlflow_keys.M_FINAL_TEST_ERROR, mlflow_keys.M_BEST_TEST_ERROR):
        assert run.data.metrics[name] == ref_run.data.metrics[name]


def test_kill_9_during_a_checkpoint_write_resumes_exactly(space: Space, reference) -> None:
    runs = space.store("runs")
    code, output = space.run(runs, RKREPRO_FAULT_KILL_IN_CHECKPOINT="2")
    assert code == -signal.SIGKILL, output
    checkpoints = space.checkpoints(runs)
    torn = list(checkpoints.dir.glob(".last.pt.*.tmp"))
    assert len(torn) == 1 and torn[0].stat().st_size == 4096  # half-written, never renamed
    assert checkpoints.load()["epoch"] == 1  # the last complete one
    (run,) = space.runs_of(runs)
    assert run.info.status == "RUNNING"

    code, output = space.run(runs)
    assert code == 0, output
    assert f"resuming run {run.info.run_id}" in output
    assert_same_results(space, runs, reference)


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(space: Space, reference) -> None:
    runs = space.store("runs")
    code, output = space.run(runs, RKREPRO_FAULT_KILL_IN_CHECKPOINT="3")
    assert code == -signal.SIGKILL, output
    checkpoints = space.checkpoints(runs)
    assert checkpoints.load()["epoch"] == 2
    checkpoints.last.write_bytes(checkpoints.last.read_bytes()[:1000])  # torn on disk

    code, output = space.run(runs)
    assert code == 0, output
    assert "ignoring unreadable checkpoint" in output and "resuming run" in output
    assert len(space.runs_of(runs)) == 1  # the same run, not a fresh one
    assert_same_results(space, runs, reference)


def test_all_checkpoints_corrupt_is_a_clear_stop_not_a_fresh_start(space: Space) -> None:
    runs = space.store("runs")
    code, output = space.run(runs, RKREPRO_FAULT_KILL_IN_CHECKPOINT="3")
    assert code == -signal.SIGKILL, output
    checkpoints = space.checkpoints(runs)
    for path in (checkpoints.last, checkpoints.prev):
        path.write_bytes(b"not a checkpoint")
    (before,) = space.runs_of(runs)

    code, output = space.run(runs)
    assert code == 2, output
    error_lines = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1 and "unreadable" in error_lines[0], output
    assert "Traceback" not in output
    (after,) = space.runs_of(runs)  # no new run, nothing trained
    assert after.info.run_id == before.info.run_id
    assert space.series(runs, after.info.run_id, mlflow_keys.M_TEST_ERROR) == space.series(
        runs, before.info.run_id, mlflow_keys.M_TEST_ERROR
    )
    assert checkpoints.last.read_bytes() == b"not a checkpoint"  # left for the user to inspect


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if sys.platform != "linux" or os.geteuid() != 0:
        return False
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def _unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def test_disk_full_while_checkpointing_stops_cleanly_and_keeps_older(
    space: Space, reference
) -> None:
    runs = space.store("runs")
    folder = runs / "checkpoints"
    # A tiny model's checkpoint is ~60 KiB: 160 KiB holds last + prev but not a third copy.
    if not _mount_tmpfs(folder, "160k"):
        pytest.skip("needs root and tmpfs to make a small real filesystem")
    try:
        code, output = space.run(runs)
        assert code == 1, output
        error_lines = [line for line in output.splitlines() if line.startswith("Error:")]
        assert len(error_lines) == 1, output
        assert "No space left on device" in error_lines[0]
        assert "previous checkpoint is intact" in error_lines[0]
        assert "Traceback" not in output
        checkpoints = space.checkpoints(runs)
        assert not list(checkpoints.dir.glob(".last.pt.*.tmp"))  # no torn file left behind
        state = checkpoints.load()
        assert state is not None and state["format"] == CHECKPOINT_FORMAT
        (run,) = space.runs_of(runs)
        assert run.info.status == "FAILED"
        assert "No space left" in run.data.tags[mlflow_keys.TAG_FAILURE]

        subprocess.run(["mount", "-o", "remount,size=8m", str(folder)], check=True)
        code, output = space.run(runs)
        assert code == 0, output
        assert "resuming run" in output
        assert_same_results(space, runs, reference)
    finally:
        _unmount(folder)


def test_the_same_cell_started_twice_at_once_trains_once(space: Space) -> None:
    runs = space.store("runs")
    args = (*ARGS[:-1], "6")  # long enough for the two to overlap
    first = space.spawn(runs, *args)
    time.sleep(0.5)
    second = space.spawn(runs, *args)
    outputs = [p.communicate(timeout=300)[0] for p in (first, second)]
    codes = sorted(p.returncode for p in (first, second))
    assert codes == [0, 1], outputs
    busy = [o for o in outputs if "another rkrepro process is training" in o]
    assert len(busy) == 1, outputs
    finished = [r for r in space.runs_of(runs) if r.info.status == "FINISHED"]
    assert len(finished) == 1
    assert len(space.series(runs, finished[0].info.run_id, mlflow_keys.M_TEST_ERROR)) == 6


def test_a_store_from_another_mlflow_version_is_reported_clearly(space: Space) -> None:
    runs = space.store("runs")
    with sqlite3.connect(runs / "mlflow.db") as con:
        con.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
    before = (runs / "mlflow.db").read_bytes()
    code, output = space.run(runs)
    assert code == 2, output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), output
    assert "mlflow" in lines[0].lower() and "version" in lines[0].lower()
    assert (runs / "mlflow.db").read_bytes() == before


@pytest.mark.parametrize("workers", [0, 2])
def test_an_unreadable_image_mid_epoch_is_one_clear_stop(tmp_path: Path, workers: int) -> None:
    """ImageNet through ImageFolder: a corrupt JPEG in the middle of an epoch names the file."""
    import numpy as np
    import torch
    from PIL import Image
    from torchvision import datasets

    from rkrepro.data import imagenet
    from rkrepro.errors import DataError

    rng = np.random.default_rng(0)
    for cls in ("n01", "n02"):
        (tmp_path / cls).mkdir()
        for i in range(4):
            pixels = rng.integers(0, 255, size=(40, 50, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / cls / f"{i}.JPEG")
    bad = tmp_path / "n02" / "2.JPEG"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated on disk
    _, val_tf = imagenet.imagenet_transforms()
    folder = datasets.ImageFolder(str(tmp_path), val_tf, loader=imagenet.load_image)
    source = imagenet.LoaderBatches(folder, 2, torch.device("cpu"), False, seed=0, workers=workers)
    seen = []
    with pytest.raises(DataError) as caught:
        for _, labels in source.batches(1):
            seen.append(labels)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"unreadable image {bad}") and "resume" in message
    assert len(seen) == 3  # the batches before the bad one were delivered


class Planted:
    """What another user could leave in a shared ``runs/``: unpickling it writes a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def _plant(path: Path, marker: Path) -> None:
    """Rewrite a valid checkpoint with one extra entry that runs code when unpickled."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    torch.save({**state, "note": Planted(marker)}, path)


def test_a_planted_object_in_last_pt_never_runs_and_prev_pt_resumes(
    space: Space, reference
) -> None:
    runs = space.store("runs")
    code, output = space.run(runs, RKREPRO_FAULT_KILL_IN_CHECKPOINT="3")
    assert code == -signal.SIGKILL, output
    checkpoints = space.checkpoints(runs)
    marker = space.root / "code-ran"
    _plant(checkpoints.last, marker)

    code, output = space.run(runs)
    assert not marker.exists(), "unpickling a checkpoint ran code"
    assert code == 0, output
    assert "ignoring unreadable checkpoint" in output and "resuming run" in output
    assert_same_results(space, runs, reference)


def test_planted_objects_in_every_checkpoint_are_an_unreadable_stop(tmp_path: Path) -> None:
    """The resume paths (``last.pt``, the ``prev.pt`` fallback, a non-zero torchrun rank) all
    read through :meth:`Checkpoints.load`: nothing planted runs, and the stop is the clear one."""
    import torch

    from rkrepro.training.checkpoints import CheckpointCorrupt, ReadOnlyCheckpoints

    marker = tmp_path / "code-ran"
    for loader in (Checkpoints, ReadOnlyCheckpoints):
        folder = tmp_path / loader.__name__
        checkpoints = loader(folder)
        Checkpoints(folder).save({"format": CHECKPOINT_FORMAT, "epoch": 1, "run_id": "a"})
        Checkpoints(folder).save({"format": CHECKPOINT_FORMAT, "epoch": 2, "run_id": "a"})
        for path in (checkpoints.last, checkpoints.prev):
            torch.save({"format": CHECKPOINT_FORMAT, "epoch": 2, "x": Planted(marker)}, path)
        with pytest.raises(CheckpointCorrupt, match="unreadable"):
            checkpoints.load()
        assert not marker.exists(), f"{loader.__name__}.load ran planted code"


_LISTENERS_PROBE = """
import os, torch.distributed as dist

def tree(root):
    parents = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            parents[int(pid)] = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            pass
    found, grew = {root}, True
    while grew:
        more = {p for p, pp in parents.items() if pp in found} - found
        found |= more
        grew = bool(more)
    return found

def inodes(pids):
    out = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    out.add(link[8:-1])
        except OSError:
            pass
    return out

dist.init_process_group("gloo")
dist.barrier()
if dist.get_rank() == 0:
    mine = inodes(tree(os.getppid()))  # the torchrun agent and every rank
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(table).read().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in mine:  # LISTEN, ours
                host = cols[1].split(":")[0]
                loop = host in ("0100007F", "00000000000000000000000001000000")
                print("LISTEN", "loopback" if loop else "EXPOSED", table, cols[1], flush=True)
dist.barrier()
dist.destroy_process_group()
"""


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc/net/tcp")
def test_a_single_node_torchrun_job_listens_on_loopback_only(tmp_path: Path) -> None:
    """torch's stores bind every interface by default and the rendezvous unpickles what comes
    in: the torchrun that a DDP job runs under must listen on 127.0.0.1 only."""
    from rkrepro import paper
    from rkrepro.launch import jobs
    from rkrepro.planning import options
    from rkrepro.planning import plan as plans

    ws.make_workspace(tmp_path)
    cells = paper.resolve_cells(
        paper.load_tables(tmp_path / "tables"), "tiny", "bc-k4", ["original"], "both"
    )
    (plan,) = plans.make_plans(cells, [0], options.RunOptions(epochs=1), "cpu")
    args = list(jobs.job_for(plan, "cpu", nproc=2).args)
    head = args[: args.index("rkrepro") - 1]  # the launcher, without "-m rkrepro run ..."
    probe = tmp_path / "probe.py"
    probe.write_text(_LISTENERS_PROBE)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, *head, str(probe)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    listening = [line for line in done.stdout.splitlines() if line.startswith("LISTEN")]
    assert listening, done.stdout + done.stderr  # the probe saw the stores at all
    assert all(" loopback " in line for line in listening), "\n".join(listening)


def test_the_same_cell_in_another_store_leaves_this_stores_checkpoint(
    space: Space, reference
) -> None:
    """Checkpoints belong to one run of one store: training the cell against another
    ``--tracking-uri`` in the same runs folder must not clear the resumable checkpoint."""
    runs = space.store("runs")
    code, output = space.run(runs, RKREPRO_FAULT_KILL_IN_CHECKPOINT="3")
    assert code == -signal.SIGKILL, output
    checkpoints = space.checkpoints(runs)
    before = checkpoints.last.read_bytes()
    other = space.store("other")
    uri = f"sqlite:///{other / 'mlflow.db'}"

    code, output = space.run(runs, *ARGS, "--tracking-uri", uri)
    assert code == 0, output
    assert checkpoints.last.read_bytes() == before, "another store's run replaced the checkpoint"

    code, output = space.run(runs)
    assert code == 0, output
    assert "resuming run" in output
    assert_same_results(space, runs, reference)
