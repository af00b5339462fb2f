"""What a launch of many rows will do, said once before it starts (and by ``--dry-run``): cells x
seeds, runs done and left, device-hours still to train under the estimate, per table and in
all, and the order the runs go in. Also the ``plan --budget`` listing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rkrepro.campaign.order import CLAIM_WEIGHT
from rkrepro.estimate.cost import format_hours, share_of_paper

if TYPE_CHECKING:
    from rich.console import Console

    from rkrepro.campaign.order import Ranking
    from rkrepro.estimate.cost import Estimate
    from rkrepro.planning.plan import Plan

ORDERS = ("paper", "claims")


def check_order(order: str) -> str:
    from rkrepro.errors import RkreproError

    name = order.strip().lower()
    if name not in ORDERS:
        raise RkreproError(f"--order {ascii(order)[1:-1][:20]}: use paper or claims")
    return name


def plan_hours(plan: Plan, estimate: Estimate | None) -> float:
    """Device-hours of one plan under ``estimate`` (NaN without one): a shortened run costs
    its share of the paper's protocol."""
    if estimate is None:
        return float("nan")
    share = share_of_paper(
        plan.protocol.epochs, plan.cell.protocol.epochs, plan.train_subset, plan.protocol.dataset
    )
    return share * estimate.gpu_hours


@dataclass(frozen=True)
class TableLine:
    table: str
    rows: int
    cells: int
    runs: int
    done: int
    resume: int
    hours_left: float


def campaign_lines(
    plans: Sequence[Plan],
    states: Sequence[str],
    estimates: dict[str, Estimate],
    unit: str,
    where: str,
    order: str,
    ranking: Ranking | None = None,
) -> list[str]:
    """The summary, one line each: the whole campaign, one per table, what is left and the
    order. ``states[i]`` is ``done``, ``resume`` or ``new`` for ``plans[i]``."""
    tables: dict[str, list[tuple[Plan, str]]] = {}
    for plan, state in zip(plans, states, strict=True):
        tables.setdefault(plan.cell.table, []).append((plan, state))
    lines = []
    total = TableLine("all", 0, 0, 0, 0, 0, 0.0)
    per_table = []
    for table, items in tables.items():
        left = sum(
            plan_hours(p, estimates.get(p.cell.key)) for p, state in items if state != "done"
        )
        line = TableLine(
            table,
            len({p.cell.row for p, _ in items}),
            len({p.cell.key for p, _ in items}),
            len(items),
            sum(state == "done" for _, state in items),
            sum(state == "resume" for _, state in items),
            left,
        )
        per_table.append(line)
        total = TableLine(
            "all",
            total.rows + line.rows,
            total.cells + line.cells,
            total.runs + line.runs,
            total.done + line.done,
            total.resume + line.resume,
            total.hours_left + line.hours_left,
        )
    seeds = sorted({p.seed for p in plans})
    lines.append(
        f"campaign: {len(per_table)} table(s), {total.rows} rows, {total.cells} cells x "
        f"{len(seeds)} seed(s) = {total.runs} runs: {total.done} done, {total.resume} to resume, "
        f"{total.runs - total.done - total.resume} new"
    )
    for line in per_table:
        lines.append(
            f"  {line.table}: {line.rows} rows, {line.cells} cells, {line.runs} runs, "
            f"{line.done} done; {format_hours(line.hours_left)} {unit}-hours to train"
        )
    lines.append(
        f"still to train: {format_hours(total.hours_left)} {unit}-hours on {where}; "
        + order_text(order, ranking)
    )
    return lines


def order_text(order: str, ranking: Ranking | None) -> str:
    if order != "claims":
        return "order: the paper's (--order claims decides the paper's claims first)"
    decided = ranking.decided if ranking is not None else []
    head = "order: claims first (`rkrepro plan --budget HOURS` shows the ranking)"
    return head + (f"; decides in turn: {', '.join(decided)}" if decided else "")


def order_plans(plans: list[Plan], ranking: Ranking) -> list[Plan]:
    """``plans`` in the ranking's order of their cells (all seeds of a cell together); cells the
    ranking leaves out (reproduced already) go first: they are skipped or resumed at once."""
    rank = {cell.key: i for i, cell in enumerate(ranking.cells)}
    return sorted(plans, key=lambda p: rank.get(p.cell.key, -1))


def print_lines(console: Console, lines: Sequence[str]) -> None:
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True, markup=False)


def budget_lines(ranking: Ranking, budget: float, unit: str, where: str) -> list[str]:
    """``plan --budget``: the runs in order with cumulative hours, then what they decide."""
    lines = [
        f"Within {format_hours(budget)} {unit}-hours on {where}, one seed per cell, in this order "
        f"(each step: the runs worth most per hour, {CLAIM_WEIGHT} per claim they decide and 1 "
        "per cell they let be judged):"
    ]
    spent = 0.0
    for number, step in enumerate(ranking.steps, start=1):
        spent += step.hours
        gains = []
        if step.claims:
            gains.append("decides " + ", ".join(step.claims))
        if step.judged:
            gains.append(f"{step.judged} cell{'s' * (step.judged != 1)} judged")
        lines.append(
            f"{number:3}. {format_hours(step.hours):>9} h  (total {format_hours(spent)})  "
            + "; ".join(gains)
        )
        lines += [f"       {cell.key}" for cell in step.cells]
    runs = sum(len(step.cells) for step in ranking.steps)
    decided = ranking.decided
    lines.append(
        f"{runs} runs, {format_hours(ranking.hours)} {unit}-hours; claims decided then: "
        + (", ".join(decided) if decided else "none")
    )
    if ranking.over_budget:
        lines.append("not within the budget: " + ", ".join(ranking.over_budget))
    if ranking.out_of_reach:
        lines.append("need cells outside this selection: " + ", ".join(ranking.out_of_reach))
    return lines
