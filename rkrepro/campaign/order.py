"""Which runs to do first: the paper's claims decided as early as the GPU-hours allow.

A run is one seed of a cell (one seed decides; more seeds tighten a number but decide nothing
new). What a run is worth:
- it lets its cell be *judged* against the paper (the cell has a printed error);
- it helps *decide* a claim: a claim on errors is decided once every cell of its pairs has a
  reproduced number (the cells of both sides, and for an error gap the rows' originals).

The ranking is greedy over *bundles*: each step considers, for every undecided claim, the runs
it still needs, and every single run; it takes the bundle with the most value per GPU-hour that
fits in the budget left (ties: the cheaper, then the paper's order), and repeats. The value is
:data:`CLAIM_WEIGHT` per claim it completes plus one per cell it lets be judged: a claim is one
of the paper's conclusions and rests on many cells, so the claims are decided first unless
they are far dearer per hour. A claim needing ten cheap runs thus competes as a whole with one
expensive run. Runs that decide nothing and judge nothing come last, in the paper's order.
Parameter claims are decided by counting and need no run.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

# A completed claim counts as much as this many judged cells.
CLAIM_WEIGHT = 10

if TYPE_CHECKING:
    from rkrepro.paper import Cell, Table
    from rkrepro.report.build import Report
    from rkrepro.report.claims import ClaimResult


@dataclass(frozen=True)
class Need:
    """An undecided claim and the cells (keys) that still need a reproduced number for it."""

    claim: str
    cells: frozenset[str]


@dataclass(frozen=True)
class Step:
    """Runs added together, their GPU-hours, and what they decide once done."""

    cells: tuple[Cell, ...]
    hours: float
    claims: tuple[str, ...] = ()  # claims this step completes
    judged: int = 0  # cells it lets be judged against the paper


@dataclass
class Ranking:
    """The ranked steps, and the claims no run of the selection can decide."""

    steps: list[Step] = field(default_factory=list)
    out_of_reach: tuple[str, ...] = ()  # need cells outside the selection
    over_budget: tuple[str, ...] = ()  # reachable, but not within the budget

    @property
    def hours(self) -> float:
        return sum(step.hours for step in self.steps)

    @property
    def cells(self) -> list[Cell]:
        return [cell for step in self.steps for cell in step.cells]

    @property
    def decided(self) -> list[str]:
        return [claim for step in self.steps for claim in step.claims]


def needs(report: Report, results: Iterable[ClaimResult]) -> tuple[list[Need], set[str]]:
    """(every claim still undecided on the reproduction, with the cells it needs; the keys of
    the report's cells that have a reproduced number already)."""
    cells = [r for t in report.tables for r in t.results]
    reproduced = {r.cell.key for r in cells if r.paper.error is not None}
    originals = {(r.cell.table, r.cell.row): r for r in cells if r.cell.model == "original"}
    out = []
    for result in results:
        if result.on_reproduced != "undecided":
            continue
        missing: set[str] = set()
        for pair in result.pairs:
            if pair.on_reproduced is not None or pair.quantity == "params":
                continue
            sides = [pair.left, pair.right]
            if pair.quantity == "gap":
                sides += [originals[(s.cell.table, s.cell.row)] for s in sides]
            missing |= {s.cell.key for s in sides if s.paper.error is None}
        out.append(Need(result.claim.id, frozenset(missing)))
    return out, reproduced


def rank(
    cells: Sequence[Cell],
    hours: dict[str, float],
    claim_needs: Sequence[Need],
    reproduced: Iterable[str] = (),
    budget: float | None = None,
) -> Ranking:
    """The runs of ``cells`` (those without a reproduced number) in the order that decides the
    most per GPU-hour (see the module docstring); with ``budget``, only what fits in it."""
    done = set(reproduced)
    order = {cell.key: i for i, cell in enumerate(cells)}
    todo = {cell.key: cell for cell in cells if cell.key not in done}
    judged = {key for key, cell in todo.items() if cell.reported_error is not None}
    open_needs = [n for n in claim_needs if n.cells - done]
    reachable = [n for n in open_needs if n.cells - done <= set(todo)]
    ranking = Ranking(out_of_reach=tuple(n.claim for n in open_needs if n not in reachable))
    left = float("inf") if budget is None else budget
    chosen: set[str] = set()
    while True:
        best = None
        bundles = [n.cells - done - chosen for n in reachable] + [{k} for k in todo]
        for bundle in bundles:
            bundle = bundle - chosen
            if not bundle:
                continue
            cost = sum(hours[k] for k in bundle)
            if cost > left:
                continue
            completes = [
                n.claim
                for n in reachable
                if (n.cells - done - chosen) and n.cells - done - chosen <= bundle
            ]
            gain = CLAIM_WEIGHT * len(completes) + len(bundle & judged)
            if gain == 0:
                continue
            score = (gain / max(cost, 1e-9), -cost, -min(order[k] for k in bundle))
            if best is None or score > best[0]:
                best = (score, bundle, completes, cost)
        if best is None:
            break
        _, bundle, completes, cost = best
        keys = sorted(bundle, key=order.__getitem__)
        ranking.steps.append(
            Step(tuple(todo[k] for k in keys), cost, tuple(completes), len(bundle & judged))
        )
        chosen |= bundle
        left -= cost
    decided = set(ranking.decided)
    ranking.over_budget = tuple(n.claim for n in reachable if n.claim not in decided)
    if budget is None:  # every run has its place: the rest in the paper's order
        rest = [todo[k] for k in sorted(set(todo) - chosen, key=order.__getitem__)]
        ranking.steps += [Step((cell,), hours[cell.key]) for cell in rest]
    return ranking


def claims_ranking(
    tables: dict[str, Table],
    cells: Sequence[Cell],
    hours: dict[str, float],
    tracking_uri: str | None,
    budget: float | None = None,
) -> Ranking:
    """:func:`rank` of ``cells`` against every claim of ``tables``, with what the store has
    reproduced already (read only; a store that does not exist holds nothing)."""
    from rkrepro.models.analytic import param_counts
    from rkrepro.report.build import build_report
    from rkrepro.report.claims import claims_of, evaluate_claims
    from rkrepro.tracking.reader import fetch_runs

    chosen = list(tables.values())
    records = fetch_runs(tracking_uri, [t.id for t in chosen])
    report = build_report(chosen, records, counter=param_counts)
    claim_needs, reproduced = needs(report, evaluate_claims(report, claims_of(tables)))
    return rank(cells, hours, claim_needs, reproduced, budget)
