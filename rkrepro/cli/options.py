"""Options shared by several commands, defined once so they read and behave the same."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def _every_table(value: str | None) -> str | None:
    """``all`` means every table, as no TABLE does (and as ``rkrepro run all`` says it)."""
    return None if value is not None and value.strip().lower() == "all" else value


TableArg = Annotated[
    Optional[str],
    typer.Argument(
        help="Table id (table1 or 1), or all; default: every table.", callback=_every_table
    ),
]
RowOpt = Annotated[
    Optional[str], typer.Option("--row", "-r", help="Row id, e.g. densenet-bc-k12 (needs TABLE).")
]
TablesDir = Annotated[
    Optional[Path],
    typer.Option(
        "--tables-dir",
        envvar="RKREPRO_TABLES_DIR",
        help="Folder of table YAML files (default: the shipped tables/).",
        show_default=False,
    ),
]
TrackingUri = Annotated[
    Optional[str],
    typer.Option(
        "--tracking-uri",
        envvar="MLFLOW_TRACKING_URI",
        help="MLflow tracking URI (default: the SQLite store runs/mlflow.db, or under "
        "$RKREPRO_RUNS_DIR).",
        show_default=False,
    ),
]
DataDir = Annotated[
    Optional[Path],
    typer.Option(
        "--data-dir",
        envvar="RKREPRO_DATA_DIR",
        help="Data sets folder (default: data/).",
        show_default=False,
    ),
]
Precision = Annotated[
    str,
    typer.Option(
        "--precision",
        help="Arithmetic: fp32 (the paper's; TF32 off), tf32, bf16 (autocast) or fp16 "
        "(autocast + loss scaling). fp32 on a recent GPU trains several times slower than bf16 "
        "or tf32, which give other numbers and so are other runs.",
    ),
]
ShortenedOpt = Annotated[
    bool,
    typer.Option(
        "--include-shortened",
        help="Also show shortened-protocol runs, marked \\[shortened] and never judged.",
    ),
]
