"""``rkrepro report``: the paper's tables side by side with the reproduction.

runs + targets -> :mod:`.model` (seed statistics, verdicts, bold claims) -> :mod:`.render`
(CSV, JSON, Markdown, LaTeX, HTML, rich) and :mod:`.plots` (PNG, logged to MLflow).
"""

from rkrepro.report.build import (
    BETTER,
    CACHE_DIR_ENV,
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
from rkrepro.report.render import (
    FORMATS,
    RECORD_FIELDS,
    layout,
    records,
    to_csv,
    to_html,
    to_json,
    to_latex,
    to_markdown,
    to_rich,
)

__all__ = [
    "BETTER",
    "CACHE_DIR_ENV",
    "DEFAULT_TOLERANCE_PP",
    "FAILED_VERDICT",
    "FORMATS",
    "MISSING",
    "RECORD_FIELDS",
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
    "layout",
    "load_report",
    "log_plots",
    "param_counts",
    "records",
    "to_csv",
    "to_html",
    "to_json",
    "to_latex",
    "to_markdown",
    "to_rich",
    "write_plots",
]
