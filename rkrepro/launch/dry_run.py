"""``rkrepro run --dry-run``: what would run, the status of each plan and its estimated cost
(``rkrepro plan``'s estimate), without training anything; for many rows, the campaign summary
that a launch prints before it starts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rkrepro.campaign import summary
from rkrepro.estimate import cost
from rkrepro.textsafe import clean, rich_text
from rkrepro.tracking.store import shown_uri

if TYPE_CHECKING:
    from rkrepro.campaign.order import Ranking
    from rkrepro.estimate.cost import Estimate
    from rkrepro.estimate.target import Target
    from rkrepro.paper import Cell
    from rkrepro.planning.plan import Plan
    from rkrepro.training.ledger import Ledger


def _print_table(console, rows: list[tuple[str, ...]], cells: list[Cell]) -> None:
    """The plans as a table that fits the terminal: the row id above its models where the
    terminal is narrow; only the status wraps."""
    from rich.table import Table

    from rkrepro import screen

    table = Table(title="rkrepro run --dry-run", header_style="bold", title_justify="left")
    for name in TABLE_COLUMNS:
        table.add_column(name, justify="right" if name in ("hours", "peak GB") else "left")
    previous = None
    for cell, (_, _, params, seeds, status_text, hours, peak) in zip(cells, rows, strict=True):
        if previous is not None and cell.row != previous:
            table.add_section()
        model = cell.printed_model + (" share" if cell.share else "")
        row = rich_text(f"{cell.table}/{cell.row}" if cell.row != previous else "")
        params = params.removesuffix("M")  # millions: the header says so
        # The status holds the store's and the checkpoint's words: text, never markup.
        table.add_row(row, rich_text(model), params, seeds, rich_text(status_text), hours, peak)
        previous = cell.row
    screen.show(console, table, wrap={"status"})


# The table on a terminal (a pipe gets one ``key=value`` line per cell instead).
TABLE_COLUMNS = ("row", "model", "params (M)", "seeds", "status", "hours", "peak GB")


def seeds_text(seeds: list[int]) -> str:
    """``[0]``, ``[0, 1, 2]``: a list, so that seed 0 never reads as "zero seeds"."""
    return "[" + ", ".join(str(seed) for seed in seeds) + "]"


def estimates_for(ledger: Ledger, plans: list[Plan], target: Target) -> dict[str, Estimate]:
    """Each cell's estimate on ``target``, by cell key; a failure is a warning, not a stop (the
    plan is still worth showing, the launch still worth starting)."""
    first = list({p.cell.key: p.cell for p in plans}.values())
    precision = plans[0].precision if plans else "fp32"
    try:
        return {e.cell.key: e for e in cost.estimate(first, target, precision)}
    except Exception as error:  # noqa: BLE001 - the plan is still worth showing
        ledger.console.print(
            f"warning: no cost estimate ({type(error).__name__}: {error})",
            style="red",
            highlight=False,
            markup=False,
        )
        return {}


def campaign_summary(
    ledger: Ledger,
    plans: list[Plan],
    target: Target,
    order: str,
    ranking: Ranking | None = None,
    estimates: dict[str, Estimate] | None = None,
    states: list[str] | None = None,
) -> None:
    """The summary a launch of many rows prints before it starts (read-only on the store)."""
    if estimates is None:
        estimates = estimates_for(ledger, plans, target)
    if states is None:
        ledger.connect(create=False)
        states = [ledger.status(p).state for p in plans]
    precision = plans[0].precision if plans else "fp32"
    where = f"{target.label} in {precision}"
    if estimates:
        where += f" ({cost.describe_sources(list(estimates.values()))})"
    lines = summary.campaign_lines(plans, states, estimates, target.unit, where, order, ranking)
    summary.print_lines(ledger.console, lines)


def show(
    ledger: Ledger,
    plans: list[Plan],
    target: Target,
    parallel: str | None = None,
    data=(),
    order: str | None = None,
    ranking: Ranking | None = None,
    estimates: dict[str, Estimate] | None = None,
) -> None:
    """Print the plans with their status and cost on ``target``; ``parallel`` describes the
    launcher (e.g. "4 parallel slots") for the estimate line; ``data`` the data checks (missing
    data is said before the plans: the run would stop); ``order`` (many rows): the campaign
    summary at the end."""
    from rkrepro.models.analytic import param_counts

    console = ledger.console
    for state in data:
        if state.stops:
            console.print(
                f"data: {state.message}; the run would stop here, before training",
                style="red",
                highlight=False,
                soft_wrap=not console.is_terminal,  # a pipe: one line each
                markup=False,
            )
        elif state.state == "missing":
            console.print(
                f"data: {state.message} when the run starts", highlight=False, markup=False
            )
    ledger.connect(create=False)
    by_cell: dict[str, list[Plan]] = {}
    for plan in plans:
        by_cell.setdefault(plan.cell.key, []).append(plan)
    if estimates is None:
        estimates = estimates_for(ledger, plans, target)
    states: dict[int, str] = {}
    rows = []
    gpu_hours = 0.0
    for cell_plans in by_cell.values():
        cell = cell_plans[0].cell
        paper_count, _ = param_counts(cell.spec)
        statuses = [ledger.status(p) for p in cell_plans]
        states.update({id(p): s.state for p, s in zip(cell_plans, statuses, strict=True)})
        words = [s.state + (f" ({s.detail})" if s.detail else "") for s in statuses]
        if len(set(words)) == 1:  # every seed alike: said once (the seeds are their column)
            status_text = words[0]
        else:
            status_text = "; ".join(
                f"seed {p.seed}: {w}" for p, w in zip(cell_plans, words, strict=True)
            )
        est = estimates.get(cell.key)
        hours = sum(summary.plan_hours(p, est) for p in cell_plans)
        gpu_hours += sum(
            summary.plan_hours(p, est)
            for p, s in zip(cell_plans, statuses, strict=True)
            if s.state != "done"
        )
        rows.append(
            (
                cell.key,
                cell.model,
                f"{paper_count / 1e6:.3f}M",
                seeds_text([p.seed for p in cell_plans]),
                status_text,
                cost.format_hours(hours),
                f"{est.peak_memory_gb:.1f}" if est is not None else "?",
            )
        )
    if console.is_terminal:
        _print_table(console, rows, [plans_[0].cell for plans_ in by_cell.values()])
    else:
        for key, model, params, seeds, status_text, hours, peak in rows:
            console.print(
                clean(
                    f"{key}  model={model}  params={params}  seeds={seeds}  status={status_text}"
                    f"  hours={hours}  peak_gb={peak}"
                ),
                highlight=False,
                soft_wrap=True,
                markup=False,
            )
    if not plans:
        return
    first = plans[0]
    protocols = {
        f"{p.protocol.epochs} epochs, batch {p.protocol.batch_size}, lr {p.protocol.lr:g} "
        f"/{1 / p.protocol.lr_gamma:g} at {list(p.protocol.lr_milestones)}": None
        for p in plans
    }
    console.print(
        f"protocol: {first.protocol_kind}, {' | '.join(protocols)}; precision {first.precision} "
        f"(fast path: {first.fast_path}); tracking: {shown_uri(ledger.uri)}; nothing trained "
        "(dry run)",
        highlight=False,
        soft_wrap=not console.is_terminal,  # a pipe: one line each
        markup=False,
    )
    wirings = sorted({p.readings["resnet_stages"] for p in plans if "resnet_stages" in p.readings})
    others = {k: v for k, v in first.readings.items() if k != "resnet_stages"}
    console.print(
        "readings: "
        + ", ".join(f"{k}={v}" for k, v in others.items())
        + (f", resnet_stages={'/'.join(wirings)} (multi-stage cells)" if wirings else ""),
        highlight=False,
        soft_wrap=not console.is_terminal,  # a pipe: one line each
    )
    line = f"estimate: {cost.format_hours(gpu_hours)} {target.unit}-hours still to train"
    if parallel:
        line += f" ({parallel})"
    sources = cost.describe_sources(list(estimates.values()))
    console.print(
        f"{line} on {target.label}; {sources}; peak memory per GPU at the full batch "
        "(see `rkrepro plan`)" + (f"; {target.note}" if target.note else ""),
        highlight=False,
        soft_wrap=not console.is_terminal,  # a pipe: one line each
        markup=False,
    )
    if order is not None:
        campaign_summary(
            ledger, plans, target, order, ranking, estimates, [states[id(p)] for p in plans]
        )
