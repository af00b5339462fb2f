"""Suite-wide guards: no test reaches a cluster or tracking server it did not start itself,
and no test writes into the checkout's ``runs/``.

A developer's machine may be a SLURM login node (``srun``/``sbatch`` on PATH, ``SLURM_*`` and
``MLFLOW_TRACKING_URI`` in the environment). Every test runs with the SLURM client commands
removed from PATH and those variables unset, in this process and in every subprocess it
starts; a test that brings up its own cluster puts that cluster's commands back explicitly.

Every test gets its own runs folder (``RKREPRO_RUNS_DIR``, which a test may set again); at the
end the suite fails if anything appeared in the checkout's ``runs/``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from helpers_run import mlflow_template, ws  # noqa: F401 - the run tests' workspace, suite-wide

SLURM_COMMANDS = ("srun", "sbatch", "squeue", "scancel", "scontrol", "sinfo", "sacct", "salloc")
_MIRRORS = Path(tempfile.mkdtemp(prefix="rkrepro-path-"))
atexit.register(shutil.rmtree, _MIRRORS, ignore_errors=True)


def path_without_slurm(path: str) -> str:
    """``path`` where every folder holding a SLURM client command (e.g. /usr/bin) is replaced
    by a mirror of links to everything else in it."""
    folders = []
    for index, folder in enumerate(path.split(os.pathsep)):
        if folder and any((Path(folder) / name).exists() for name in SLURM_COMMANDS):
            mirror = _MIRRORS / str(index)
            if not mirror.exists():
                mirror.mkdir()
                for entry in os.scandir(folder):
                    if entry.name not in SLURM_COMMANDS:
                        os.symlink(entry.path, mirror / entry.name)
            folder = str(mirror)
        folders.append(folder)
    return os.pathsep.join(folders)


# The integration tests start their own cluster and give its subprocesses the real PATH.
os.environ.setdefault("RKREPRO_TEST_REAL_PATH", os.environ.get("PATH", ""))
_PATH = path_without_slurm(os.environ["RKREPRO_TEST_REAL_PATH"])


CHECKOUT_RUNS = Path(__file__).resolve().parents[1] / "runs"


def _checkout_runs_entries() -> set[str]:
    if not CHECKOUT_RUNS.is_dir():
        return set()
    return {str(p.relative_to(CHECKOUT_RUNS)) for p in CHECKOUT_RUNS.rglob("*")} - {".gitignore"}


_RUNS_BEFORE = _checkout_runs_entries()


@pytest.fixture(autouse=True)
def _no_foreign_cluster_or_server(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    monkeypatch.setenv("RKREPRO_RUNS_DIR", str(tmp_path_factory.mktemp("runs")))
    monkeypatch.setenv("PATH", _PATH)
    for name in list(os.environ):
        if name.startswith(("SLURM_", "SBATCH_", "SALLOC_")) or name in (
            "MLFLOW_TRACKING_URI",
            "RKREPRO_SUBMITIT_CLUSTER",
        ):
            monkeypatch.delenv(name, raising=False)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The suite fails if a test wrote into the checkout's ``runs/`` (a user's real runs live
    there)."""
    new = sorted(_checkout_runs_entries() - _RUNS_BEFORE)
    if new:
        shown = ", ".join(new[:5]) + (f" and {len(new) - 5} more" if len(new) > 5 else "")
        print(f"\nERROR: the suite wrote into the checkout's runs/: {shown}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Say where the browser tests left their screenshots (``$RKREPRO_TEST_ARTIFACTS`` or
    ``<basetemp>/artifacts``)."""
    factory = getattr(config, "_tmp_path_factory", None)
    chosen = os.environ.get("RKREPRO_TEST_ARTIFACTS")
    base = getattr(factory, "_basetemp", None)  # only if a test made one: never create it here
    folder = Path(chosen) if chosen else (Path(base) / "artifacts" if base else None)
    if folder is not None and folder.is_dir() and any(folder.iterdir()):
        terminalreporter.write_line(f"test artifacts (screenshots): {folder}")
