"""One training run as MLflow records it: its configuration and model when it starts, a row of
metrics per epoch, and how it ended (finished with its summary, stopped, or failed and why).

The key names are :mod:`rkrepro.tracking.keys`; every store failure is one line
(:meth:`rkrepro.tracking.runs.Tracker.errors`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from rkrepro.tracking import keys as mlflow_keys
from rkrepro.tracking.runs import RunLog, Tracker


class TrainingRun:
    """The MLflow run a plan trains into (on rank 0; other processes log nothing)."""

    def __init__(self, tracker: Tracker, log: RunLog) -> None:
        self.tracker, self.log = tracker, log

    @property
    def run_id(self) -> str:
        return self.log.run_id

    def start(
        self, config: dict[str, Any], model_text: str, param_counts: tuple[int, int] | None
    ) -> None:
        """The run's configuration and model summary; ``param_counts`` (paper-rule, total) only
        for a new run, so that each is logged once."""
        with self.tracker.errors():
            if param_counts is not None:
                paper, total = param_counts
                self.log.log_metrics(
                    {mlflow_keys.M_PARAMS_PAPER: paper, mlflow_keys.M_PARAMS_TOTAL: total}
                )
            self.log.log_text(yaml.safe_dump(config, sort_keys=False), "config.yaml")
            self.log.log_text(json.dumps(config, indent=2), "config.json")
            self.log.log_text(model_text, "model_summary.txt")

    def epochs(self, records: Sequence[Any]) -> None:
        """Per-epoch metrics; epochs already logged (before a crash) are skipped."""
        with self.tracker.errors():
            for record in records:
                self.log.log_epoch(record)

    def finish(self, history: Sequence[Any], weights: Path | None = None) -> dict[str, float]:
        """A finished run: its summary metrics (final and best test error, the paper's final
        convention first), its history as CSV, where its final weights are (a tag), status
        FINISHED. Returns the summary."""
        final = history[-1]
        summary = {
            mlflow_keys.M_FINAL_TEST_ERROR: final.test_error,
            mlflow_keys.M_BEST_TEST_ERROR: min(r.test_error for r in history),
        }
        if final.test_top5_error is not None:
            summary[mlflow_keys.M_FINAL_TEST_TOP5] = final.test_top5_error
        with self.tracker.errors():
            if weights is not None:
                self.log.set_tags({mlflow_keys.TAG_FINAL_WEIGHTS: str(Path(weights).absolute())})
            self.log.complete(summary, final.epoch, history_csv(history))
        return summary

    def end(self, outcome: str, reason: str, history: Sequence[Any]) -> str | None:
        """A stopped (KILLED) or FAILED run, with its history so far and why. Best effort: it
        must not hide the error that ended the run; returns a warning when it could not."""
        try:
            self.log.stop(outcome, reason, history_csv(history) if history else None)
        except Exception as error:  # noqa: BLE001
            return f"warning: could not mark the run {outcome}: {error}"
        return None


def history_csv(history: Sequence[Any]) -> str:
    """Per-epoch records (dataclasses) as CSV text: the run's metrics artifact."""
    if not history:
        return ""
    first = history[0]
    assert is_dataclass(first)
    names = [f.name for f in fields(first)]
    lines = [",".join(names)]
    for record in history:
        values = asdict(record)
        lines.append(",".join("" if values[n] is None else repr(values[n]) for n in names))
    return "\n".join(lines) + "\n"
