"""One job per (cell, seed): the ``rkrepro run`` command that trains exactly one plan, its
environment and its log. Every launcher (local queue, torchrun, SLURM) runs these, so whatever
a job does (skip, resume, track) is what the command does on one GPU.

Nothing here imports torch or mlflow.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import rkrepro
from rkrepro.errors import RkreproError
from rkrepro.paths import RUNS_DIR_ENV, runs_dir, sqlite_path

if TYPE_CHECKING:
    from rkrepro.planning.plan import Plan

# Seconds a job gets to write its checkpoint after SIGTERM before it is killed.
STOP_GRACE_S = 120.0
# Beyond this many simultaneous writers, a local SQLite store is the bottleneck: use a server.
SQLITE_WRITERS_LIMIT = 8


@dataclass(frozen=True)
class Job:
    """One (cell, seed): the arguments after the interpreter, and where its output goes."""

    label: str
    args: tuple[str, ...]  # e.g. ("-m", "rkrepro", "run", ...)
    log: Path
    nproc: int = 1


def job_for(plan: Plan, device: str = "auto", nproc: int = 1) -> Job:
    """``rkrepro run`` of exactly this plan's cell and seed, under torchrun when ``nproc > 1``.

    The options come from the plan's :class:`~rkrepro.planning.options.RunOptions`, so a job plans
    the same configuration (and hash) as the command that launched it.
    """
    cell = plan.cell
    args = [
        "run",
        cell.table,
        "--row",
        cell.row,
        "--variant",
        cell.model,
        "--share" if cell.share else "--no-share",
        "--seed",
        str(plan.seed),
        *plan.options.job_args(),
        "--device",
        device,
    ]
    if nproc > 1:
        args += ["--launcher", "torchrun", "--nproc-per-node", str(nproc)]
        head = [  # torchrun --standalone, listening on 127.0.0.1 only
            "-m",
            "rkrepro.launch.torchrun",
            "--nnodes=1",
            f"--nproc-per-node={nproc}",
            "-m",
            "rkrepro",
        ]
    else:
        head = ["-m", "rkrepro"]
    for arg in args:
        if any(ord(c) < 32 or ord(c) == 127 for c in arg):
            raise RkreproError(
                f"{plan.label}: {ascii(arg)[:80]} holds a control character; it cannot go "
                f"into a job's command line"
            )
    share = "share" if cell.share else "noshare"
    log = runs_dir() / "logs" / cell.table / cell.row / f"{cell.model}-{share}-seed{plan.seed}.log"
    return Job(plan.label, tuple(head + args), log, nproc)


def job_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The parent's environment, plus where runs live and where this rkrepro is imported from."""
    env = dict(os.environ)
    env[RUNS_DIR_ENV] = str(runs_dir())
    env["PYTHONUNBUFFERED"] = "1"
    root = Path(rkrepro.__file__).resolve().parent.parent
    path = env.get("PYTHONPATH", "")
    installed = root.name in ("site-packages", "dist-packages")  # importable there already
    if not installed and str(root) not in path.split(os.pathsep):
        env["PYTHONPATH"] = str(root) + (os.pathsep + path if path else "")
    env.update(extra or {})
    return env


def without_force(args: Sequence[str]) -> tuple[str, ...]:
    return tuple(a for a in args if a != "--force")


def warn_sqlite(uri: str, writers: int, launcher: str) -> str | None:
    """The warning (if any) for parallel jobs writing to a local SQLite store."""
    if sqlite_path(uri) is None:
        return None
    if launcher == "slurm":
        return (
            f"warning: --launcher slurm with the local SQLite store {uri}: every node must see "
            f"this file on a shared filesystem, and SQLite locking over NFS is unreliable; "
            f"start an MLflow server and pass --tracking-uri http://HOST:PORT (see README)"
        )
    if writers > SQLITE_WRITERS_LIMIT:
        return (
            f"warning: {writers} parallel jobs writing to the SQLite store {uri}; beyond "
            f"{SQLITE_WRITERS_LIMIT} writers, lock waits slow them down: use an MLflow server "
            f"(--tracking-uri http://HOST:PORT, see README)"
        )
    return None
