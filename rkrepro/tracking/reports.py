"""The report's plots run: one MLflow run per report target (``report table4 --plots``, ``report
--plots`` for all tables), written through the same client (lock retries, HTTP bounds), artifact
rule and one-line errors as training runs; in a local artifact store its files are written never
through a link (:mod:`rkrepro.tracking.artifacts`). A new report of the same target replaces
the run of the one before (which is deleted, with its files in a local store) instead of piling
up."""

from __future__ import annotations

import contextlib
import shutil
import sys
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path

from rkrepro.errors import TrackingError
from rkrepro.paths import resolve_tracking_uri
from rkrepro.tracking import artifacts, store
from rkrepro.tracking import keys as mlflow_keys
from rkrepro.tracking.runs import find_experiment


def log_report(
    tracking_uri: str | None,
    name: str,
    params: Mapping[str, str],
    plots: Sequence[Path],
    report_json: str,
) -> str:
    """Log the PNGs (under ``plots/``) and the JSON report as artifacts of a new run named
    ``name`` in :data:`~rkrepro.tracking.keys.REPORTS_EXPERIMENT`, then delete the earlier runs
    of the same name; returns the new run's id."""
    uri = resolve_tracking_uri(tracking_uri)
    client = store.connect(uri, write=True)
    kind = {mlflow_keys.TAG_EXPERIMENT_KIND: mlflow_keys.EXPERIMENT_KIND_TRAINING}
    try:
        # mlflow prints "View run ... at" on stdout for servers; stdout may carry the report.
        with contextlib.redirect_stdout(sys.stderr), store.wrap_errors(uri):
            experiment_id = find_experiment(
                client, uri, mlflow_keys.REPORTS_EXPERIMENT, mlflow_keys.REPORTS_ARTIFACTS, kind
            )
            quoted = name.replace("\\", "\\\\").replace("'", "\\'")
            earlier = client.search_runs(
                [experiment_id], filter_string=f"tags.`{mlflow_keys.TAG_REPORT}` = '{quoted}'"
            )
            run = client.create_run(
                experiment_id, run_name=name, tags={mlflow_keys.TAG_REPORT: name}
            )
            run_id = run.info.run_id
            for key, value in params.items():
                client.log_param(run_id, key, value)
            folder = artifacts.local_artifact_dir(run.info.artifact_uri)
            if folder is None:  # a server's store
                for path in plots:
                    client.log_artifact(run_id, str(path), artifact_path="plots")
                client.log_text(run_id, report_json, "report.json")
            else:  # never through a link planted in runs/artifacts
                for path in plots:
                    artifacts.write_artifact(folder, f"plots/{path.name}", path.read_bytes())
                artifacts.write_artifact(folder, "report.json", report_json.encode("utf-8"))
            client.set_terminated(run_id, "FINISHED")
            location = client.get_experiment(experiment_id).artifact_location
            for old in earlier:  # only once the new one is complete
                client.delete_run(old.info.run_id)
                _remove_local_artifacts(old.info.artifact_uri, location)
            return run_id
    except OSError as error:
        shown, reason = store.shown_uri(uri), store.hide_passwords(str(error), uri)
        raise TrackingError(f"cannot log the plots to {shown}: {reason}") from None


def _local_path(uri: str) -> Path | None:
    if not uri.startswith("file://"):
        return None
    return Path(urllib.parse.unquote(urllib.parse.urlsplit(uri).path))


def _remove_local_artifacts(artifact_uri: str, experiment_location: str) -> None:
    """The files of a deleted report run in a local store (``runs/artifacts/reports/RUN``); a
    server keeps its own (``mlflow gc``). Only inside the experiment's folder, never a link."""
    folder, root = _local_path(artifact_uri), _local_path(experiment_location)
    if folder is None or root is None:
        return
    if folder.name == "artifacts":
        folder = folder.parent
    if folder.is_symlink() or folder == root or not folder.is_relative_to(root):
        return
    shutil.rmtree(folder, ignore_errors=True)
