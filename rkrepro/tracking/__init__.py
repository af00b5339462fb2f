"""Every MLflow read and write of rkrepro, and nothing else imports mlflow.

- :mod:`.keys`: the names of experiments, tags and metrics (mlflow- and torch-free);
- :mod:`.store`: reaching a store (checks, the client that waits out SQLite's lock, the artifact
  rule, one-line errors with no password in them);
- :mod:`.runs`: the writer of training runs (:class:`~.runs.Tracker`, :class:`~.runs.RunLog`);
- :mod:`.reports`: the report's plots run;
- :mod:`.reader`: reading runs back (status, report, list), metric histories, experiments.

Importing the package imports none of them: the runner's names below load :mod:`.runs` on first
use, so ``rkrepro --help`` and ``rkrepro list`` stay free of mlflow and torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rkrepro.tracking.runs import (
        DatasetInfo,
        ExistingRun,
        RunLog,
        Tracker,
        environment_tags,
        flatten,
    )

# What the runner writes a training run with: ``from rkrepro import tracking; tracking.Tracker``.
__all__ = ["DatasetInfo", "ExistingRun", "RunLog", "Tracker", "environment_tags", "flatten"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from rkrepro.tracking import runs

        return getattr(runs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
