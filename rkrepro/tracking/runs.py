"""The writer of training runs: finding a configuration's run, and the whole life of a run
written to a store (open new, resume, supersede, tag, log, close) behind :class:`Tracker`.

Names of experiments, tags and metrics come from :mod:`rkrepro.tracking.keys`; reaching the
store (checks, lock retries, one-line errors) from :mod:`rkrepro.tracking.store`. mlflow and
torch are imported lazily (they take seconds), so ``--help`` stays fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rkrepro import processes
from rkrepro.errors import TrackingError
from rkrepro.paths import resolve_tracking_uri
from rkrepro.textsafe import one_line
from rkrepro.tracking import artifacts
from rkrepro.tracking import keys as mlflow_keys
from rkrepro.tracking.store import (
    artifact_location,
    bound_http_calls,
    check_reachable,
    client,
    hide_passwords,
    shown_uri,
    store_exists,
    wrap_errors,
)

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


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


def experiment_id(c: MlflowClient, uri: str, table_id: str, create: bool = True) -> str | None:
    """A table's experiment, tagged as model training (the UI opens it on its runs) and with the
    runs table's columns (:func:`~rkrepro.tracking.keys.ui_view_state`)."""
    kind = {
        mlflow_keys.TAG_EXPERIMENT_KIND: mlflow_keys.EXPERIMENT_KIND_TRAINING,
        mlflow_keys.TAG_UI_VIEW: mlflow_keys.ui_view_state(),
    }
    name = mlflow_keys.experiment_name(table_id)
    return find_experiment(c, uri, name, table_id, kind, create=create)


def find_experiment(
    c: MlflowClient, uri: str, name: str, folder: str, tags: dict[str, str], create: bool = True
) -> str | None:
    """The id of experiment ``name``, restored if deleted; with ``create``, made (artifacts in
    :func:`~rkrepro.tracking.store.artifact_location` ``folder``) if missing, and given the
    ``tags`` it lacks."""
    from mlflow.exceptions import MlflowException

    try:
        found = c.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                c.restore_experiment(found.experiment_id)
            for key, value in tags.items():
                have = (found.tags or {}).get(key)
                if create and (have is None or (key == mlflow_keys.TAG_UI_VIEW and have != value)):
                    # Stores made before the tag: the UI opens them on the runs too from now on
                    # (and with today's columns: that view is rkrepro's own).
                    c.set_experiment_tag(found.experiment_id, key, value)
            return found.experiment_id
        if not create:
            return None
        try:
            return c.create_experiment(
                name, artifact_location=artifact_location(uri, folder), tags=tags
            )
        except MlflowException:  # created concurrently by another process
            found = c.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id
    except MlflowException as error:
        first = hide_passwords(error.message.splitlines()[0], uri)
        raise TrackingError(f"tracking store {shown_uri(uri)}: {first}") from None


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
    return ExistingRun(runs[0].info.run_id, one_line(runs[0].info.status))


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
    # Parallel jobs of one table log the same dataset at once: MLflow looks it up, then inserts
    # it, so the slower job's insert breaks the datasets' uniqueness (its transaction rolled
    # back). Asked again, MLflow finds the row the other job wrote.
    for attempt in range(3):
        try:
            c.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[context])])
            return
        except Exception as error:
            text = str(error).lower()
            raced = "datasets" in text and ("unique" in text or "duplicate" in text)
            if not raced or attempt == 2:
                raise


class RunLog:
    """One MLflow run being written: metrics per epoch, summary metrics, artifacts, status."""

    def __init__(self, c: MlflowClient, run_id: str, artifact_uri: str | None = None) -> None:
        self.client = c
        self.run_id = run_id
        self._logged_epochs: set[int] | None = None
        self._artifact_uri = artifact_uri

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
        log = cls(c, run.info.run_id, run.info.artifact_uri)
        items = [Param(k, v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            c.log_batch(log.run_id, params=items[i : i + 100])
        log._logged_epochs = set()
        return log

    def reopen(self, tags: dict[str, str], name: str | None = None) -> None:
        """Mark a KILLED/FAILED run RUNNING again; refresh the environment tags and, for runs
        named before today's naming, the name."""
        from mlflow.entities import RunTag

        self.client.update_run(self.run_id, status="RUNNING", name=name)
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
        """The artifact ``name``; in a local artifact store written by rkrepro, never through a
        planted link (:mod:`rkrepro.tracking.artifacts`)."""
        if self._artifact_uri is None:
            self._artifact_uri = self.client.get_run(self.run_id).info.artifact_uri
        folder = artifacts.local_artifact_dir(self._artifact_uri)
        if folder is None:
            self.client.log_text(self.run_id, text, name)
        else:
            artifacts.write_artifact(folder, name, text.encode("utf-8"))

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
        mlflow_keys.TAG_PROCESS: processes.this_process(),
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

    def resume(self, run: ExistingRun, env_tags: dict[str, str], name: str | None = None) -> RunLog:
        """Write into ``run`` again: RUNNING, with this process's environment tags (and
        ``name``)."""
        log = RunLog(self.client, run.run_id)
        with self.errors():
            log.reopen(env_tags, name)
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
