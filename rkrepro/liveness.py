"""How a RUNNING run is doing, for ``rkrepro status``: its epoch out of its epochs, speed and
time to go from the metrics it logged, and whether it is *stale* (its process is gone, or it
logged nothing for a few epochs' time), with the command that resumes it.

MLflow leaves a run RUNNING when its process is killed (``kill -9``, a lost node): only the
run's own process could have marked it otherwise. So a RUNNING run is judged here:

- on the machine it trains on, by its process (host, pid and start time, tagged when the run
  was opened or resumed): gone means stale, at once;
- elsewhere (another node, a run logged before the tag), by time: no metric for
  :data:`STALE_EPOCHS` epochs' time (at least :data:`STALE_MIN_S`) means stale.

Torch- and mlflow-free; the store is read by :mod:`rkrepro.tracking.reader`.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rkrepro import processes
from rkrepro.paper import readings as readings_mod
from rkrepro.planning import precision as precision_mod
from rkrepro.tracking import keys as mlflow_keys
from rkrepro.tracking.reader import RunProgress, RunRecord

if TYPE_CHECKING:
    from rkrepro.paper import Cell

STALE_EPOCHS = 3
STALE_MIN_S = 120.0
STALE_WORD = "stale (process gone?)"


@dataclass(frozen=True)
class Health:
    """A RUNNING run judged: how far it is, and whether its process still writes it."""

    run: RunRecord
    progress: RunProgress
    now_s: float
    stale: bool = False

    @property
    def epoch(self) -> int:
        return self.progress.epoch or 0

    @property
    def eta_s(self) -> float | None:
        """Seconds to the last epoch at the latest epoch's pace; None before one finished."""
        seconds, epochs = self.progress.epoch_seconds, self.run.epochs
        if self.stale or seconds is None or not epochs:
            return None
        return max(0, epochs - self.epoch) * seconds

    @property
    def idle_s(self) -> float:
        """Seconds since the run last logged an epoch (or started)."""
        last = self.progress.last_logged_ms or self.run.start_time
        return max(0.0, self.now_s - last / 1000) if last else 0.0

    def text(self) -> str:
        """``epoch 12/300, 412 images/s, ETA 5 h 3 min``; a stale run says so first."""
        of = f"/{self.run.epochs}" if self.run.epochs else ""
        parts = [f"epoch {self.epoch}{of}"]
        if self.stale:
            return f"{STALE_WORD}: {parts[0]}, last logged {duration(self.idle_s)} ago"
        if self.progress.images_per_s is not None:
            parts.append(f"{self.progress.images_per_s:,.0f} images/s")
        eta = self.eta_s
        if eta is not None:
            parts.append(f"ETA {duration(eta)}")
        elif not self.epoch:
            parts.append("ETA after epoch 1")
        return ", ".join(parts)

    def record(self) -> dict[str, object]:
        """JSON-ready, for ``status --format json``."""
        return {
            "epoch": self.epoch,
            "epochs": self.run.epochs,
            "images_per_s": self.progress.images_per_s,
            "eta_s": self.eta_s,
            "stale": self.stale,
            "last_logged_ms": self.progress.last_logged_ms,
        }


def assess(
    records: Iterable[RunRecord], progress: Mapping[str, RunProgress], now_s: float | None = None
) -> dict[str, Health]:
    """Run id -> :class:`Health` of each RUNNING run among ``records``."""
    now = time.time() if now_s is None else now_s
    out = {}
    for run in records:
        if run.status != "RUNNING":
            continue
        found = progress.get(run.run_id) or RunProgress(run.run_id)
        health = Health(run, found, now)
        out[run.run_id] = Health(run, found, now, stale=_stale(health))
    return out


def _stale(health: Health) -> bool:
    gone = processes.is_gone(health.progress.process) if health.progress.process else None
    if gone is not None:
        return gone
    seconds = health.progress.epoch_seconds
    if seconds is None:
        return False  # nothing to measure a pace by before the first epoch
    return health.idle_s > max(STALE_EPOCHS * seconds, STALE_MIN_S)


def resume_command(
    run: RunRecord,
    cell: Cell,
    progress: RunProgress | None = None,
    *,
    tracking_uri: str | None = None,
    tables_dir: str | None = None,
) -> str:
    """The ``rkrepro run`` of exactly this run's configuration (same config hash), which
    resumes it from its checkpoint: its cell and seed, and every option that is identity."""
    args = ["rkrepro", "run", run.table, "--row", run.row, "--variant", run.model]
    args += ["--share" if run.share else "--no-share", "--seed", run.seed]
    if run.protocol == mlflow_keys.PROTOCOL_SHORTENED and run.epochs:
        args += ["--epochs", str(run.epochs)]
    if run.train_subset:
        args += ["--train-subset", str(run.train_subset)]
    option = {v: k for k, v in precision_mod.CHOICES.items()}.get(run.precision)
    if option and option != precision_mod.DEFAULT:
        args += ["--precision", option]
    for name, value in run.readings:
        reading = readings_mod.READINGS.get(name)
        training = reading is not None and reading.kind == "training" and name != "precision"
        if training and reading.applies(cell.spec) and cell.reading.get(name) != value:
            args += ["--reading", f"{name}={value}"]
    params = progress.params if progress else {}
    if params.get("memory_efficient") == "True":
        args.append("--memory-efficient")
    if params.get("sync_bn") == "True":
        args.append("--sync-bn")
    if params.get("gpu_decode") == "True":
        args += ["--fast-path", "+gpu_decode"]
    if tables_dir:
        args += ["--tables-dir", tables_dir]
    if tracking_uri:
        args += ["--tracking-uri", tracking_uri]
    return shlex.join(args)


def duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``5 h 3 min``, ``2 d 4 h``."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"
