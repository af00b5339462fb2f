"""The report's plots run: one MLflow run per ``rkrepro report --plots``, written through the
same client (lock retries, HTTP bounds), artifact rule and one-line errors as training runs."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from rkrepro.errors import TrackingError
from rkrepro.paths import resolve_tracking_uri
from rkrepro.tracking import keys as mlflow_keys
from rkrepro.tracking import store
from rkrepro.tracking.runs import find_experiment


def log_report(
    tracking_uri: str | None,
    name: str,
    params: Mapping[str, str],
    plots: Sequence[Path],
    report_json: str,
) -> str:
    """Log the PNGs (under ``plots/``) and the JSON report as artifacts of a new run named
    ``name`` in :data:`~rkrepro.tracking.keys.REPORTS_EXPERIMENT`; returns the run id."""
    uri = resolve_tracking_uri(tracking_uri)
    client = store.connect(uri, write=True)
    try:
        # mlflow prints "View run ... at" on stdout for servers; stdout may carry the report.
        with contextlib.redirect_stdout(sys.stderr), store.wrap_errors(uri):
            experiment_id = find_experiment(
                client, uri, mlflow_keys.REPORTS_EXPERIMENT, mlflow_keys.REPORTS_ARTIFACTS, {}
            )
            run = client.create_run(
                experiment_id, run_name=name, tags={mlflow_keys.TAG_REPORT: name}
            )
            run_id = run.info.run_id
            for key, value in params.items():
                client.log_param(run_id, key, value)
            for path in plots:
                client.log_artifact(run_id, str(path), artifact_path="plots")
            client.log_text(run_id, report_json, "report.json")
            client.set_terminated(run_id, "FINISHED")
            return run_id
    except OSError as error:
        shown = store.shown_uri(uri)
        raise TrackingError(f"cannot log the plots to {shown}: {error}") from None
