"""MLflow bookkeeping: where runs live, finding a configuration's run, writing one.

The names of experiments, tags and metrics come from :mod:`rkrepro.schema`, which the report
side reads with. mlflow is imported lazily (it takes seconds), so ``--help`` stays fast.
"""

from __future__ import annotations

import functools
import os
import random
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rkrepro import schema
from rkrepro.errors import TrackingError
from rkrepro.paths import resolve_tracking_uri, runs_dir, sqlite_path

__all__ = ["resolve_tracking_uri", "runs_dir", "sqlite_path"]

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

TAG_TORCH = schema.TAG_TORCH
TAG_CUDA = schema.TAG_CUDA
TAG_GIT_DIRTY = schema.TAG_GIT_DIRTY
TAG_SUPERSEDED = schema.TAG_SUPERSEDED
# Where and how a run trained (environment tags, refreshed on every resume).
TAG_WORLD_SIZE = "rkrepro.world_size"  # processes of a data-parallel run; "1" otherwise
TAG_BATCHNORM = "rkrepro.batchnorm"  # "per-gpu" or "sync", data-parallel runs only
TAG_SLURM_JOB = "rkrepro.slurm_job_id"  # "<array job>_<task>" under SLURM
TAG_SLURM_RESTARTS = "rkrepro.slurm_restart_count"  # requeues after preemption / time limit

# SQLite lets one writer in at a time; MLflow waits up to 20 s for the lock (busy_timeout), but
# a transaction that read before writing gets "database is locked" at once when another writer
# got in first. Such calls are retried with exponential backoff and jitter, about a minute in
# all, before the error is shown.
LOCK_RETRIES = 12
LOCK_BACKOFF_S = 0.05
LOCK_BACKOFF_MAX_S = 8.0
_LOCK_MARKERS = ("database is locked", "database is busy", "database table is locked")

RESUMABLE = ("RUNNING", "KILLED", "FAILED", "SCHEDULED")


def is_local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def store_exists(uri: str) -> bool:
    """False only when a local SQLite store has not been created yet (nothing ran)."""
    path = sqlite_path(uri)
    return path is None or path.exists()


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail in seconds, before any training, when the store cannot be used."""
    path = sqlite_path(uri)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise TrackingError(
                f"cannot create the tracking store folder {path.parent}: {error.strerror}"
            ) from None
        return
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout):  # noqa: S310 - user's own server
                return
        except urllib.error.HTTPError:
            return  # something answered; the API calls will tell if it is MLflow
        except (urllib.error.URLError, OSError, ValueError) as error:
            reason = getattr(error, "reason", error)
            raise TrackingError(f"MLflow tracking server {uri} is unreachable ({reason})") from None


def client(uri: str) -> MlflowClient:
    """An MLflow client whose calls survive SQLite lock contention (see :class:`RetryingClient`)."""
    from mlflow.tracking import MlflowClient

    inner = MlflowClient(tracking_uri=uri)
    if sqlite_path(uri) is None:
        return inner
    return RetryingClient(inner)  # type: ignore[return-value]


def is_lock_error(error: BaseException) -> bool:
    """True for SQLite's "database is locked"/"busy", however MLflow/SQLAlchemy wrapped it."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(getattr(current, "message", "") or current).lower()
        if any(marker in text for marker in _LOCK_MARKERS):
            return True
        current = current.__cause__ or current.__context__
    return False


def retry_locked(fn, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; on an SQLite lock error wait (exponential backoff, jitter) and call again.

    Safe to repeat: a locked SQLite transaction is rolled back whole, nothing of it was written.
    """
    for attempt in range(LOCK_RETRIES):
        try:
            return fn(*args, **kwargs)
        except Exception as error:
            if not is_lock_error(error) or attempt == LOCK_RETRIES - 1:
                raise
            delay = min(LOCK_BACKOFF_MAX_S, LOCK_BACKOFF_S * 2**attempt)
            time.sleep(delay * (0.5 + random.random()))
    raise AssertionError("unreachable")


class RetryingClient:
    """An ``MlflowClient`` whose every method goes through :func:`retry_locked`.

    Several processes write to one local SQLite store (``rkrepro run --gpus``): each write
    waits for the others instead of failing the run.
    """

    def __init__(self, inner: MlflowClient) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            return retry_locked(attr, *args, **kwargs)

        return call


def launcher_tags() -> dict[str, str]:
    """Tags naming the SLURM job a run trained in (empty outside SLURM)."""
    env = os.environ
    job = env.get("SLURM_ARRAY_JOB_ID") or env.get("SLURM_JOB_ID")
    if not job:
        return {}
    task = env.get("SLURM_ARRAY_TASK_ID")
    return {
        TAG_SLURM_JOB: f"{job}_{task}" if task else job,
        TAG_SLURM_RESTARTS: env.get("SLURM_RESTART_COUNT", "0"),
    }


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _artifact_location(uri: str, table_id: str) -> str | None:
    """Local stores keep artifacts under runs/artifacts/<table>; a server decides its own."""
    if not is_local_store(uri):
        return None
    return (runs_dir() / "artifacts" / table_id).as_uri()


def experiment_id(c: MlflowClient, uri: str, table_id: str, create: bool = True) -> str | None:
    from mlflow.exceptions import MlflowException

    name = schema.experiment_name(table_id)
    try:
        found = c.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                c.restore_experiment(found.experiment_id)
            return found.experiment_id
        if not create:
            return None
        try:
            return c.create_experiment(name, artifact_location=_artifact_location(uri, table_id))
        except MlflowException:  # created concurrently by another process
            found = c.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id
    except MlflowException as error:
        raise TrackingError(f"tracking store {uri}: {error.message.splitlines()[0]}") from None


@dataclass
class ExistingRun:
    run_id: str
    status: str  # MLflow's: RUNNING, FINISHED, FAILED, KILLED


def latest_run(c: MlflowClient, exp_id: str, config_hash: str) -> ExistingRun | None:
    """The newest run of this configuration (several exist after ``--force``)."""
    runs = c.search_runs(
        [exp_id],
        filter_string=f"tags.`{schema.TAG_CONFIG_HASH}` = '{config_hash}'",
        order_by=["attributes.start_time DESC"],
        max_results=10,
    )
    if not runs:
        return None
    return ExistingRun(runs[0].info.run_id, runs[0].info.status)


def git_commit() -> tuple[str, bool]:
    """(commit of the code that runs, whether it has uncommitted changes)."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown", False
    sha = commit.stdout.strip() if commit.returncode == 0 else "unknown"
    return sha, bool(dirty.stdout.strip()) if dirty.returncode == 0 else False


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"protocol.lr": "0.1", ...}`` MLflow params."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif isinstance(value, (list, tuple)):
            out[name] = "[" + ", ".join(str(v) for v in value) + "]"
        else:
            out[name] = "null" if value is None else str(value)
    return out


class RunLog:
    """One MLflow run being written: metrics per epoch, summary metrics, artifacts, status."""

    def __init__(self, c: MlflowClient, run_id: str) -> None:
        self.client = c
        self.run_id = run_id
        self._logged_epochs: set[int] | None = None

    @classmethod
    def create(
        cls,
        c: MlflowClient,
        exp_id: str,
        run_name: str,
        tags: dict[str, str],
        params: dict[str, str],
    ) -> RunLog:
        from mlflow.entities import Param

        run = c.create_run(exp_id, tags=tags, run_name=run_name)
        log = cls(c, run.info.run_id)
        items = [Param(k, v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            c.log_batch(log.run_id, params=items[i : i + 100])
        log._logged_epochs = set()
        return log

    def reopen(self, tags: dict[str, str]) -> None:
        """Mark a KILLED/FAILED run RUNNING again; refresh the environment tags."""
        from mlflow.entities import RunTag

        self.client.update_run(self.run_id, status="RUNNING")
        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        if schema.TAG_FAILURE in self.client.get_run(self.run_id).data.tags:
            self.client.delete_tag(self.run_id, schema.TAG_FAILURE)

    def logged_epochs(self) -> set[int]:
        if self._logged_epochs is None:
            history = self.client.get_metric_history(self.run_id, schema.M_TEST_ERROR)
            self._logged_epochs = {m.step for m in history}
        return self._logged_epochs

    def log_epoch(self, record: Any) -> None:
        """Per-epoch series, step = epoch; an epoch already logged (before a crash) is skipped."""
        from mlflow.entities import Metric

        if record.epoch in self.logged_epochs():
            return
        now = int(time.time() * 1000)
        values = {
            schema.M_TRAIN_LOSS: record.train_loss,
            schema.M_TRAIN_ERROR: record.train_error,
            schema.M_TEST_ERROR: record.test_error,
            schema.M_LR: record.lr,
            schema.M_EPOCH_SECONDS: record.epoch_seconds,
            schema.M_IMAGES_PER_S: record.images_per_s,
            schema.M_PEAK_MEMORY: record.peak_memory_mb,
        }
        if record.test_top5_error is not None:
            values[schema.M_TEST_TOP5] = record.test_top5_error
        metrics = [Metric(k, float(v), now, record.epoch) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)
        self.logged_epochs().add(record.epoch)

    def log_metrics(self, values: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_text(self, text: str, name: str) -> None:
        self.client.log_text(self.run_id, text, name)

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def finish(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)


def wrap_errors(uri: str):
    """Context manager turning store failures into :class:`TrackingError` (one line)."""
    import contextlib

    @contextlib.contextmanager
    def _wrapped():
        from mlflow.exceptions import MlflowException

        try:
            yield
        except MlflowException as error:
            first = (error.message or str(error)).strip().splitlines()[0]
            raise TrackingError(f"tracking store {uri}: {first}") from None

    return _wrapped()
