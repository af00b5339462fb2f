"""Everything MLflow: reaching a store, finding a configuration's run, and the whole life of a
run written to it (open new, resume, supersede, tag, log, close) behind :class:`Tracker`.

The names of experiments, tags and metrics come from :mod:`rkrepro.mlflow_keys`, which the report
side reads with. mlflow is imported lazily (it takes seconds), so ``--help`` stays fast.
"""

from __future__ import annotations

import functools
import hashlib
import json
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

from rkrepro import mlflow_keys
from rkrepro.errors import TrackingError
from rkrepro.paths import resolve_tracking_uri, runs_dir, sqlite_path, unwritable

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

# SQLite lets one writer in at a time; MLflow waits up to 20 s for the lock (busy_timeout), but
# a transaction that read before writing gets "database is locked" at once when another writer
# got in first. Such calls are retried with exponential backoff and jitter, about a minute in
# all, before the error is shown.
LOCK_RETRIES = 12
LOCK_BACKOFF_S = 0.05
LOCK_BACKOFF_MAX_S = 8.0
_LOCK_MARKERS = ("database is locked", "database is busy", "database table is locked")

# A tracking server that stops answering must not hold a run for minutes in MLflow's default
# HTTP retry backoff (7 retries, factor 2: about 4 minutes per call). These bound every call to
# about a minute; a variable the user set wins.
HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
REACH_TIMEOUT_S = 5.0  # the first request to a server: a stuck one fails in seconds
_UNREACHABLE = ("max retries exceeded", "connection refused", "read timed out", "timed out")

RESUMABLE = ("RUNNING", "KILLED", "FAILED", "SCHEDULED")


def is_local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def store_exists(uri: str) -> bool:
    """False only when a local SQLite store has not been created yet (nothing ran)."""
    path = sqlite_path(uri)
    return path is None or path.exists()


def bound_http_calls(uri: str) -> None:
    """For a tracking server: cap MLflow's HTTP timeout and retries (:data:`HTTP_LIMITS`)
    unless the user set them; no effect on other stores."""
    if uri.startswith(("http://", "https://")):
        for name, value in HTTP_LIMITS.items():
            os.environ.setdefault(name, value)


def check_reachable(uri: str, timeout: float = REACH_TIMEOUT_S, write: bool = True) -> None:
    """Fail in seconds, before any training (or reading), when the store cannot be used: a
    local store that is not an SQLite database or (``write``) sits in a folder that takes no
    new files, a database URI whose driver is not installed, a server that does not answer."""
    path = sqlite_path(uri)
    if path is not None:
        check_sqlite_store(path, write)
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
            if isinstance(reason, TimeoutError):
                raise TrackingError(
                    f"MLflow tracking server {uri} did not answer within {timeout:g} s (it "
                    f"accepts connections but sends nothing back); is it overloaded or stuck?"
                ) from None
            raise TrackingError(f"MLflow tracking server {uri} is unreachable ({reason})") from None
        return
    if uri.split("://", 1)[0].lower().split("+", 1)[0] in _DATABASES:
        check_database(uri, timeout)


def check_sqlite_store(path: Path, write: bool) -> None:
    """An existing store must be an SQLite database (read-only check: a corrupt file is left
    exactly as it is); a store to write needs a folder that takes new files, since SQLite
    keeps its journal next to the database (MLflow would retry opening it for ~100 s)."""
    if write:
        why = unwritable(path.parent)
        if why is not None:
            raise TrackingError(
                f"cannot write the tracking store {path}: its folder {path.parent} does not "
                f"take new files ({why}); use a writable RKREPRO_RUNS_DIR or --tracking-uri"
            )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise TrackingError(
                f"cannot create the tracking store folder {path.parent}: {error.strerror}"
            ) from None
        if path.exists() and not os.access(path, os.W_OK):
            raise TrackingError(
                f"cannot write the tracking store {path}: the file is read-only; use a writable "
                f"RKREPRO_RUNS_DIR or --tracking-uri"
            )
    if not path.exists():
        return
    import sqlite3
    import urllib.parse

    location = urllib.parse.quote(path.resolve().as_posix())
    try:
        con = sqlite3.connect(f"file:{location}?mode=ro", uri=True, timeout=5)
        try:
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            con.close()
    except sqlite3.Error as error:
        if is_lock_error(error):
            return  # a busy store is a store; MLflow's calls wait for the lock
        raise TrackingError(
            f"cannot read MLflow store {path}: {error} (left untouched: restore it from a "
            f"backup, or move it away to start a new store)"
        ) from None


# Database backends MLflow opens through SQLAlchemy (besides SQLite, checked above).
_DATABASES = ("postgresql", "mysql", "mssql")


def check_database(uri: str, timeout: float = REACH_TIMEOUT_S) -> None:
    """A database URI: its SQLAlchemy driver must be importable (MLflow's import of a missing
    one is a traceback; ``postgresql://`` means psycopg 3 to SQLAlchemy 2.1, which the
    ``server`` extra's psycopg2 is not), and one connection bounded by ``timeout`` must open
    (MLflow retries a database that refuses or is silent for ~2 minutes, then a traceback)."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine.url import make_url
    from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
    from sqlalchemy.pool import NullPool

    try:
        url = make_url(uri)
        shown = url.render_as_string(hide_password=True)
        url.get_dialect().import_dbapi()
    except ImportError as error:
        backend = url.get_backend_name()
        hint = (
            "; spell postgresql+psycopg2://... (the driver that pip install 'rkrepro[server]' "
            "installs)"
            if backend == "postgresql"
            else f"; install the driver or name an installed one ({backend}+DRIVER)"
        )
        raise TrackingError(
            f"tracking store {shown}: its database driver {url.get_driver_name()!r} is not "
            f"installed (no Python module {error.name or str(error)!r}){hint}"
        ) from None
    except ArgumentError as error:  # NoSuchModuleError: an unknown +driver; a malformed URI
        raise TrackingError(f"tracking store {uri.split('://', 1)[0]}://...: {error}") from None
    timed = url.get_backend_name() in ("postgresql", "mysql")
    args = {"connect_timeout": max(1, round(timeout))} if timed else {}
    try:
        engine = create_engine(url, poolclass=NullPool, connect_args=args)
        try:
            engine.connect().close()
        finally:
            engine.dispose()
    except DBAPIError as error:
        first = str(error.orig or error).strip().splitlines() or [type(error).__name__]
        raise TrackingError(f"tracking store {shown}: cannot connect ({first[0][:300]})") from None
    except SQLAlchemyError as error:
        raise TrackingError(f"tracking store {shown}: {str(error).splitlines()[0][:300]}") from None


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
        mlflow_keys.TAG_SLURM_JOB: f"{job}_{task}" if task else job,
        mlflow_keys.TAG_SLURM_RESTARTS: env.get("SLURM_RESTART_COUNT", "0"),
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

    name = mlflow_keys.experiment_name(table_id)
    try:
        found = c.get_experiment_by_name(name)
        kind = {mlflow_keys.TAG_EXPERIMENT_KIND: mlflow_keys.EXPERIMENT_KIND_TRAINING}
        if found is not None:
            if found.lifecycle_stage == "deleted":
                c.restore_experiment(found.experiment_id)
            if create and mlflow_keys.TAG_EXPERIMENT_KIND not in (found.tags or {}):
                # Stores made before the tag: the UI opens them on the runs too from now on.
                c.set_experiment_tag(found.experiment_id, *next(iter(kind.items())))
            return found.experiment_id
        if not create:
            return None
        try:
            return c.create_experiment(
                name, artifact_location=_artifact_location(uri, table_id), tags=kind
            )
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
        filter_string=f"tags.`{mlflow_keys.TAG_CONFIG_HASH}` = '{config_hash}'",
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


@dataclass(frozen=True)
class DatasetInfo:
    """What a run trained on, for the MLflow UI's dataset column (``log_inputs``)."""

    name: str  # "cifar10", "cifar10[512]" for a --train-subset run
    source: str  # where the files are (a path) and where they come from (a URL)
    profile: dict[str, Any]  # e.g. {"train_images": 50000}

    @property
    def digest(self) -> str:
        text = json.dumps([self.name, self.source, self.profile], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def log_dataset(c: MlflowClient, run_id: str, info: DatasetInfo) -> None:
    from mlflow.entities import Dataset, DatasetInput, InputTag

    dataset = Dataset(
        name=info.name,
        digest=info.digest,
        source_type="local",
        source=info.source,
        profile=json.dumps(info.profile, sort_keys=True),
    )
    context = InputTag(
        key=mlflow_keys.DATASET_CONTEXT_KEY, value=mlflow_keys.DATASET_CONTEXT_TRAINING
    )
    c.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[context])])


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
        if mlflow_keys.TAG_FAILURE in self.client.get_run(self.run_id).data.tags:
            self.client.delete_tag(self.run_id, mlflow_keys.TAG_FAILURE)

    def logged_epochs(self) -> set[int]:
        if self._logged_epochs is None:
            history = self.client.get_metric_history(self.run_id, mlflow_keys.M_TEST_ERROR)
            self._logged_epochs = {m.step for m in history}
        return self._logged_epochs

    def log_epoch(self, record: Any) -> None:
        """Per-epoch series, step = epoch; an epoch already logged (before a crash) is skipped."""
        from mlflow.entities import Metric

        if record.epoch in self.logged_epochs():
            return
        now = int(time.time() * 1000)
        values = {
            mlflow_keys.M_TRAIN_LOSS: record.train_loss,
            mlflow_keys.M_TRAIN_ERROR: record.train_error,
            mlflow_keys.M_TEST_ERROR: record.test_error,
            mlflow_keys.M_LR: record.lr,
            mlflow_keys.M_EPOCH_SECONDS: record.epoch_seconds,
            mlflow_keys.M_IMAGES_PER_S: record.images_per_s,
            mlflow_keys.M_PEAK_MEMORY: record.peak_memory_mb,
        }
        if record.test_top5_error is not None:
            values[mlflow_keys.M_TEST_TOP5] = record.test_top5_error
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

    def complete(self, summary: dict[str, float], step: int, metrics_csv: str) -> None:
        """A finished run: its summary metrics, its history as CSV, status FINISHED."""
        self.log_metrics(summary, step=step)
        self.log_text(metrics_csv, "metrics.csv")
        self.finish("FINISHED")

    def stop(self, status: str, reason: str, metrics_csv: str | None) -> None:
        """A stopped (KILLED) or FAILED run: its history so far and, if it failed, why."""
        if metrics_csv is not None:
            self.log_text(metrics_csv, "metrics.csv")
        if status == "FAILED":
            self.set_tags({mlflow_keys.TAG_FAILURE: reason[:5000]})
        self.finish(status)


def wrap_errors(uri: str):
    """Context manager turning store failures into :class:`TrackingError` (one line)."""
    import contextlib

    @contextlib.contextmanager
    def _wrapped():
        from mlflow.exceptions import MlflowException

        try:
            yield
        except MlflowException as error:
            text = (error.message or str(error)).strip()
            if uri.startswith(("http://", "https://")) and any(
                marker in text.lower() for marker in _UNREACHABLE
            ):
                raise TrackingError(
                    f"MLflow tracking server {uri} is unreachable (it stopped answering); this "
                    f"command stops here, "
                    f"every checkpoint is kept: rerun the same command once the server is back"
                ) from None
            first = text.splitlines()[0] if text else type(error).__name__
            raise TrackingError(f"tracking store {uri}: {first}") from None
        except Exception as error:
            database = _database_error(error)
            if database is None:
                raise
            raise TrackingError(f"tracking store {uri}: {database}") from None

    return _wrapped()


def _database_error(error: BaseException) -> str | None:
    """The first line of SQLite's or the database's own message when ``error`` is one that
    MLflow let through unwrapped (SQLAlchemy's, e.g. "database disk image is malformed" from a
    page torn deeper in the file); None for anything else."""
    import sqlite3

    from sqlalchemy.exc import DBAPIError, SQLAlchemyError  # mlflow's own dependency

    if isinstance(error, DBAPIError) and error.orig is not None:
        error = error.orig
    elif not isinstance(error, (SQLAlchemyError, sqlite3.Error)):
        return None
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:500]


def environment_tags(device: str, world: int, batchnorm: str | None) -> dict[str, str]:
    """Where and how a run trains now (refreshed on every resume): device, code, versions."""
    import torch

    commit, dirty = git_commit()
    tags = {
        mlflow_keys.TAG_DEVICE: device,
        mlflow_keys.TAG_GIT_COMMIT: commit,
        mlflow_keys.TAG_GIT_DIRTY: str(dirty).lower(),
        mlflow_keys.TAG_TORCH: torch.__version__,
        mlflow_keys.TAG_CUDA: str(torch.version.cuda or "none"),
        mlflow_keys.TAG_WORLD_SIZE: str(world),
    }
    if batchnorm is not None:
        tags[mlflow_keys.TAG_BATCHNORM] = batchnorm
    tags.update(launcher_tags())
    return tags


class Tracker:
    """The one writer of a store: connects once, finds a configuration's latest run, and opens
    (new or resumed), supersedes and closes runs. Every store failure is one line
    (:class:`~rkrepro.errors.TrackingError`)."""

    def __init__(self, uri: str | None) -> None:
        self.uri = resolve_tracking_uri(uri)
        bound_http_calls(self.uri)
        self.client: Any = None
        self._experiments: dict[str, str | None] = {}

    def errors(self):
        """Context manager: a store failure inside becomes one :class:`TrackingError` line."""
        return wrap_errors(self.uri)

    def connect(self, create: bool = True) -> bool:
        """Check the store before anything else; False when a local store does not exist yet."""
        check_reachable(self.uri, write=create)
        if not create and not store_exists(self.uri):
            return False
        with self.errors():
            self.client = client(self.uri)
            self.client.search_experiments(max_results=1)
        return True

    def experiment(self, table_id: str, create: bool = True) -> str | None:
        if table_id not in self._experiments or (create and self._experiments[table_id] is None):
            self._experiments[table_id] = experiment_id(
                self.client, self.uri, table_id, create=create
            )
        return self._experiments[table_id]

    def latest_run(self, table_id: str, config_hash: str) -> ExistingRun | None:
        """The newest run of this configuration; None before :meth:`connect` or if none."""
        if self.client is None:
            return None
        exp = self.experiment(table_id, create=False)
        if exp is None:
            return None
        with self.errors():
            return latest_run(self.client, exp, config_hash)

    def supersede(self, run: ExistingRun, reason: str) -> None:
        """Mark ``run`` replaced by a newer one (readers skip it); a RUNNING one is KILLED."""
        with self.errors():
            self.client.set_tag(run.run_id, mlflow_keys.TAG_SUPERSEDED, reason)
            if run.status == "RUNNING":
                self.client.set_terminated(run.run_id, "KILLED")

    def logged_epochs(self, run: ExistingRun) -> set[int]:
        """The epochs ``run`` already has metrics for."""
        with self.errors():
            return RunLog(self.client, run.run_id).logged_epochs()

    def resume(self, run: ExistingRun, env_tags: dict[str, str]) -> RunLog:
        """Write into ``run`` again: RUNNING, with this process's environment tags."""
        log = RunLog(self.client, run.run_id)
        with self.errors():
            log.reopen(env_tags)
        return log

    def create(
        self,
        table_id: str,
        run_name: str,
        tags: dict[str, str],
        params: dict[str, str],
        dataset: DatasetInfo | None = None,
    ) -> RunLog:
        exp = self.experiment(table_id)
        assert exp is not None
        with self.errors():
            log = RunLog.create(self.client, exp, run_name, tags, params)
            if dataset is not None:
                log_dataset(self.client, log.run_id, dataset)
            return log
