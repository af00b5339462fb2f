"""MLflow bookkeeping: where runs live, finding a configuration's run, writing one.

The names of experiments, tags and metrics come from :mod:`rkrepro.schema`, which the report
side reads with. mlflow is imported lazily (it takes seconds), so ``--help`` stays fast.
"""

from __future__ import annotations

import subprocess
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
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


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
