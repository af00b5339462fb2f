"""``rkrepro report``: the paper's tables side by side with the reproduction.

runs + the paper's tables -> :mod:`.build` (seed statistics, verdicts, bold claims) ->
:mod:`.render` (one module per format: rich, Markdown, CSV, JSON, LaTeX, HTML) and
:mod:`.plots` (PNG, logged to MLflow).
"""

from rkrepro.report.build import (
    BETTER,
    DEFAULT_TOLERANCE_PP,
    FAILED_VERDICT,
    MISSING,
    RUNNING,
    SHORTENED,
    UNREPORTED,
    VERDICTS,
    WITHIN,
    WORSE,
    CellResult,
    Claim,
    Report,
    TableReport,
    build_report,
    load_report,
    param_counts,
)
from rkrepro.report.plots import log_plots, write_plots

__all__ = [
    "BETTER",
    "DEFAULT_TOLERANCE_PP",
    "FAILED_VERDICT",
    "MISSING",
    "RUNNING",
    "SHORTENED",
    "UNREPORTED",
    "VERDICTS",
    "WITHIN",
    "WORSE",
    "CellResult",
    "Claim",
    "Report",
    "TableReport",
    "build_report",
    "load_report",
    "log_plots",
    "param_counts",
    "write_plots",
]
