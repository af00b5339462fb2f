"""The paper's claims (``claims:`` in the tables YAML) judged on its printed numbers and on the
reproduction, by the same predicate.

A claim is ``left <relation> right * factor (+/- margin)`` over pairs of cells. On the paper's
side a quantity is the printed number; on the reproduction's side it is the counted parameter
count or the seed mean of the paper-protocol runs. A pair the paper printed no number for is not
part of what the paper claimed, so it is left out of both sides (and counted as "not printed").
Three-valued: a claim *holds* when every pair holds, *fails* when one pair fails, and is
*undecided* while a pair cannot be decided yet (a cell not reproduced) or there is no pair.
Parameter claims are decidable before any training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rkrepro.report.build import CellResult, Report

if TYPE_CHECKING:
    from rkrepro.paper import ClaimSpec, Table

HOLDS, FAILS, UNDECIDED = "holds", "fails", "undecided"


@dataclass(frozen=True)
class Value:
    """One side of one comparison: the number and the seeds behind it (0 for printed/params)."""

    number: float | None
    seeds: int = 0


@dataclass(frozen=True)
class PairResult:
    left: CellResult
    right: CellResult
    quantity: str
    paper: tuple[Value, Value]
    reproduced: tuple[Value, Value]
    on_paper: bool | None
    on_reproduced: bool | None


@dataclass(frozen=True)
class ClaimResult:
    claim: ClaimSpec
    pairs: tuple[PairResult, ...]  # the pairs the paper printed both numbers for
    not_printed: int  # pairs left out: the paper printed "-" on one side

    @property
    def on_paper(self) -> str:
        return _all(p.on_paper for p in self.pairs)

    @property
    def on_reproduced(self) -> str:
        return _all(p.on_reproduced for p in self.pairs)

    @property
    def seeds(self) -> tuple[int, int]:
        """Fewest and most seeds behind a reproduced error in this claim; (0, 0) without any."""
        counts = [v.seeds for p in self.pairs for v in p.reproduced if p.quantity != "params"]
        counts = [c for c in counts if c]
        return (min(counts), max(counts)) if counts else (0, 0)

    @property
    def decided(self) -> int:
        return sum(p.on_reproduced is not None for p in self.pairs)

    def failing(self, reproduced: bool) -> list[PairResult]:
        return [p for p in self.pairs if (p.on_reproduced if reproduced else p.on_paper) is False]


def _all(values) -> str:
    values = list(values)
    if any(v is False for v in values):
        return FAILS
    if not values or any(v is None for v in values):
        return UNDECIDED
    return HOLDS


def evaluate_claims(report: Report, claims: Sequence[ClaimSpec] | None = None) -> list[ClaimResult]:
    """Judge ``claims`` (default: every claim of the report's tables) on ``report``, which must
    hold every table a claim names (:func:`claims_report` builds such a report)."""
    results = [r for t in report.tables for r in t.results]
    families = {(t.table.id, row.id): row.family for t in report.tables for row in t.table.rows}
    if claims is None:
        loaded = {t.table.id: t.table for t in report.tables}
        claims = claims_of(loaded)
    originals = {(r.cell.table, r.cell.row): r for r in results if r.cell.model == "original"}
    out = []
    for claim in claims:
        left = [r for r in results if claim.left.matches(r.cell, families[_row(r)])]
        right = [r for r in results if claim.right.matches(r.cell, families[_row(r)])]
        pairs: list[PairResult] = []
        not_printed = 0
        for a in left:
            for b in right:
                if a.cell == b.cell or not _paired(claim.pairs, a, b):
                    continue
                for quantity in claim.quantities:
                    pair = _compare(claim, quantity, a, b, originals)
                    if pair is None:
                        not_printed += 1
                    else:
                        pairs.append(pair)
        out.append(ClaimResult(claim, tuple(pairs), not_printed))
    return out


def _row(result: CellResult) -> tuple[str, str]:
    return result.cell.table, result.cell.row


def _paired(pairs: str, a: CellResult, b: CellResult) -> bool:
    if pairs == "all":
        return True
    same_row = _row(a) == _row(b)
    return same_row if pairs == "row" else same_row and a.cell.model == b.cell.model


def _compare(claim: ClaimSpec, quantity: str, a, b, originals) -> PairResult | None:
    paper = (_paper_value(quantity, a, originals), _paper_value(quantity, b, originals))
    if paper[0].number is None or paper[1].number is None:
        return None
    reproduced = (
        _reproduced_value(quantity, a, originals),
        _reproduced_value(quantity, b, originals),
    )
    return PairResult(
        a, b, quantity, paper, reproduced, _holds(claim, *paper), _holds(claim, *reproduced)
    )


def _holds(claim: ClaimSpec, left: Value, right: Value) -> bool | None:
    if left.number is None or right.number is None:
        return None
    bound = right.number * claim.factor
    if claim.relation == "less":
        return left.number < bound - claim.margin
    return left.number > bound + claim.margin


def _paper_value(quantity: str, result: CellResult, originals) -> Value:
    cell = result.cell
    original = originals.get(_row(result))
    if quantity == "params":
        printed = cell.reported_params_m
        if printed is None and cell.params_equal_original and original is not None:
            printed = original.cell.reported_params_m  # "same number of parameters" (caption)
        return Value(None if printed is None else float(printed))
    error = cell.reported_error
    if error is None:
        return Value(None)
    if quantity == "error":
        return Value(float(error))
    base = original.cell.reported_error if original is not None else None
    return Value(None if base is None else float(error) - float(base))


def _reproduced_value(quantity: str, result: CellResult, originals) -> Value:
    if quantity == "params":
        return Value(result.params_paper / 1e6)
    stat = result.paper.error
    if stat is None:
        return Value(None)
    if quantity == "error":
        return Value(stat.mean, stat.n)
    original = originals.get(_row(result))
    base = original.paper.error if original is not None else None
    if base is None:
        return Value(None)
    return Value(stat.mean - base.mean, min(stat.n, base.n))


def load_claims(
    tracking_uri: str | None = None,
    table_id: str | None = None,
    tables_dir=None,
    *,
    best: bool = False,
    counter=None,
) -> list[ClaimResult]:
    """The claims that name ``table_id`` (or all), judged on the store's paper-protocol runs."""
    from rkrepro import paper
    from rkrepro.report.build import build_report
    from rkrepro.tracking.reader import fetch_runs

    tables = paper.load_tables(tables_dir)
    wanted = paper.find_table(tables, table_id).id if table_id else None
    chosen = claim_tables(tables, wanted)
    records = fetch_runs(tracking_uri, [t.id for t in chosen]) if chosen else []
    report = build_report(chosen, records, best=best, counter=counter)
    return evaluate_claims(report, claims_of(tables, wanted))


def claim_tables(tables: dict[str, Table], table_id: str | None = None) -> list[Table]:
    """The tables whose cells the claims of ``table_id`` (or of all tables) need, in order."""
    wanted = {name for claim in claims_of(tables, table_id) for name in claim.tables}
    return [table for table in tables.values() if table.id in wanted]


def claims_of(tables: dict[str, Table], table_id: str | None = None) -> list[ClaimSpec]:
    """Every claim (or those that name ``table_id``) whose tables are all loaded."""
    return [
        claim
        for table in tables.values()
        for claim in table.claims
        if (table_id is None or table_id in claim.tables)
        and all(name in tables for name in claim.tables)
    ]


# --------------------------------------------------------------------------------------------
# Text: one line per claim, the pairs that fail, and a flat record for JSON/CSV.

CLAIM_HEADERS = ("Claim", "Section", "Statement", "Paper's numbers", "Reproduction")


def verdict_texts(result: ClaimResult) -> tuple[str, str]:
    """(``holds (6 pairs)``, ``undecided (0 of 6 pairs decided; seeds 0)``)."""
    n = len(result.pairs)
    skipped = f", {result.not_printed} not printed" if result.not_printed else ""
    paper = f"{result.on_paper} ({n} pair{'s' * (n != 1)}{skipped})"
    if all(p.quantity == "params" for p in result.pairs) and result.pairs:
        seeds = "counted parameters"
    else:
        low, high = result.seeds
        if high == 0:
            seeds = "no reproduced runs yet"
        elif low == high:
            seeds = f"{low} seed{'s' * (low != 1)}"
        else:
            seeds = f"{low}-{high} seeds"
    reproduced = f"{result.on_reproduced} ({result.decided} of {n} decided; {seeds})"
    return paper, reproduced


def pair_text(pair: PairResult, reproduced: bool) -> str:
    """``table1 densenet-bc-k12: RKNet-1x8_1x2_1x2 0.72 vs RKNet-8x1_2x1_2x1 0.91 (params)``."""
    values = pair.reproduced if reproduced else pair.paper

    def name(result: CellResult) -> str:
        return result.cell.printed_model + (" (share)" if result.cell.share else "")

    def number(value: Value) -> str:
        return "-" if value.number is None else f"{value.number:.2f}"

    where = f"{pair.left.cell.table} {pair.left.cell.row}"
    if _row(pair.left) != _row(pair.right):
        where += f" vs {pair.right.cell.table} {pair.right.cell.row}"
    return (
        f"{where}: {name(pair.left)} {number(values[0])} vs {name(pair.right)} "
        f"{number(values[1])} ({pair.quantity})"
    )


def claim_record(result: ClaimResult) -> dict:
    claim = result.claim
    low, high = result.seeds
    return {
        "id": claim.id,
        "table": claim.table,
        "tables": list(claim.tables),
        "section": claim.section,
        "text": claim.text,
        "on_paper": result.on_paper,
        "on_reproduced": result.on_reproduced,
        "pairs": len(result.pairs),
        "pairs_not_printed": result.not_printed,
        "pairs_decided": result.decided,
        "seeds_min": low,
        "seeds_max": high,
        "failing_on_paper": [pair_text(p, False) for p in result.failing(False)],
        "failing_on_reproduced": [pair_text(p, True) for p in result.failing(True)],
    }
