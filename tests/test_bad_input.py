"""Bad command lines: each gets one clear line and exit code 2, and the store stays as it was."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import helpers_workspace as ws
import pytest
from typer.testing import CliRunner

from rkrepro.cli.app import app

RUN = ["run", "tiny", "--row", "bc-k4"]
SHIPPED = Path(__file__).resolve().parent.parent / "tables"

BAD_COMMANDS = {
    "unknown table": (["run", "tiyn", "--row", "bc-k4"], "did you mean tiny"),
    "unknown row": (["run", "tiny", "--row", "bc-k5"], "did you mean bc-k4"),
    "unknown variant": ([*RUN, "--variant", "RKNet-1x3_1x1_1x1"], "RKNet-1x2_1x1_1x1"),
    "unparsable variant": ([*RUN, "--variant", "RKNet-1y2"], "RKNet-"),
    "seeds and seed": ([*RUN, "--seeds", "2", "--seed", "1"], "not both"),
    "zero seeds": ([*RUN, "--seeds", "0"], "--seeds"),
    "negative seed": ([*RUN, "--seed", "-1"], "seed"),
    "huge seed": ([*RUN, "--seed", str(2**40)], "seed"),
    "zero epochs": ([*RUN, "--epochs", "0"], "--epochs"),
    "negative epochs": ([*RUN, "--epochs", "-3"], "--epochs"),
    "zero train subset": ([*RUN, "--train-subset", "0"], "--train-subset"),
    "not a number": ([*RUN, "--epochs", "many"], "--epochs"),
    "share and both": ([*RUN, "--share", "--both"], "only one of"),
    "unknown device": ([*RUN, "--device", "tpu"], "device"),
    "absent cuda": ([*RUN, "--device", "cuda:7"], "cuda"),
    "fast path switch": ([*RUN, "--fast-path", "-warp_speed"], "bad fast-path switch"),
    "fast path word": ([*RUN, "--fast-path", "fast"], "bad fast-path switch"),
    "fast path precision": ([*RUN, "--fast-path", "-bf16"], "use --precision bf16"),
    "unknown precision": ([*RUN, "--precision", "fp64"], "use one of fp32, tf32, bf16, fp16"),
    "bf16 on the cpu": ([*RUN, "--precision", "bf16", "--device", "cpu"], "needs a CUDA device"),
    # `run TABLE` without --row runs every row; rows belong to one table, so `all` takes none.
    "row of every table": (["run", "all", "--row", "bc-k4"], "run all takes no --row"),
    "missing data": ([*RUN, "--data-dir", "/nonexistent/data"], "cifar-10-batches-py"),
    "unknown command": (["rnu"], "No such command"),
    "report format": (["report", "tiny", "--format", "xml"], "--format"),
    "report tolerance": (["report", "tiny", "--tolerance", "-1"], "--tolerance"),
    "report unknown table": (["report", "tabel9"], "unknown table"),
    "status unknown table": (["status", "tabel9"], "unknown table"),
    "list tables dir": (["list", "--tables-dir", "/nonexistent/tables"], "does not exist"),
    "show without row": (["show", "tiny"], "Missing option '--row'"),
    "params unknown row": (["params", "tiny", "--row", "bc-k44"], "did you mean bc-k4"),
    "plan row without table": (["plan", "--row", "bc-k4"], "needs a TABLE"),
    "negative workers": ([*RUN, "--workers", "-1"], "--workers"),
    "tpu dry run": ([*RUN, "--device", "tpu:7", "--dry-run"], "unknown device 'tpu:7'"),
    "report out onto the store": (["report", "tiny", "--out", "runs/mlflow.db"], "MLflow store"),
    "report out onto a checkpoint": (
        ["report", "tiny", "--out", "runs/checkpoints/abc/last.pt"],
        "checkpoints folder",
    ),
    "report out onto a table file": (
        ["report", "tiny", "--out", "tables/tiny.yaml"],
        "not an rkrepro report; add --force",
    ),
    "report out into a missing folder": (
        ["report", "tiny", "--out", "missing/report.md"],
        "does not exist",
    ),
    "report out onto a folder": (["report", "tiny", "--out", "tables"], "is a folder"),
    "report out onto /dev/full": (
        ["report", "tiny", "--out", "/dev/full", "--format", "markdown"],
        "No space left on device",
    ),
    "report claims out onto /dev/full": (
        ["report", "table4", "--claims", "-f", "markdown", "--out", "/dev/full"]
        + ["--tables-dir", str(SHIPPED)],
        "No space left on device",
    ),
    "report plots onto a file": (["report", "tiny", "--plots", "tables/tiny.yaml"], "is a file"),
}


def _dump(db: Path) -> list[tuple]:
    """Everything the store holds about runs, in a stable order."""
    with sqlite3.connect(db) as con:
        rows = []
        for table in ("experiments", "runs", "tags", "params", "metrics", "latest_metrics"):
            rows += [(table, *r) for r in con.execute(f"SELECT * FROM {table}").fetchall()]
    return sorted(rows, key=repr)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    """A workspace whose store already holds one finished run."""
    root = tmp_path_factory.mktemp("bad-input")
    env = ws.make_workspace(root, n_train=64)
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        done = CliRunner().invoke(app, [*RUN, "--variant", "original", "--epochs", "1"])
    assert done.exit_code == 0, done.output
    return root, env


@pytest.mark.bad_input
@pytest.mark.parametrize("case", sorted(BAD_COMMANDS))
def test_bad_command_lines_give_one_line_and_exit_2(store, monkeypatch, case):
    root, env = store
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(root)
    db = root / "runs" / "mlflow.db"
    before = _dump(db)
    args, expected = BAD_COMMANDS[case]

    result = CliRunner().invoke(app, args)

    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ") and expected in lines[0], lines[0]
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), repr(result.exception)
    assert _dump(db) == before


# --------------------------------------------------------------------------------------------
# A hostile or broken tables folder: one line, exit 2, in bounded time and memory.


def _bomb() -> str:
    """A billion laughs: ten anchored lists, each nine aliases of the one before (9**10 x's)."""
    parts = ["&a [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        prev = chr(96 + i)
        parts.append(f"&{chr(97 + i)} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return "[" + ", ".join(parts) + "]"


def _hostile(kind: str, path: Path) -> None:
    """Write the bad table file ``kind`` at ``path``."""
    table = ws.TINY_TABLE
    if kind == "alias bomb in caption":
        path.write_text(table.replace("id: tiny\n", f"id: bomb\ncaption: {_bomb()}\n"))
    elif kind == "50 MB file":
        path.write_text(table.replace("id: tiny", "id: big") + "#" * (50 << 20) + "\n")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink to /dev/zero":
        path.symlink_to("/dev/zero")
    elif kind == "100k nesting levels":
        path.write_text("id: deep\ncaption: " + "[" * 100_000 + "]" * 100_000 + "\n")
    elif kind == "unhashable key":
        path.write_text("? [a, b]\n: 1\nid: k\n")
    elif kind == "invalid utf-8":
        path.write_bytes(table.replace("id: tiny", "id: latin").encode() + b"# caf\xe9\n")
    elif kind == "binary":
        path.write_bytes(bytes(range(256)) * 16)
    elif kind == "5000-digit stage count":
        path.write_text(table.replace("RKNet-1x2_1x1_1x1", "RKNet-" + "9" * 5000 + "x1_1x1_1x1"))
    elif kind == "5000-digit depth":
        path.write_text(table.replace("depth: 10", "depth: " + "9" * 5000))
    else:
        raise AssertionError(kind)


HOSTILE_TABLES = {
    "alias bomb in caption": "must be a string",
    "50 MB file": f"at most {1 << 20} bytes",
    "fifo": "not a regular file",
    "symlink to /dev/zero": "not a regular file",
    "100k nesting levels": "nested more than 32 levels",
    "unhashable key": "cannot be a key",
    "invalid utf-8": "not UTF-8",
    "binary": "bad.yaml",
    "5000-digit stage count": "bad.yaml",
    "5000-digit depth": "bad.yaml",
}


def _rkrepro(env: dict[str, str], *args: str, timeout: float = 30) -> tuple[int, str, float]:
    """``python -m rkrepro ARGS`` in a child with 4 GB of address space at most."""
    import resource
    import subprocess
    import sys
    import time

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    start = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "rkrepro", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=limit,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"rkrepro {' '.join(args)[:80]} did not answer within {timeout}s")
    return done.returncode, done.stdout + done.stderr, time.monotonic() - start


def _rkrepro_each(
    env: dict[str, str], commands: list[tuple[str, ...]], timeout: float = 60, workers: int = 4
) -> list[tuple[tuple[str, ...], int, str, float]]:
    """``_rkrepro`` for each command, a few at a time (they mostly wait: on a timeout, or on
    Python's start-up), in the order given: (args, exit code, output, seconds)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda args: _rkrepro(env, *args, timeout=timeout), commands))
    return [(args, *result) for args, result in zip(commands, results, strict=True)]


def _child_env(root: Path) -> dict[str, str]:
    env = {**os.environ, **ws.make_workspace(root, n_train=10, n_test=10)}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


@pytest.mark.bad_input
@pytest.mark.parametrize("kind", sorted(HOSTILE_TABLES))
def test_a_hostile_table_file_is_one_line_in_bounded_time(tmp_path: Path, kind: str) -> None:
    env = _child_env(tmp_path)
    _hostile(kind, tmp_path / "tables" / "bad.yaml")
    code, output, seconds = _rkrepro(env, "list")
    lines = output.strip().splitlines()
    assert code == 2 and len(lines) == 1, output[-2000:]
    assert lines[0].startswith("Error: ") and "bad.yaml" in lines[0], lines[0]
    assert HOSTILE_TABLES[kind] in lines[0] and len(lines[0]) < 500, lines[0]
    assert seconds < 20, seconds


_ONLY_ORIGINAL = ("    variants:\n      - {name: RKNet-1x2_1x1_1x1, share: {}}\n", "")
OVERSIZED = {
    # (replacements in the tiny table, what the one error line must say)
    "huge variant": ([("RKNet-1x2_1x1_1x1", "RKNet-1000x1000_1x1_1x1")], "at most 64 stages"),
    "growth rate 10^6": ([("growth_rate: 4", "growth_rate: 1000000")], "at most 256"),
    "m of 10^4": ([("m: [2, 2, 2]", "m: [2, 10000, 2]")], "at most 512"),
    "too many layers": ([("RKNet-1x2_1x1_1x1", "RKNet-64x64_1x1_1x1")], "at most 2000"),
    # A DenseNet-BC within every field's limit, 995 layers of k=256: about 1e11 parameters.
    "too many parameters": (
        [("growth_rate: 4", "growth_rate: 256"), ("depth: 10", "depth: 1990"), _ONLY_ORIGINAL],
        "G per model",
    ),
}


@pytest.mark.bad_input
@pytest.mark.parametrize("case", sorted(OVERSIZED))
def test_an_oversized_model_is_refused_before_it_is_built(tmp_path: Path, case: str) -> None:
    replacements, expected = OVERSIZED[case]
    env = _child_env(tmp_path)
    table = ws.TINY_TABLE
    for old, new in replacements:
        table = table.replace(old, new)
    assert table != ws.TINY_TABLE
    (tmp_path / "tables" / "tiny.yaml").write_text(table)
    for args in (
        ["params", "tiny"],
        ["plan", "tiny"],
        ["report", "tiny"],
        ["run", "tiny", "--row", "bc-k4", "--dry-run", "--device", "cpu"],
    ):
        code, output, seconds = _rkrepro(env, *args, timeout=60)
        lines = output.strip().splitlines()
        assert code == 2 and len(lines) == 1, (args, output[-2000:])
        assert expected in lines[0] and "tiny.yaml" in lines[0], (args, lines[0])
        assert seconds < 20, (args, seconds)


# --------------------------------------------------------------------------------------------
# A broken store, runs folder or tracking URI: one line, exit 2, in bounded time, and what the
# store already holds is left exactly as it was. Every command runs as a real subprocess.

RESUMABLE = ("run", "tiny", "--row", "bc-k4", "--variant", "RKNet-1x2_1x1_1x1", "--no-share")
READERS = (("status", "tiny"), ("list",), ("report", "tiny"))


@pytest.fixture(scope="module")
def runs_space(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace whose store holds a finished run and a resumable one (killed after its
    first epoch's checkpoint, so its MLflow run is RUNNING with a checkpoint to resume)."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("runs-space")
    env = {**_child_env(root), "OMP_NUM_THREADS": "1"}
    finished = [*RUN, "--variant", "original", "--epochs", "1", "--device", "cpu"]
    done = subprocess.run(
        [sys.executable, "-m", "rkrepro", *finished], env=env, capture_output=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    killed = subprocess.run(
        [sys.executable, "-m", "rkrepro", *RESUMABLE, "--epochs", "3", "--device", "cpu"],
        env={**env, "RKREPRO_FAULT_KILL_IN_CHECKPOINT": "2"},
        capture_output=True,
        timeout=300,
    )
    assert killed.returncode < 0, killed.stdout + killed.stderr  # SIGKILL, as planned
    return root


def _copy_space(source: Path, target: Path) -> dict[str, str]:
    """A copy of a workspace (tables, data, runs) and the environment that points there."""
    import shutil

    shutil.copytree(source, target, symlinks=True)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    for name, folder in (("RUNS", "runs"), ("DATA", "data"), ("TABLES", "tables")):
        env[f"RKREPRO_{name}_DIR"] = str(target / folder)
    env.update({"RKREPRO_VERIFY_CHECKSUMS": "0", "RKREPRO_DOWNLOAD": "0"})
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes: the store, checkpoints, artifacts."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _one_error_line(output: str) -> str:
    lines = output.strip().splitlines()
    assert len(lines) == 1, output[-3000:]
    assert lines[0].startswith("Error: ") and "Traceback" not in output, output[-3000:]
    assert len(lines[0]) < 600, lines[0]
    return lines[0]


@pytest.mark.bad_input
@pytest.mark.parametrize("kind", ["garbage bytes", "truncated sqlite file"])
def test_a_corrupt_store_is_one_line_for_run_and_every_reader(
    runs_space: Path, tmp_path: Path, kind: str
) -> None:
    import random

    env = _copy_space(runs_space, tmp_path / "ws")
    db = tmp_path / "ws" / "runs" / "mlflow.db"
    data = db.read_bytes()
    if kind == "garbage bytes":
        db.write_bytes(random.Random(0).randbytes(len(data)))
    else:
        assert data.startswith(b"SQLite format 3\0")
        db.write_bytes(data[: len(data) // 2])
    before = _snapshot(tmp_path / "ws" / "runs")
    words = "not a database" if kind == "garbage bytes" else "malformed"
    commands = [(*RESUMABLE, "--epochs", "3", "--device", "cpu"), *READERS]
    for args, code, output, seconds in _rkrepro_each(env, commands):
        line = _one_error_line(output)
        assert code == 2, (args, output[-3000:])
        assert "cannot read MLflow store" in line and str(db) in line and words in line, line
        assert seconds < 30, (args, seconds)
    assert _snapshot(tmp_path / "ws" / "runs") == before  # nothing written, nothing lost


def _mount_read_only(folder: Path, fill: Path | None = None) -> bool:
    """Make ``folder`` a real read-only filesystem (a tmpfs, filled from ``fill`` and then
    remounted read-only): permission bits do not stop root, a read-only mount does."""
    import shutil
    import subprocess
    import sys

    folder.mkdir(parents=True, exist_ok=True)
    if sys.platform != "linux" or os.geteuid() != 0:
        return False
    mount = ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder)]
    if subprocess.run(mount, capture_output=True, check=False).returncode != 0:
        return False
    if fill is not None:
        shutil.copytree(fill, folder, symlinks=True, dirs_exist_ok=True)
    remount = ["mount", "-o", "remount,ro", str(folder)]
    if subprocess.run(remount, capture_output=True, check=False).returncode != 0:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)
        return False
    return True


@pytest.fixture
def read_only_runs(tmp_path: Path):
    """``mount(runs, fill)``: ``runs`` made read-only for real (a read-only tmpfs as root; the
    permission bits 0555 otherwise, which do stop a non-root user); undone afterwards."""
    import subprocess

    made: list[tuple[Path, bool]] = []

    def mount(runs: Path, fill: Path | None = None) -> None:
        if os.geteuid() == 0:
            if not _mount_read_only(runs, fill):
                pytest.skip("running as root without a tmpfs mount: no way to deny writes")
            made.append((runs, True))
            return
        if fill is not None:
            import shutil

            shutil.copytree(fill, runs, symlinks=True, dirs_exist_ok=True)
        runs.mkdir(parents=True, exist_ok=True)
        runs.chmod(0o555)
        made.append((runs, False))

    yield mount
    for runs, mounted in made:
        if mounted:
            subprocess.run(["umount", "-l", str(runs)], capture_output=True, check=False)
        else:
            runs.chmod(0o755)


@pytest.mark.bad_input
def test_a_read_only_runs_folder_is_one_line_for_a_new_run(tmp_path: Path, read_only_runs):
    env = _child_env(tmp_path)
    runs = tmp_path / "runs"
    read_only_runs(runs)
    other = tmp_path / "elsewhere" / "mlflow.db"
    new_run = (*RUN, "--variant", "original", "--epochs", "1", "--device", "cpu")
    for args in (
        new_run,  # the default store, in runs/
        (*new_run, "--seeds", "2", "--cpu-jobs", "2"),  # through the local queue
        (*new_run, "--tracking-uri", f"sqlite:///{other}"),  # checkpoints still go to runs/
    ):
        code, output, seconds = _rkrepro(env, *args, timeout=60)
        line = _one_error_line(output)
        assert code == 2, (args, output[-3000:])
        assert "cannot write" in line and str(runs) in line, line
        assert "Read-only file system" in line or "Permission denied" in line, line
        assert seconds < 30, (args, seconds)
    assert list(runs.iterdir()) == [] and not other.exists()
    for args in READERS:  # reading needs no write
        code, output, _ = _rkrepro(env, *args)
        assert code == 0 and "Traceback" not in output, (args, output[-3000:])


@pytest.mark.bad_input
def test_a_read_only_store_with_runs_is_one_line_and_still_readable(
    runs_space: Path, tmp_path: Path, read_only_runs
) -> None:
    env = _copy_space(runs_space, tmp_path / "ws")
    runs = tmp_path / "ws" / "runs"
    saved = tmp_path / "saved-runs"
    status = ("status", "tiny", "--format", "json", "--include-shortened")
    code, readable, _ = _rkrepro(env, *status)
    assert code == 0 and "FINISHED" in readable and "RUNNING" in readable, readable[-3000:]
    runs.rename(saved)
    read_only_runs(runs, fill=saved)
    before = _snapshot(runs)
    code, output, seconds = _rkrepro(env, *RESUMABLE, "--epochs", "3", "--device", "cpu")
    line = _one_error_line(output)
    assert code == 2 and "cannot write" in line and seconds < 30, (line, seconds)
    assert _rkrepro(env, *status)[:2] == (0, readable)  # still read, all of it
    assert _snapshot(runs) == before


@pytest.mark.bad_input
def test_a_row_id_too_long_for_a_file_name_is_one_line(tmp_path: Path) -> None:
    """A row id names a folder of job logs (``runs/logs/TABLE/ROW``); 10,000 characters
    stopped the local queue with ENAMETOOLONG. Ids have a limit, and every message shows at
    most ~60 characters of one."""
    from rkrepro.paper.limits import MAX_ID

    env = _child_env(tmp_path)
    long_id = "x" * 10_000
    table = ws.TINY_TABLE.replace("id: tiny", "id: long").replace("id: bc-k4", f"id: {long_id}")
    (tmp_path / "tables" / "long.yaml").write_text(table)
    queue = ("--variant", "original", "--epochs", "1", "--seeds", "2", "--cpu-jobs", "2")
    for args in (("list",), ("run", "long", "--row", long_id, *queue, "--device", "cpu")):
        code, output, seconds = _rkrepro(env, *args, timeout=60)
        line = _one_error_line(output)
        assert code == 2, (args, output[-3000:])
        assert "long.yaml" in line and f"at most {MAX_ID}" in line, line
        assert seconds < 30, (args, seconds)
    (tmp_path / "tables" / "long.yaml").unlink()
    # From the command line: the usual unknown-row line with the known rows, bounded.
    code, output, _ = _rkrepro(env, "run", "tiny", "--row", "bc-k4" + long_id, *queue)
    line = _one_error_line(output)
    assert code == 2 and "unknown row" in line and "bc-k4" in line, line


@pytest.mark.bad_input
def test_a_job_log_that_cannot_be_written_stops_the_queue_before_any_job(tmp_path: Path) -> None:
    """Whatever keeps a job's log from being made (here ``runs/logs`` is a file) is one line
    before the first job starts, not a traceback from a queue thread."""
    env = _child_env(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "logs").write_text("not a folder")
    queue = ("--variant", "original", "--epochs", "1", "--seeds", "2", "--cpu-jobs", "2")
    code, output, seconds = _rkrepro(env, *RUN, *queue, "--device", "cpu", timeout=60)
    line = output.strip().splitlines()[-1]
    assert code == 2 and "Traceback" not in output, output[-3000:]
    assert line.startswith("Error: cannot write the log of job") and "Not a directory" in line
    assert "no job was started" in line and seconds < 30, (line, seconds)
    with sqlite3.connect(tmp_path / "runs" / "mlflow.db") as con:
        assert con.execute("SELECT count(*) FROM runs").fetchone() == (0,)


@pytest.mark.bad_input
def test_the_longest_row_id_fits_every_file_name(tmp_path: Path, monkeypatch) -> None:
    """At the limit, every folder and file a job writes has a name the system accepts."""
    from rkrepro import paper
    from rkrepro.launch import jobs
    from rkrepro.paper.limits import MAX_ID
    from rkrepro.planning import options
    from rkrepro.planning import plan as plans

    longest = "r" * MAX_ID
    for name, value in ws.make_workspace(tmp_path).items():
        monkeypatch.setenv(name, value)
    table = ws.TINY_TABLE.replace("id: bc-k4", f"id: {longest}")
    table = table.replace("id: tiny", "id: " + "t" * MAX_ID)
    (tmp_path / "tables" / "tiny.yaml").write_text(table)
    tables = paper.load_tables(tmp_path / "tables")
    variants = ["original", "RKNet-1x2_1x1_1x1"]
    cells = paper.resolve_cells(tables, "t" * MAX_ID, longest, variants, "both")
    for plan in plans.make_plans(cells, [2**31 - 1], options.RunOptions(epochs=1), "cpu"):
        log = jobs.job_for(plan, "cpu").log
        assert all(len(part.encode()) <= 255 for part in log.parts), log
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("ok")  # the system agrees


@pytest.mark.bad_input
def test_a_database_uri_without_its_driver_is_one_line(tmp_path: Path) -> None:
    """SQLAlchemy maps a bare ``postgresql://`` to psycopg 3; the ``server`` extra installs
    psycopg2. The driver is imported before anything connects: no database is needed."""
    import importlib.util

    if importlib.util.find_spec("psycopg") is not None:
        pytest.skip("psycopg 3 is installed here: postgresql:// has its driver")
    env = _child_env(tmp_path)
    uri = "postgresql://user:secret@127.0.0.1:1/db"
    commands = [
        (*args, "--tracking-uri", uri)
        for args in ((*RUN, "--variant", "original", "--epochs", "1", "--device", "cpu"), *READERS)
    ]
    for args, code, output, seconds in _rkrepro_each(env, commands):
        line = _one_error_line(output)
        assert code == 2, (args, output[-3000:])
        assert "'psycopg' is not installed" in line and "postgresql+psycopg2://" in line, line
        assert "secret" not in line, line
        assert seconds < 30, (args, seconds)
    assert not (tmp_path / "runs").exists()  # nothing was created locally


@pytest.mark.bad_input
def test_a_database_that_refuses_or_never_answers_is_one_line_in_bounded_time(
    tmp_path: Path, silent_server: str
) -> None:
    """With its driver installed, a PostgreSQL URI whose port refuses (nothing listens) or
    never answers (a socket server that accepts and is silent): MLflow's own engine retried
    for ~117 s, then a traceback. One connection with a 5 s timeout says it in one line."""
    pytest.importorskip("psycopg2", reason="pip install 'rkrepro[server]' (psycopg2-binary)")
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        refused = probe.getsockname()[1]
    env = _child_env(tmp_path)
    silent = int(silent_server.rsplit(":", 1)[1])
    run = (*RUN, "--variant", "original", "--epochs", "1", "--device", "cpu")
    commands = [
        (*args, "--tracking-uri", f"postgresql+psycopg2://mlflow:secret@127.0.0.1:{port}/mlflow")
        for port in (refused, silent)
        for args in (run, *READERS)
    ]
    for args, code, output, seconds in _rkrepro_each(env, commands):
        line = _one_error_line(output)
        expected = "refused" if f":{refused}/" in args[-1] else "timeout"
        assert code == 2, (args, output[-3000:])
        assert "cannot connect" in line and expected in line.lower(), line
        assert "secret" not in line, line
        assert seconds < 30, (args, seconds)
    assert not (tmp_path / "runs").exists()


@pytest.fixture
def silent_server():
    """A TCP server on 127.0.0.1 that accepts every connection and never sends a byte."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except (TimeoutError, OSError):
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(timeout=5)
    for conn in held:
        conn.close()
    server.close()


@pytest.mark.bad_input
def test_a_server_that_never_answers_is_one_line_in_bounded_time(
    tmp_path: Path, silent_server: str
) -> None:
    """It accepts the connection and sends nothing: ``status`` used to wait 99 s (MLflow's
    retries of 30 s timeouts); every command now gives up after one 5 s request."""
    env = _child_env(tmp_path)
    commands = [
        (*args, "--tracking-uri", silent_server)
        for args in (*READERS, (*RUN, "--variant", "original", "--epochs", "1", "--device", "cpu"))
    ]
    for args, code, output, seconds in _rkrepro_each(env, commands):
        line = _one_error_line(output)
        assert code == 2, (args, output[-3000:])
        assert f"{silent_server} did not answer within" in line, line
        assert seconds < 30, (args, seconds)
    assert not (tmp_path / "runs" / "checkpoints").exists()  # nothing started


# --------------------------------------------------------------------------------------------
# runs/ planted by someone else, and paths that would break a job script or a store URI.


def _victim(root: Path) -> Path:
    victim = root / "home" / ".bashrc"
    victim.parent.mkdir(parents=True)
    victim.write_text("# mine\n")
    return victim


def _workspace(root: Path, monkeypatch) -> Path:
    for name, value in ws.make_workspace(root, n_train=64, n_test=16).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(root)
    return root / "runs"


@pytest.mark.bad_input
def test_a_job_log_planted_as_a_link_is_refused_before_any_job(tmp_path: Path, monkeypatch):
    runs = _workspace(tmp_path, monkeypatch)
    victim = _victim(tmp_path)
    log = runs / "logs" / "tiny" / "bc-k4" / "original-noshare-seed0.log"
    log.parent.mkdir(parents=True)
    log.symlink_to(victim)
    result = CliRunner().invoke(
        app, [*RUN, "--variant", "original", "--no-share", "--epochs", "1", "--cpu-jobs", "1"]
    )
    assert result.exit_code == 2, result.output
    assert "is a link" in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.output and victim.read_text() == "# mine\n"


@pytest.mark.bad_input
def test_a_runs_subfolder_that_links_out_is_refused(tmp_path: Path, monkeypatch):
    runs = _workspace(tmp_path, monkeypatch)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    runs.mkdir()
    (runs / "checkpoints").symlink_to(outside)
    result = CliRunner().invoke(app, [*RUN, "--variant", "original", "--no-share", "--epochs", "1"])
    assert result.exit_code == 2, result.output
    assert "checkpoints is a link" in result.stderr
    assert list(outside.iterdir()) == []


@pytest.mark.bad_input
def test_a_runs_folder_with_a_newline_never_reaches_a_job_script(tmp_path: Path, monkeypatch):
    """A newline in the runs folder's path would be a shell line of the sbatch script."""
    _workspace(tmp_path, monkeypatch)
    monkeypatch.setenv("RKREPRO_RUNS_DIR", str(tmp_path / "runs\ntouch pwned"))
    monkeypatch.setenv("RKREPRO_SUBMITIT_CLUSTER", "local")
    args = [*RUN, "--variant", "original", "--no-share", "--epochs", "1", "--launcher", "slurm"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "control character" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "pwned").exists() and not list(tmp_path.glob("runs*"))


@pytest.mark.bad_input
@pytest.mark.parametrize("name", ["exp?1", "a#b", "x%41"])
def test_a_runs_folder_named_like_a_uri_part_is_refused_not_sent_elsewhere(
    tmp_path: Path, monkeypatch, name
):
    """``?``, ``#`` and ``%`` in the runs folder's path would send the runs into another store
    (``exp?1/runs/mlflow.db`` used to open the SQLite file ``exp``): one line, nothing written."""
    _workspace(tmp_path, monkeypatch)
    monkeypatch.setenv("RKREPRO_RUNS_DIR", str(tmp_path / name / "runs"))
    for args in ([*RUN, "--variant", "original", "--no-share", "--epochs", "1"], ["status"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "cannot carry" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "tables"]


@pytest.mark.bad_input
def test_a_plot_planted_as_a_link_is_replaced_not_written_through(tmp_path: Path, monkeypatch):
    _workspace(tmp_path, monkeypatch)
    victim = _victim(tmp_path)
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "tiny_params_vs_error.png").symlink_to(victim)
    result = CliRunner().invoke(app, ["report", "tiny", "--plots", str(plots)])
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "# mine\n"
    png = plots / "tiny_params_vs_error.png"
    assert not png.is_symlink() and png.read_bytes().startswith(b"\x89PNG")


def _artifacts_of_resumable_run(root: Path) -> Path:
    """The artifact folder of the copied workspace's resumable run, its store repointed from
    the workspace it was copied from to this one (the store keeps absolute paths)."""
    with sqlite3.connect(root / "runs" / "mlflow.db") as con:
        (run_id, uri) = con.execute(
            "SELECT run_uuid, artifact_uri FROM runs WHERE status = 'RUNNING'"
        ).fetchone()
        source = uri.split("/runs/artifacts/")[0]
        target = (root / "runs").parent.as_uri()
        con.execute("UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?)", (source, target))
        con.execute(
            "UPDATE experiments SET artifact_location = replace(artifact_location, ?, ?)",
            (source, target),
        )
    return root / "runs" / "artifacts" / "tiny" / run_id / "artifacts"


@pytest.mark.bad_input
def test_an_artifact_planted_as_a_link_is_replaced_not_written_through(
    runs_space: Path, tmp_path: Path
) -> None:
    """The run id of a resumable run is in the store: a link planted at its ``metrics.csv``
    (or ``config.yaml``) made MLflow's local artifact store write the end of the run through
    it. The files are replaced; the links' targets stay as they were."""
    env = _copy_space(runs_space, tmp_path / "ws")
    folder = _artifacts_of_resumable_run(tmp_path / "ws")
    assert (folder / "config.yaml").is_file()  # written when the run started
    victims = {}
    for name in ("metrics.csv", "config.yaml"):
        victims[name] = _victim(tmp_path / name)
        (folder / name).unlink(missing_ok=True)
        (folder / name).symlink_to(victims[name])
    code, output, _ = _rkrepro(env, *RESUMABLE, "--epochs", "3", "--device", "cpu", timeout=300)
    assert code == 0 and "Traceback" not in output, output[-3000:]
    for name, victim in victims.items():
        assert victim.read_text() == "# mine\n", name
        assert (folder / name).is_file() and not (folder / name).is_symlink(), name
    assert (folder / "metrics.csv").read_text().startswith("epoch,")
    assert "protocol:" in (folder / "config.yaml").read_text()


@pytest.mark.bad_input
def test_an_artifact_folder_planted_as_a_link_is_refused_before_training(
    runs_space: Path, tmp_path: Path
) -> None:
    """``runs/artifacts/TABLE`` as a link out of the runs folder: MLflow wrote the run's files
    into the link's target. One line, before the run trains; the target untouched."""
    env = _copy_space(runs_space, tmp_path / "ws")
    _artifacts_of_resumable_run(tmp_path / "ws")
    table = tmp_path / "ws" / "runs" / "artifacts" / "tiny"
    outside = tmp_path / "outside"
    table.rename(outside)
    table.symlink_to(outside)
    before = _snapshot(outside)
    code, output, seconds = _rkrepro(env, *RESUMABLE, "--epochs", "3", "--device", "cpu")
    line = output.strip().splitlines()[-1]
    assert code == 2 and "Traceback" not in output, output[-3000:]
    assert line.startswith("Error: ") and f"{table} is a link" in line, line
    assert _snapshot(outside) == before and seconds < 30
