"""The report as data: runs + tables -> per-cell seed statistics, verdicts and bold claims.

Pipeline: MLflow runs (:func:`rkrepro.tracking.reader.fetch_runs`, one search per table) ->
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

import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rkrepro.spec import ModelSpec
from rkrepro.status import (
    ACTIVE,
    FAILED,
    FINISHED,
    KILLED,
    cell_id_of,
    seed_order,
)
from rkrepro.tracking import keys as mlflow_keys
from rkrepro.tracking.reader import Reader, RunRecord, fetch_runs

if TYPE_CHECKING:
    from rkrepro.paper import Cell, Table

DEFAULT_TOLERANCE_PP: dict[str, float] = {"cifar10": 0.3, "cifar100": 0.6, "imagenet": 0.5}
DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenet": "ImageNet"}

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
    # The readings this number is under (training readings that apply, reported_error).
    readings: tuple[tuple[str, str], ...] = ()

    @property
    def legacy(self) -> int:
        """Counted runs that record no readings: trained before the Torch-exact protocol, which
        the report notes beside their numbers."""
        return sum(r.legacy for r in self.counted)

    @property
    def reading_text(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.readings)

    def count(self, *statuses: str) -> int:
        return sum(r.status in statuses for r in self.runs)

    @property
    def precisions(self) -> tuple[str, ...]:
        """The arithmetic of the counted runs (``fp32`` is the paper's), each once."""
        return tuple(sorted({r.precision for r in self.counted}))

    @property
    def not_fp32(self) -> tuple[str, ...]:
        return tuple(p for p in self.precisions if p != mlflow_keys.PRECISION_FP32)


@dataclass(frozen=True)
class CellResult:
    """One cell of a table: printed numbers, counted parameters and reproduced statistics."""

    cell: Cell
    params_paper: int
    params_total: int
    tolerance: float
    paper: Reproduced
    shortened: Reproduced | None = None
    compare: Reproduced | None = None  # paper-protocol runs under the --compare readings
    # Runs of the cell left out because they were trained under other readings.
    other_readings: tuple[RunRecord, ...] = ()

    @property
    def params_m(self) -> float:
        return self.params_paper / 1e6

    @property
    def diff(self) -> float | None:
        return difference(self.paper.error, self.cell.reported_error)

    @property
    def top5_diff(self) -> float | None:
        return difference(self.paper.top5, self.cell.reported_top5)

    @property
    def verdict(self) -> str:
        return verdict_of(self.paper, self.cell.reported_error, self.tolerance)


def difference(stat: Stat | None, reported: float | None) -> float | None:
    if stat is None or reported is None:
        return None
    return stat.mean - float(reported)


def verdict_of(reproduced: Reproduced, reported: float | None, tolerance: float) -> str:
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
    hidden_shortened: int = 0  # shortened runs left out (without --include-shortened)

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
    readings: tuple[tuple[str, str], ...] = ()  # --reading overrides
    compare: tuple[tuple[str, str], ...] = ()  # --compare readings, shown beside

    @property
    def metric(self) -> str:
        return mlflow_keys.M_BEST_TEST_ERROR if self.best else mlflow_keys.M_FINAL_TEST_ERROR

    @property
    def metric_label(self) -> str:
        if self.best:
            return "best-epoch test error (lowest over epochs; NOT the paper's convention)"
        return "final-epoch test error (the paper's convention)"

    def worse(self) -> list[CellResult]:
        """Paper-protocol cells outside tolerance on the bad side: what ``--check`` fails on."""
        return [r for t in self.tables for r in t.results if r.verdict == WORSE]

    def judged(self) -> list[CellResult]:
        """Cells with a reproduced number compared with a printed one (within, better, worse):
        a check that judged none of them has checked nothing."""
        return [r for t in self.tables for r in t.results if r.verdict in (WITHIN, BETTER, WORSE)]


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
    readings: dict[str, str] | None = None,
    compare: dict[str, str] | None = None,
) -> tuple[Report, list[RunRecord]]:
    """Read the tables and the store: one MLflow search per table for a server, a read-only
    sqlite3 query for a local store (``reader="auto"``; both give the same records)."""
    from rkrepro import paper

    tables = paper.load_tables(tables_dir)
    chosen = [paper.find_table(tables, table_id)] if table_id else list(tables.values())
    records = fetch_runs(tracking_uri, [t.id for t in chosen], reader=reader)
    report = build_report(
        chosen,
        records,
        best=best,
        tolerance=tolerance,
        include_shortened=include_shortened,
        counter=counter,
        readings=readings,
        compare=compare,
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
    readings: dict[str, str] | None = None,
    compare: dict[str, str] | None = None,
) -> Report:
    """Pure: tables + run records -> :class:`Report` (no I/O besides parameter counting).

    A cell's number counts only runs trained under the cell's training readings (the table's,
    with ``readings`` overriding), resolved from each run's tags: a run without reading tags
    resolves to what it was trained as (:data:`rkrepro.paper.readings.LEGACY`), so e.g. an old
    ``euler`` run of a multi-stage ResNet is never reported as ``concat``. The metric follows
    the ``reported_error`` reading (``best=True``: best epoch everywhere). ``compare`` gives
    every cell a second number under other readings, for side-by-side display.
    """
    from rkrepro.paper import row_cells, with_readings

    overrides = {**(readings or {}), **({"reported_error": "best"} if best else {})}
    by_cell: dict[tuple, list[RunRecord]] = {}
    for record in records:
        by_cell.setdefault((*record.cell_id, record.protocol), []).append(record)
    cells = [
        with_readings(cell, overrides)
        for table in tables
        for row in table.rows
        for cell in row_cells(table, row)
    ]
    counts = param_counts([cell.spec for cell in cells], counter)
    by_table: dict[str, list[Cell]] = {}
    for cell in cells:
        by_table.setdefault(cell.table, []).append(cell)
    reports = []
    for table in tables:
        tol = tolerance if tolerance is not None else DEFAULT_TOLERANCE_PP[table.dataset]
        results = []
        hidden = 0
        for cell in by_table.get(table.id, []):
            runs = {
                protocol: by_cell.get((*cell_id_of(cell), protocol), [])
                for protocol in (mlflow_keys.PROTOCOL_PAPER, mlflow_keys.PROTOCOL_SHORTENED)
            }
            paper_count, total = counts[cell.spec]
            if not include_shortened:
                hidden += len(runs[mlflow_keys.PROTOCOL_SHORTENED])
            paper_runs, others = _under(cell, runs[mlflow_keys.PROTOCOL_PAPER])
            short_runs, _ = _under(cell, runs[mlflow_keys.PROTOCOL_SHORTENED])
            shortened = _reduce(mlflow_keys.PROTOCOL_SHORTENED, short_runs, cell)
            alternative = None
            if compare:
                other = with_readings(cell, compare)
                alt_runs, _ = _under(other, runs[mlflow_keys.PROTOCOL_PAPER])
                alternative = _reduce(mlflow_keys.PROTOCOL_PAPER, alt_runs, other)
            results.append(
                CellResult(
                    cell=cell,
                    params_paper=paper_count,
                    params_total=total,
                    tolerance=tol,
                    paper=_reduce(mlflow_keys.PROTOCOL_PAPER, paper_runs, cell),
                    shortened=shortened if include_shortened else None,
                    compare=alternative,
                    other_readings=tuple(others),
                )
            )
        reports.append(TableReport(table, tol, tuple(results), tuple(_claims(results)), hidden))
    return Report(
        tuple(reports),
        best,
        include_shortened,
        tolerance,
        tuple((readings or {}).items()),
        tuple((compare or {}).items()),
    )


def training_readings(values: dict[str, str], spec: ModelSpec) -> dict[str, str]:
    """The readings that make two runs of one cell different trainings (precision apart: it
    is shown per number, as before readings existed)."""
    from rkrepro.paper import readings as readings_mod

    return readings_mod.identity(values, spec)


def trained_as(values: dict[str, str], spec: ModelSpec) -> dict[str, str]:
    """What makes two runs of a cell different trainings: the training readings and the
    precision. A number never mixes runs trained in different arithmetic: bf16 seeds are
    reported under ``--reading precision=bf16-autocast``, apart from the paper's fp32."""
    precision = values.get("precision", mlflow_keys.PRECISION_FP32)
    return {**training_readings(values, spec), "precision": precision}


def _under(cell: Cell, runs: list[RunRecord]) -> tuple[list[RunRecord], list[RunRecord]]:
    """(runs trained as ``cell`` says: its training readings and precision, the others)."""
    wanted = trained_as(cell.reading, cell.spec)
    mine, others = [], []
    for run in runs:
        trained = trained_as(run.resolved_readings(cell.spec), cell.spec)
        (mine if trained == wanted else others).append(run)
    return mine, others


def reported_metric(cell: Cell) -> str:
    """The metric the cell's ``reported_error`` reading compares with the paper."""
    if cell.reading.get("reported_error") == "best":
        return mlflow_keys.M_BEST_TEST_ERROR
    return mlflow_keys.M_FINAL_TEST_ERROR


def _reduce(protocol: str, runs: list[RunRecord], cell: Cell) -> Reproduced:
    """Latest finished run per seed; a seed counts once even if it was rerun."""
    metric = reported_metric(cell)
    latest: dict[str, RunRecord] = {}
    for run in sorted(runs, key=lambda r: (r.start_time, r.run_id)):
        if run.status == FINISHED and run.metric(metric) is not None:
            latest[run.seed] = run
    counted = tuple(latest[seed] for seed in sorted(latest, key=seed_order))
    error, top5 = _stat(counted, metric), _stat(counted, mlflow_keys.M_FINAL_TEST_TOP5)
    shown = {
        **training_readings(cell.reading, cell.spec),
        "reported_error": cell.reading.get("reported_error", "final"),
    }
    return Reproduced(protocol, tuple(runs), error, top5, counted, tuple(shown.items()))


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
# Parameter counts: from the spec, as ``rkrepro params`` and ``plan`` count them.


def param_counts(
    specs: Iterable[ModelSpec], counter: ParamCounter | None = None
) -> dict[ModelSpec, tuple[int, int]]:
    """(paper count, total) per spec, counted from the spec without building a model
    (:func:`rkrepro.models.analytic.param_counts`, which the tests check against every built
    model of the tables); ``counter`` replaces it (tests)."""
    if counter is None:
        from rkrepro.models.analytic import param_counts as counter
    return {spec: counter(spec) for spec in dict.fromkeys(specs)}
