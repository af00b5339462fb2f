"""``rkrepro report``: the paper's tables with reproduced numbers next to the printed ones.

Pipeline: MLflow runs (:func:`rkrepro.status.fetch_runs`, ``mlflow.search_runs`` per table) ->
:func:`build_report` (seed statistics, verdicts, bold claims) -> one renderer per format, plus
plots. The model itself is imported lazily, only to count parameters that are not cached yet.

Tolerances (:data:`DEFAULT_TOLERANCE_PP`) are about two seed standard deviations of the
reproduced quantity: seed-to-seed spread of CIFAR-10 error for these networks is ~0.15 pp (He et
al. 2016 report ResNet-110 at 6.61 +/- 0.16 over 5 runs), CIFAR-100 error spreads about twice as
much (~0.3 pp), and ImageNet top-1 spreads ~0.1-0.2 pp but its pipeline (Torch augmentations,
batch 128 vs 256) cannot be matched exactly, so 0.5 pp. ImageNet verdicts use top-1; top-5 is
shown but not judged.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import html
import io
import json
import os
import statistics
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rkrepro import schema
from rkrepro.errors import TrackingError
from rkrepro.spec import ModelSpec
from rkrepro.status import (
    ACTIVE,
    FAILED,
    FINISHED,
    KILLED,
    Reader,
    RunRecord,
    cell_id_of,
    fetch_runs,
    seed_order,
)

if TYPE_CHECKING:
    from rkrepro.targets import Cell, Row, Table

DEFAULT_TOLERANCE_PP: dict[str, float] = {"cifar10": 0.3, "cifar100": 0.6, "imagenet": 0.5}
DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenet": "ImageNet"}
REPORTS_EXPERIMENT = schema.EXPERIMENT_PREFIX + "reports"
CACHE_DIR_ENV = "RKREPRO_CACHE_DIR"

WITHIN, BETTER, WORSE = "within", "better", "worse"
MISSING, RUNNING, FAILED_VERDICT = "missing", "running", "failed"
UNREPORTED = "unreported"  # reproduced, but the paper printed "-": nothing to compare with
SHORTENED = "shortened"  # shortened-protocol numbers are shown, never judged
VERDICTS = (WITHIN, BETTER, WORSE, MISSING, RUNNING, FAILED_VERDICT, UNREPORTED)

ParamCounter = Callable[[ModelSpec], tuple[int, int]]


# --------------------------------------------------------------------------------------------
# Data model.


@dataclass(frozen=True)
class Stat:
    """A metric over seeds: one value per seed (its latest finished run)."""

    values: tuple[float, ...]
    seeds: tuple[str, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        """Sample standard deviation; undefined for a single seed."""
        return statistics.stdev(self.values) if self.n > 1 else None


@dataclass(frozen=True)
class Reproduced:
    """The runs of one cell under one protocol, reduced to statistics."""

    protocol: str
    runs: tuple[RunRecord, ...]  # every run of the cell, rerun or not
    error: Stat | None
    top5: Stat | None
    counted: tuple[RunRecord, ...] = ()  # the latest finished run of each seed behind ``error``

    def count(self, *statuses: str) -> int:
        return sum(r.status in statuses for r in self.runs)


@dataclass(frozen=True)
class CellResult:
    """One cell of a table: printed numbers, counted parameters and reproduced statistics."""

    cell: Cell
    params_paper: int
    params_total: int
    tolerance: float
    paper: Reproduced
    shortened: Reproduced | None = None

    @property
    def params_m(self) -> float:
        return self.params_paper / 1e6

    @property
    def diff(self) -> float | None:
        return _diff(self.paper.error, self.cell.reported_error)

    @property
    def top5_diff(self) -> float | None:
        return _diff(self.paper.top5, self.cell.reported_top5)

    @property
    def verdict(self) -> str:
        return _verdict(self.paper, self.cell.reported_error, self.tolerance)


def _diff(stat: Stat | None, reported: float | None) -> float | None:
    if stat is None or reported is None:
        return None
    return stat.mean - float(reported)


def _verdict(reproduced: Reproduced, reported: float | None, tolerance: float) -> str:
    """Compare the seed mean with the printed error; without a mean, say why there is none."""
    if reproduced.error is None:
        if reproduced.count(*ACTIVE):
            return RUNNING
        if reproduced.count(FAILED, KILLED):
            return FAILED_VERDICT
        return MISSING
    if reported is None:
        return UNREPORTED
    diff = reproduced.error.mean - float(reported)
    # A hair of slack so that a difference printed as the tolerance counts as within it.
    if abs(diff) <= tolerance + 1e-9:
        return WITHIN
    return BETTER if diff < 0 else WORSE


@dataclass(frozen=True)
class Claim:
    """The caption's bold rule for one variant: fewer parameters and lower error than the
    row's original. ``None`` means undecided (a number is missing)."""

    result: CellResult
    paper_bold: bool
    on_paper: bool | None
    on_reproduced: bool | None


@dataclass(frozen=True)
class TableReport:
    table: Table
    tolerance: float
    results: tuple[CellResult, ...]
    claims: tuple[Claim, ...]

    def summary(self) -> dict[str, int]:
        counts = dict.fromkeys(VERDICTS, 0)
        for result in self.results:
            counts[result.verdict] += 1
        return counts


@dataclass(frozen=True)
class Report:
    tables: tuple[TableReport, ...]
    best: bool = False
    include_shortened: bool = False
    tolerance_override: float | None = None

    @property
    def metric(self) -> str:
        return schema.M_BEST_TEST_ERROR if self.best else schema.M_FINAL_TEST_ERROR

    @property
    def metric_label(self) -> str:
        if self.best:
            return "best-epoch test error (lowest over epochs; NOT the paper's convention)"
        return "final-epoch test error (the paper's convention)"

    def worse(self) -> list[CellResult]:
        """Paper-protocol cells outside tolerance on the bad side: what ``--check`` fails on."""
        return [r for t in self.tables for r in t.results if r.verdict == WORSE]


# --------------------------------------------------------------------------------------------
# Building.


def load_report(
    tracking_uri: str | None = None,
    table_id: str | None = None,
    tables_dir: Path | None = None,
    *,
    best: bool = False,
    tolerance: float | None = None,
    include_shortened: bool = False,
    counter: ParamCounter | None = None,
    reader: Reader = "auto",
) -> tuple[Report, list[RunRecord]]:
    """Read the tables and the store: one ``mlflow.search_runs`` per table for a server, a
    read-only sqlite3 query for a local store (``reader="auto"``; both give the same records)."""
    from rkrepro import targets

    tables = targets.load_tables(tables_dir)
    chosen = [targets.find_table(tables, table_id)] if table_id else list(tables.values())
    records = fetch_runs(tracking_uri, [t.id for t in chosen], reader=reader)
    report = build_report(
        chosen,
        records,
        best=best,
        tolerance=tolerance,
        include_shortened=include_shortened,
        counter=counter,
    )
    return report, records


def build_report(
    tables: Sequence[Table],
    records: Iterable[RunRecord],
    *,
    best: bool = False,
    tolerance: float | None = None,
    include_shortened: bool = False,
    counter: ParamCounter | None = None,
) -> Report:
    """Pure: tables + run records -> :class:`Report` (no I/O besides parameter counting)."""
    from rkrepro.targets import row_cells

    metric = schema.M_BEST_TEST_ERROR if best else schema.M_FINAL_TEST_ERROR
    by_cell: dict[tuple, list[RunRecord]] = {}
    for record in records:
        by_cell.setdefault((*record.cell_id, record.protocol), []).append(record)
    cells = [cell for table in tables for row in table.rows for cell in row_cells(table, row)]
    counts = param_counts([cell.spec for cell in cells], counter)
    reports = []
    for table in tables:
        tol = tolerance if tolerance is not None else DEFAULT_TOLERANCE_PP[table.dataset]
        results = []
        for row in table.rows:
            for cell in row_cells(table, row):
                runs = {
                    protocol: by_cell.get((*cell_id_of(cell), protocol), [])
                    for protocol in (schema.PROTOCOL_PAPER, schema.PROTOCOL_SHORTENED)
                }
                paper_count, total = counts[cell.spec]
                shortened = _reduce(
                    schema.PROTOCOL_SHORTENED, runs[schema.PROTOCOL_SHORTENED], metric
                )
                results.append(
                    CellResult(
                        cell=cell,
                        params_paper=paper_count,
                        params_total=total,
                        tolerance=tol,
                        paper=_reduce(schema.PROTOCOL_PAPER, runs[schema.PROTOCOL_PAPER], metric),
                        shortened=shortened if include_shortened else None,
                    )
                )
        reports.append(TableReport(table, tol, tuple(results), tuple(_claims(results))))
    return Report(tuple(reports), best, include_shortened, tolerance)


def _reduce(protocol: str, runs: list[RunRecord], metric: str) -> Reproduced:
    """Latest finished run per seed; a seed counts once even if it was rerun."""
    latest: dict[str, RunRecord] = {}
    for run in sorted(runs, key=lambda r: (r.start_time, r.run_id)):
        if run.status == FINISHED and run.metric(metric) is not None:
            latest[run.seed] = run
    counted = tuple(latest[seed] for seed in sorted(latest, key=seed_order))
    error, top5 = _stat(counted, metric), _stat(counted, schema.M_FINAL_TEST_TOP5)
    return Reproduced(protocol, tuple(runs), error, top5, counted)


def _stat(runs: Sequence[RunRecord], metric: str) -> Stat | None:
    pairs = [(run.seed, value) for run in runs if (value := run.metric(metric)) is not None]
    if not pairs:
        return None
    return Stat(tuple(value for _, value in pairs), tuple(seed for seed, _ in pairs))


def _claims(results: list[CellResult]) -> list[Claim]:
    """Every variant the paper made bold, or that the rule makes bold on either set of numbers."""
    originals = {r.cell.row: r for r in results if r.cell.model == "original"}
    claims = []
    for result in results:
        original = originals.get(result.cell.row)
        if result.cell.model == "original" or original is None:
            continue
        cell, base = result.cell, original.cell
        printed_params = cell.reported_params_m
        if printed_params is None and cell.params_equal_original:
            printed_params = base.reported_params_m  # "same number of parameters" (caption)
        on_paper = _rule(printed_params, base.reported_params_m, cell.reported_error,
                         base.reported_error)  # fmt: skip
        mean = result.paper.error.mean if result.paper.error else None
        base_mean = original.paper.error.mean if original.paper.error else None
        on_reproduced = _rule(result.params_paper, original.params_paper, mean, base_mean)
        if cell.bold or on_paper or on_reproduced:
            claims.append(Claim(result, cell.bold, on_paper, on_reproduced))
    return claims


def _rule(params, base_params, error, base_error) -> bool | None:
    if params is None or base_params is None:
        return None
    if params >= base_params:
        return False  # decided without the errors
    if error is None or base_error is None:
        return None
    return float(error) < float(base_error)


# --------------------------------------------------------------------------------------------
# Parameter counts: from the models, cached on disk because building ~80 models costs seconds.


def param_counts(
    specs: Iterable[ModelSpec], counter: ParamCounter | None = None
) -> dict[ModelSpec, tuple[int, int]]:
    """(paper count, total) per spec via ``rkrepro.models.spec_param_counts``.

    Cached in ``$RKREPRO_CACHE_DIR`` (default ``~/.cache/rkrepro``) under a fingerprint of the
    model code, so a changed model is recounted. ``counter`` replaces the models (tests).
    """
    unique = list(dict.fromkeys(specs))
    if counter is not None:
        return {spec: counter(spec) for spec in unique}
    path = _cache_dir() / "param_counts.json"
    fingerprint = _models_fingerprint()
    cached: dict[str, list[int]] = {}
    try:
        data = json.loads(path.read_text())
        if data.get("fingerprint") == fingerprint:
            cached = data["counts"]
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    missing = [spec for spec in unique if repr(spec) not in cached]
    if missing:
        from rkrepro.models import spec_param_counts

        for spec in missing:
            cached[repr(spec)] = list(spec_param_counts(spec))
        _write_cache(path, {"fingerprint": fingerprint, "counts": cached})
    return {spec: (int(cached[repr(spec)][0]), int(cached[repr(spec)][1])) for spec in unique}


def _cache_dir() -> Path:
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rkrepro"


def _models_fingerprint() -> str:
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted([package / "spec.py", *(package / "models").rglob("*.py")]):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _write_cache(path: Path, data: dict[str, Any]) -> None:
    """Best effort: a read-only home only makes the next report slower."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(data, sort_keys=True))
        os.replace(temporary, path)
    except OSError:
        pass


# --------------------------------------------------------------------------------------------
# Flat records: CSV and JSON, full precision.


def records(report: Report) -> list[dict[str, Any]]:
    """One record per cell, plus one per cell with shortened runs when asked; paper order."""
    out = []
    for table_report in report.tables:
        labels = {row.id: row.label for row in table_report.table.rows}
        for result in table_report.results:
            shortened = result.shortened
            for reproduced in (result.paper, shortened if shortened and shortened.runs else None):
                if reproduced is not None:
                    out.append(_record(report, result, reproduced, labels[result.cell.row]))
    return out


RECORD_FIELDS = (
    "table",
    "row",
    "row_label",
    "model",
    "printed_model",
    "share",
    "protocol",
    "metric",
    "reported_params_m",
    "params_paper",
    "params_total",
    "reported_error",
    "error_mean",
    "error_std",
    "n",
    "seeds",
    "diff",
    "tolerance_pp",
    "verdict",
    "reported_top5",
    "top5_mean",
    "top5_std",
    "top5_n",
    "top5_diff",
    "bold",
    "star",
    "running",
    "failed",
    "killed",
    "run_ids",
)


def _record(report: Report, result: CellResult, rep: Reproduced, label: str) -> dict[str, Any]:
    cell = result.cell
    paper = rep.protocol == schema.PROTOCOL_PAPER
    error, top5 = rep.error, rep.top5
    return {
        "table": cell.table,
        "row": cell.row,
        "row_label": label,
        "model": cell.model,
        "printed_model": cell.printed_model,
        "share": cell.share,
        "protocol": rep.protocol,
        "metric": report.metric,
        "reported_params_m": _float(cell.reported_params_m),
        "params_paper": result.params_paper,
        "params_total": result.params_total,
        "reported_error": _float(cell.reported_error),
        "error_mean": error.mean if error else None,
        "error_std": error.std if error else None,
        "n": error.n if error else 0,
        "seeds": list(error.seeds) if error else [],
        "diff": _diff(error, cell.reported_error),
        "tolerance_pp": result.tolerance,
        "verdict": _verdict(rep, cell.reported_error, result.tolerance) if paper else SHORTENED,
        "reported_top5": _float(cell.reported_top5),
        "top5_mean": top5.mean if top5 else None,
        "top5_std": top5.std if top5 else None,
        "top5_n": top5.n if top5 else 0,
        "top5_diff": _diff(top5, cell.reported_top5),
        "bold": cell.bold,
        "star": cell.star,
        "running": rep.count(*ACTIVE),
        "failed": rep.count(FAILED),
        "killed": rep.count(KILLED),
        "run_ids": [r.run_id for r in rep.runs],
    }


def _float(value: float | None) -> float | None:
    return None if value is None else float(value)


def _claim_record(claim: Claim) -> dict[str, Any]:
    cell = claim.result.cell
    return {
        "table": cell.table,
        "row": cell.row,
        "model": cell.model,
        "share": cell.share,
        "paper_bold": claim.paper_bold,
        "on_paper_numbers": claim.on_paper,
        "on_reproduced_numbers": claim.on_reproduced,
    }


def to_json(report: Report) -> str:
    tables = []
    for table_report in report.tables:
        table = table_report.table
        tables.append(
            {
                "id": table.id,
                "title": table.title,
                "dataset": table.dataset,
                "tolerance_pp": table_report.tolerance,
                "summary": table_report.summary(),
                "cells": [r for r in records(_only(report, table_report))],
                "claims": [_claim_record(c) for c in table_report.claims],
            }
        )
    document = {
        "metric": report.metric,
        "metric_label": report.metric_label,
        "include_shortened": report.include_shortened,
        "tables": tables,
    }
    return json.dumps(document, indent=2, allow_nan=False) + "\n"


def _only(report: Report, table_report: TableReport) -> Report:
    return Report((table_report,), report.best, report.include_shortened)


def to_csv(report: Report) -> str:
    rows = records(report)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RECORD_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {
                key: ";".join(value) if isinstance(value, list) else _csv_value(value)
                for key, value in row.items()
            }
        )
    return buffer.getvalue()


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return repr(value)  # shortest round-tripping form: full precision
    return "" if value is None else value


# --------------------------------------------------------------------------------------------
# The paper's layout: one line per variant, the row's original on its first line.


@dataclass(frozen=True)
class Entry:
    """One numeric cell of the layout: reported / reproduced / difference, and a verdict."""

    reported: str
    reproduced: str
    diff: str
    verdict: str | None = None  # None: not judged (parameters, top-5)
    bold: bool = False
    notes: tuple[str, ...] = ()  # extra lines, e.g. shortened-protocol numbers


Item = str | Entry | None


@dataclass(frozen=True)
class Layout:
    headers: tuple[str, ...]
    lines: tuple[tuple[Item, ...], ...]
    group_starts: frozenset[int] = field(default_factory=frozenset)


def layout(table_report: TableReport) -> Layout:
    """The grid of :func:`to_markdown` & co, in the column order the paper prints."""
    table = table_report.table
    imagenet = table.dataset == "imagenet"
    metrics = ("Top-1 (%)", "Top-5 (%)") if imagenet else ("Error (%)",)
    show_depth = any(str(row.depth) not in row.label for row in table.rows)
    m_columns = _m_columns(table)
    headers = ["Original model", *(["Depth"] if show_depth else []), "Params (M)", *metrics]
    headers += ["Variant", *(f"m{i} (k)" for i in m_columns), "Params (M)", *metrics]
    headers += ["Params with share (M)", *(f"{m[:-4]} with share (%)" for m in metrics)]
    results = {(r.cell.row, r.cell.model, r.cell.share): r for r in table_report.results}
    lines: list[tuple[Item, ...]] = []
    starts = set()
    for row in table.rows:
        starts.add(len(lines))
        original = results[(row.id, "original", False)]
        variants = list(dict.fromkeys(v.name for v in row.variants)) or [None]
        for index, name in enumerate(variants):
            first = index == 0
            line: list[Item] = [row.label if first else ""]
            if show_depth:
                line.append(str(row.depth) if first else "")
            line += _model_items(original, imagenet) if first else [None] * (1 + len(metrics))
            plain = results.get((row.id, name, False)) if name else None
            shared = results.get((row.id, name, True)) if name else None
            line.append(plain.cell.printed_model if plain else "")
            # m is a property of the row: printed once, on its first line, as in the paper.
            line += [_m_value(row, i) if first and plain else "" for i in m_columns]
            line += _model_items(plain, imagenet) if plain else [None] * (1 + len(metrics))
            line += _model_items(shared, imagenet) if shared else [None] * (1 + len(metrics))
            lines.append(tuple(line))
    return Layout(tuple(headers), tuple(lines), frozenset(starts))


def _m_columns(table: Table) -> list[int]:
    """Widths m1.. that vary across the table's rows; constant ones (m1 = 4k on ImageNet) are
    stated in the caption and, as in the paper, not listed."""
    widths = [row.m for row in table.rows if row.m is not None and row.variants]
    if not widths:
        return []
    count = min(len(m) for m in widths)
    return [i for i in range(1, count) if len({m[i] for m in widths}) > 1]


def _m_value(row: Row, index: int) -> str:
    return str(row.m[index]) if row.m is not None and index < len(row.m) else ""


def _model_items(result: CellResult, imagenet: bool) -> list[Item]:
    """Params, then error (or top-1 and top-5) entries of one cell."""
    cell = result.cell
    params = Entry(
        _printed(cell.reported_params_m),
        f"{result.params_m:.2f}",
        _signed(result.params_m - float(cell.reported_params_m))
        if cell.reported_params_m is not None
        else "",
    )
    items: list[Item] = [params, _error_entry(result)]
    if imagenet:
        items.append(
            Entry(
                _printed(cell.reported_top5) + ("*" if cell.star else ""),
                _stat_text(result.paper.top5),
                _signed(result.top5_diff),
            )
        )
    return items


def _error_entry(result: CellResult) -> Entry:
    cell = result.cell
    notes = ()
    if result.shortened is not None and result.shortened.runs:
        short = result.shortened
        text = _stat_text(short.error) if short.error else _state_text(short)
        diff = _signed(_diff(short.error, cell.reported_error))
        notes = (f"[shortened] {text}" + (f" / {diff}" if diff else ""),)
    verdict = result.verdict
    reproduced = _stat_text(result.paper.error) if result.paper.error else "-"
    return Entry(
        _printed(cell.reported_error) + ("*" if cell.star else ""),
        reproduced,
        _signed(result.diff),
        verdict,
        cell.bold,
        notes,
    )


def _printed(value: float | None) -> str:
    if value is None:
        return "-"
    decimals = getattr(value, "decimals", 2)
    return f"{float(value):.{decimals}f}"


def _signed(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:+.2f}" if round(value, 2) != 0 else "+0.00"  # never "-0.00"


def _stat_text(stat: Stat | None) -> str:
    if stat is None:
        return "-"
    if stat.std is None:
        return f"{stat.mean:.2f} (n=1)"
    return f"{stat.mean:.2f} ± {stat.std:.2f} (n={stat.n})"


def _state_text(reproduced: Reproduced) -> str:
    return _verdict(reproduced, None, 0.0) if reproduced.error is None else "-"


def entry_text(entry: Entry, separator: str = " / ") -> str:
    """``4.51 / 4.60 ± 0.12 (n=3) / +0.09 within``; parameters omit the verdict."""
    parts = [entry.reported, entry.reproduced]
    if entry.diff:
        parts.append(entry.diff)
    text = separator.join(parts)
    if entry.verdict is not None:
        text += f" {entry.verdict}"
    return text


# --------------------------------------------------------------------------------------------
# Text around the tables.


def _tolerance_text(report: Report, table_report: TableReport) -> str:
    dataset = DATASET_NAMES[table_report.table.dataset]
    source = "--tolerance" if report.tolerance_override is not None else f"{dataset} default"
    judged = "top-1" if table_report.table.dataset == "imagenet" else "error"
    return f"±{table_report.tolerance:.2f} pp on {judged} ({source})"


def _notes(report: Report, table_report: TableReport) -> list[str]:
    table = table_report.table
    notes = [
        f"Error: {report.metric_label}, in %, mean ± sample std over seeds (n = seeds).",
        "Each cell: reported / reproduced / difference (reproduced - reported), then the verdict "
        f"for errors; tolerance {_tolerance_text(report, table_report)}.",
        "Params: reported / counted from the model (millions; conv and FC weights and biases).",
        "Only paper-protocol runs count"
        + (
            "; [shortened] lines are shortened-protocol runs, never judged."
            if report.include_shortened
            else "."
        ),
    ]
    if table.dataset == "imagenet":
        notes.append("Top-5 is the final-epoch value in every mode and is not judged.")
    if table.star_note:
        notes.append(table.star_note)
    return notes


def _summary_text(table_report: TableReport) -> str:
    counts = table_report.summary()
    return ", ".join(f"{name} {counts[name]}" for name in VERDICTS if counts[name])


def _claim_rows(table_report: TableReport) -> list[tuple[str, str, str, str, str, str]]:
    labels = {row.id: row.label for row in table_report.table.rows}
    rows = []
    for claim in table_report.claims:
        cell = claim.result.cell
        rows.append(
            (
                labels[cell.row],
                cell.printed_model,
                "yes" if cell.share else "no",
                "bold" if claim.paper_bold else "-",
                _yes_no(claim.on_paper),
                _yes_no(claim.on_reproduced),
            )
        )
    return rows


CLAIM_TITLE = (
    "Bold claims: fewer parameters and lower error than the row's original "
    "(reproduced: counted parameters and seed means)"
)
CLAIM_HEADERS = ("Row", "Variant", "Share", "Paper", "Rule on paper numbers", "On reproduced")


def _yes_no(value: bool | None) -> str:
    return {True: "holds", False: "fails", None: "undecided"}[value]


# --------------------------------------------------------------------------------------------
# Markdown (GitHub), LaTeX (booktabs), HTML (one self-contained file).


def to_markdown(report: Report) -> str:
    out = ["# rkrepro report", ""]
    out += [f"Metric: {report.metric_label}.", ""]
    for table_report in report.tables:
        table = table_report.table
        grid = layout(table_report)
        out += [f"## {table.title} ({DATASET_NAMES[table.dataset]})", ""]
        out += [f"> {table.caption}", ""]
        out += [f"- {note}" for note in _notes(report, table_report)] + [""]
        out.append("| " + " | ".join(grid.headers) + " |")
        out.append("|" + "|".join("---" for _ in grid.headers) + "|")
        for line in grid.lines:
            out.append("| " + " | ".join(_md_item(item) for item in line) + " |")
        out += ["", f"Verdicts: {_summary_text(table_report) or 'none'}.", ""]
        out += _md_claims(table_report)
    return "\n".join(out).rstrip() + "\n"


def _md_item(item: Item) -> str:
    if item is None:
        return ""
    if isinstance(item, str):
        return item.replace("|", "\\|")
    reported = f"**{item.reported}**" if item.bold else item.reported
    text = entry_text(Entry(reported, item.reproduced, item.diff, item.verdict))
    return "<br>".join([text, *item.notes]).replace("|", "\\|")


def _md_claims(table_report: TableReport) -> list[str]:
    rows = _claim_rows(table_report)
    title = f"{CLAIM_TITLE}:"
    if not rows:
        return [title + " none in the paper, none on the reproduced numbers.", ""]
    out = [title, "", "| " + " | ".join(CLAIM_HEADERS) + " |"]
    out.append("|" + "|".join("---" for _ in CLAIM_HEADERS) + "|")
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return [*out, ""]


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def _tex(text: str) -> str:
    escaped = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)
    return escaped.replace("±", r"$\pm$").replace("\u00d7", r"$\times$")


def to_latex(report: Report) -> str:
    out = ["% rkrepro report: needs \\usepackage{booktabs}", ""]
    for table_report in report.tables:
        table = table_report.table
        grid = layout(table_report)
        caption = (
            f"{table.title} reproduced ({DATASET_NAMES[table.dataset]}): {report.metric_label}"
        )
        caption += f"; tolerance {_tolerance_text(report, table_report)}."
        out += [r"\begin{table}[ht]", r"\centering", r"\scriptsize"]
        out += [rf"\caption{{{_tex(caption)}}}", rf"\label{{tab:rkrepro-{table.id}}}"]
        out.append(r"\begin{tabular}{" + "l" * len(grid.headers) + "}")
        out += [r"\toprule", " & ".join(_tex(h) for h in grid.headers) + r" \\", r"\midrule"]
        for index, line in enumerate(grid.lines):
            if index in grid.group_starts and index:
                out.append(r"\addlinespace")
            out.append(" & ".join(_tex_item(item) for item in line) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(out)


def _tex_item(item: Item) -> str:
    if item is None:
        return ""
    if isinstance(item, str):
        return _tex(item)
    reported = _tex(item.reported)
    if item.bold:
        reported = rf"\textbf{{{reported}}}"
    parts = [reported, _tex(item.reproduced), *([_tex(item.diff)] if item.diff else [])]
    text = " / ".join(parts)
    if item.verdict is not None:
        text += rf" \textit{{{item.verdict}}}"
    return "; ".join([text, *(_tex(note) for note in item.notes)])


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:4px 6px;vertical-align:top;text-align:left}
th{background:#f3f3f3} tr.group td{border-top:2px solid #888}
.within{color:#1a7f37}.better{color:#0969da}.worse{color:#cf222e;font-weight:bold}
.missing,.unreported{color:#888}.running{color:#9a6700}.failed{color:#cf222e}
.note{color:#666;font-size:12px} img{max-width:100%}
"""


def to_html(report: Report, images: Sequence[Path] = ()) -> str:
    """One file: inline CSS, and plots (if any) inlined as data URIs."""
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>rkrepro report</title>',
        f"<style>{_CSS}</style></head><body>",
        "<h1>rkrepro report</h1>",
        f"<p>Metric: {html.escape(report.metric_label)}.</p>",
    ]
    for table_report in report.tables:
        table = table_report.table
        grid = layout(table_report)
        out.append(f"<h2>{html.escape(table.title)} ({DATASET_NAMES[table.dataset]})</h2>")
        out.append(f"<p><em>{html.escape(table.caption)}</em></p><ul>")
        out += [f"<li>{html.escape(note)}</li>" for note in _notes(report, table_report)]
        out.append("</ul><table><thead><tr>")
        out += [f"<th>{html.escape(h)}</th>" for h in grid.headers]
        out.append("</tr></thead><tbody>")
        for index, line in enumerate(grid.lines):
            group = ' class="group"' if index in grid.group_starts and index else ""
            cells = "".join(_html_item(item) for item in line)
            out.append(f"<tr{group}>{cells}</tr>")
        out.append("</tbody></table>")
        out.append(f"<p>Verdicts: {html.escape(_summary_text(table_report) or 'none')}.</p>")
        out += _html_claims(table_report)
    for image in images:
        data = base64.b64encode(Path(image).read_bytes()).decode("ascii")
        name = html.escape(Path(image).name)
        out.append(f'<figure><img alt="{name}" src="data:image/png;base64,{data}">')
        out.append(f"<figcaption>{name}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _html_item(item: Item) -> str:
    if item is None:
        return "<td></td>"
    if isinstance(item, str):
        return f"<td>{html.escape(item)}</td>"
    reported = html.escape(item.reported)
    if item.bold:
        reported = f"<b>{reported}</b>"
    parts = [
        reported,
        html.escape(item.reproduced),
        *([html.escape(item.diff)] if item.diff else []),
    ]
    text = " / ".join(parts)
    if item.verdict is not None:
        text += f' <span class="{item.verdict}">{item.verdict}</span>'
    notes = "".join(f'<br><span class="note">{html.escape(n)}</span>' for n in item.notes)
    return f"<td>{text}{notes}</td>"


def _html_claims(table_report: TableReport) -> list[str]:
    rows = _claim_rows(table_report)
    title = CLAIM_TITLE
    if not rows:
        return [f"<p>{title}: none in the paper, none on the reproduced numbers.</p>"]
    out = [f"<p>{title}:</p><table><thead><tr>"]
    out += [f"<th>{html.escape(h)}</th>" for h in CLAIM_HEADERS]
    out.append("</tr></thead><tbody>")
    out += ["<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>" for row in rows]
    out.append("</tbody></table>")
    return out


# --------------------------------------------------------------------------------------------
# Rich (terminal).

VERDICT_STYLE = {
    WITHIN: "green",
    BETTER: "cyan",
    WORSE: "bold red",
    MISSING: "dim",
    RUNNING: "yellow",
    FAILED_VERDICT: "red",
    UNREPORTED: "dim",
}


def to_rich(report: Report) -> list[Any]:
    """Renderables for a rich Console: per table, the grid and its claims."""
    from rich import box
    from rich.table import Table as RichTable
    from rich.text import Text

    out: list[Any] = [Text(f"Metric: {report.metric_label}", style="bold")]
    for table_report in report.tables:
        table = table_report.table
        grid = layout(table_report)
        title = f"{table.title} ({DATASET_NAMES[table.dataset]}) - reported / reproduced / diff"
        rich_table = RichTable(
            title=title, box=box.SIMPLE_HEAD, header_style="bold", padding=(0, 1)
        )
        for header in grid.headers:
            # Headers break at spaces; labels and variant names stay on one line.
            label = header in ("Original model", "Variant")
            rich_table.add_column(header.replace(" ", "\n"), no_wrap=label, overflow="fold")
        for index, line in enumerate(grid.lines):
            if index in grid.group_starts and index:
                rich_table.add_section()
            rich_table.add_row(*(_rich_item(item) for item in line))
        rich_table.caption = "\n".join(_notes(report, table_report)[1:])
        out.append(rich_table)
        out.append(Text(f"Verdicts: {_summary_text(table_report) or 'none'}"))
        claims = _claim_rows(table_report)
        if claims:
            claim_table = RichTable(title=f"{table.title}: bold claims", header_style="bold")
            for header in CLAIM_HEADERS:
                claim_table.add_column(header)
            for row in claims:
                claim_table.add_row(*row)
            out.append(claim_table)
    return out


def _rich_item(item: Item):
    from rich.text import Text

    if item is None:
        return ""
    if isinstance(item, str):
        return item
    text = Text(item.reported, style="bold" if item.bold else "")
    text.append("\n" + item.reproduced)
    if item.diff or item.verdict:
        text.append("\n" + item.diff)
    if item.verdict is not None:
        gap = " " if item.diff else ""
        text.append(gap + item.verdict, style=VERDICT_STYLE.get(item.verdict, ""))
    for note in item.notes:
        text.append("\n" + note, style="dim")
    return text


FORMATS: dict[str, Callable[[Report], str]] = {
    "markdown": to_markdown,
    "csv": to_csv,
    "json": to_json,
    "latex": to_latex,
    "html": to_html,
}


# --------------------------------------------------------------------------------------------
# Plots (matplotlib, Agg) and their logging to MLflow.


def write_plots(
    report: Report,
    out_dir: Path,
    tracking_uri: str | None = None,
    history: Callable[[str], list[tuple[int, float]]] | None = None,
) -> list[Path]:
    """Params vs error per table, and test error vs epoch per row; returns the PNG paths.

    ``history(run_id)`` gives (epoch, test error) pairs; by default from MLflow.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if history is None:
        history = _mlflow_history(tracking_uri)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for table_report in report.tables:
        paths.append(_plot_params(plt, report, table_report, out_dir))
        for row in table_report.table.rows:
            path = _plot_curves(plt, table_report, row, out_dir, history)
            if path is not None:
                paths.append(path)
    return paths


def _mlflow_history(tracking_uri: str | None) -> Callable[[str], list[tuple[int, float]]]:
    from mlflow import MlflowClient

    from rkrepro.status import default_tracking_uri

    client = MlflowClient(tracking_uri=tracking_uri or default_tracking_uri())

    def history(run_id: str) -> list[tuple[int, float]]:
        metrics = client.get_metric_history(run_id, schema.M_TEST_ERROR)
        return sorted((m.step, m.value) for m in metrics)

    return history


_KIND_COLOR = {"original": "black", "variant": "tab:blue", "share": "tab:orange"}


def _kind(cell: Cell) -> str:
    return "original" if cell.model == "original" else ("share" if cell.share else "variant")


def _plot_params(plt, report: Report, table_report: TableReport, out_dir: Path) -> Path:
    table = table_report.table
    figure, axes = plt.subplots(figsize=(7, 5))
    seen: set[str] = set()
    for result in table_report.results:
        cell, kind = result.cell, _kind(result.cell)
        color = _KIND_COLOR[kind]
        if cell.reported_error is not None:
            x = float(cell.reported_params_m) if cell.reported_params_m else result.params_m
            label = f"paper, {kind}" if f"p{kind}" not in seen else None
            seen.add(f"p{kind}")
            axes.scatter([x], [float(cell.reported_error)], facecolors="none", edgecolors=color,
                         label=label)  # fmt: skip
            if result.paper.error is not None:
                axes.plot([x, result.params_m], [float(cell.reported_error),
                          result.paper.error.mean], color="0.8", lw=0.8, zorder=0)  # fmt: skip
        if result.paper.error is not None:
            stat = result.paper.error
            label = f"reproduced, {kind}" if f"r{kind}" not in seen else None
            seen.add(f"r{kind}")
            axes.errorbar([result.params_m], [stat.mean], yerr=[stat.std or 0.0], fmt="s",
                          color=color, capsize=3, label=label)  # fmt: skip
    metric = "top-1 error" if table.dataset == "imagenet" else "error"
    axes.set_xlabel("parameters (M)")
    axes.set_ylabel(f"test {metric} (%), {'best' if report.best else 'final'} epoch")
    axes.set_title(f"{table.title} ({DATASET_NAMES[table.dataset]}): parameters vs error")
    axes.grid(alpha=0.3)
    if seen:
        axes.legend(fontsize=8)
    path = out_dir / f"{table.id}_params_vs_error.png"
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _plot_curves(plt, table_report, row, out_dir, history) -> Path | None:
    """Mean test error per epoch over seeds (band: min-max) for each model of the row."""
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(figsize=(7, 5))
    drawn = False
    for result in table_report.results:
        if result.cell.row != row.id:
            continue
        for reproduced, style in ((result.paper, "-"), (result.shortened, "--")):
            if reproduced is None:
                continue
            # The runs behind the statistics, plus those still in progress.
            shown = [*reproduced.counted, *(r for r in reproduced.runs if r.status in ACTIVE)]
            curves = [history(run.run_id) for run in shown]
            curves = [c for c in curves if c]
            if not curves:
                continue
            epochs = sorted({epoch for curve in curves for epoch, _ in curve})
            by_epoch = [[v for c in curves for e, v in c if e == epoch] for epoch in epochs]
            label = result.cell.printed_model + (" (share)" if result.cell.share else "")
            if reproduced.protocol == schema.PROTOCOL_SHORTENED:
                label += " [shortened]"
            means = [statistics.fmean(vs) for vs in by_epoch]
            line = axes.plot(epochs, means, style, lw=1.2, label=f"{label} (n={len(curves)})")
            if len(curves) > 1:
                axes.fill_between(epochs, [min(v) for v in by_epoch], [max(v) for v in by_epoch],
                                  color=line[0].get_color(), alpha=0.15)  # fmt: skip
            drawn = True
    if not drawn:
        plt.close(figure)
        return None
    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel("test error (%)")
    axes.set_title(f"{table_report.table.title}, {row.label}: test error per epoch")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    path = out_dir / f"{table_report.table.id}_{row.id}_curves.png"
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def log_plots(tracking_uri: str | None, report: Report, paths: Sequence[Path], name: str) -> str:
    """Log the PNGs (and the JSON report) as artifacts of a new run in ``rkrepro/reports``.

    For a local SQLite store the experiment keeps its artifacts next to the database, not in the
    current directory. Returns the run id.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from rkrepro.status import default_tracking_uri

    uri = tracking_uri or default_tracking_uri()
    try:
        # mlflow prints "View run ... at" on stdout for servers; stdout may carry the report.
        with contextlib.redirect_stdout(sys.stderr):
            return _log_run(mlflow.MlflowClient(tracking_uri=uri), uri, report, paths, name)
    except (MlflowException, OSError) as error:
        raise TrackingError(f"cannot log the plots to {uri}: {error}") from None


def _log_run(client, uri: str, report: Report, paths: Sequence[Path], name: str) -> str:
    """The run, its parameters and artifacts; artifacts of a local store sit beside its file."""
    from rkrepro.status import sqlite_path

    experiment = client.get_experiment_by_name(REPORTS_EXPERIMENT)
    if experiment is None:
        db = sqlite_path(uri)
        location = (db.resolve().parent / "artifacts").as_uri() if db else None
        experiment_id = client.create_experiment(REPORTS_EXPERIMENT, location)
    else:
        experiment_id = experiment.experiment_id
    run = client.create_run(experiment_id, run_name=name, tags={"rkrepro.report": name})
    run_id = run.info.run_id
    client.log_param(run_id, "metric", report.metric)
    client.log_param(run_id, "include_shortened", str(report.include_shortened).lower())
    if report.tolerance_override is not None:
        client.log_param(run_id, "tolerance_pp", report.tolerance_override)
    for path in paths:
        client.log_artifact(run_id, str(path), artifact_path="plots")
    client.log_text(run_id, to_json(report), "report.json")
    client.set_terminated(run_id, "FINISHED")
    return run_id
