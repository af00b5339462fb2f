"""``rkrepro run --dry-run``: what would run, the status of each plan and its estimated cost
(``rkrepro plan``'s estimate), without training anything."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rkrepro import estimate as cost

if TYPE_CHECKING:
    from rkrepro.paper import Cell
    from rkrepro.planning.plan import Plan
    from rkrepro.training.ledger import Ledger


def _print_table(console, rows: list[tuple[str, ...]], cells: list[Cell]) -> None:
    """The plans as a table that fits the terminal: the row id above its models where the
    terminal is narrow; only the status wraps."""
    from rich.table import Table
    from rich.text import Text

    from rkrepro import screen

    table = Table(title="rkrepro run --dry-run", header_style="bold", title_justify="left")
    for name in TABLE_COLUMNS:
        table.add_column(name, justify="right" if name in ("hours", "peak GB") else "left")
    previous = None
    for cell, (_, _, params, seeds, status_text, hours, peak) in zip(cells, rows, strict=True):
        if previous is not None and cell.row != previous:
            table.add_section()
        model = cell.printed_model + (" share" if cell.share else "")
        row = Text(f"{cell.table}/{cell.row}" if cell.row != previous else "")
        params = params.removesuffix("M")  # millions: the header says so
        table.add_row(row, Text(model), params, seeds, Text(status_text), hours, peak)
        previous = cell.row
    screen.show(console, table, wrap={"status"})


# The table on a terminal (a pipe gets one ``key=value`` line per cell instead).
TABLE_COLUMNS = ("row", "model", "params (M)", "seeds", "status", "hours", "peak GB")


def _share(plan: Plan) -> float:
    return cost.share_of_paper(
        plan.protocol.epochs, plan.cell.protocol.epochs, plan.train_subset, plan.protocol.dataset
    )


def seeds_text(seeds: list[int]) -> str:
    """``[0]``, ``[0, 1, 2]``: a list, so that seed 0 never reads as "zero seeds"."""
    return "[" + ", ".join(str(seed) for seed in seeds) + "]"


def show(
    ledger: Ledger,
    plans: list[Plan],
    parallel: str | None = None,
    data=(),
    device_type: str = "cuda",
) -> None:
    """Print the plans with their status and cost; ``parallel`` describes the launcher (e.g.
    "4 parallel slots") for the estimate line; ``data`` the data checks (missing data is said
    before the plans: the run would stop)."""
    from rkrepro.models import spec_param_counts

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
    try:
        # On the CPU, a short probe there: FLOPs at a GPU's rate would promise GPU-hours.
        probe = "cpu" if device_type == "cpu" else None
        first = [ps[0].cell for ps in by_cell.values()]
        precision = plans[0].precision if plans else "fp32"
        estimates = {
            e.cell.key: e for e in cost.estimate(first, probe_device=probe, precision=precision)
        }
    except Exception as error:  # noqa: BLE001 - the plan is still worth showing
        console.print(
            f"warning: no cost estimate ({type(error).__name__}: {error})",
            style="red",
            highlight=False,
        )
        estimates = {}
    rows = []
    gpu_hours = 0.0
    for cell_plans in by_cell.values():
        cell = cell_plans[0].cell
        paper_count, _ = spec_param_counts(cell.spec)
        statuses = [ledger.status(p) for p in cell_plans]
        words = [s.state + (f" ({s.detail})" if s.detail else "") for s in statuses]
        if len(set(words)) == 1:  # every seed alike: said once (the seeds are their column)
            status_text = words[0]
        else:
            status_text = "; ".join(
                f"seed {p.seed}: {w}" for p, w in zip(cell_plans, words, strict=True)
            )
        est = estimates.get(cell.key)
        est_hours = est.gpu_hours if est is not None else float("nan")
        hours = sum(_share(p) * est_hours for p in cell_plans)
        gpu_hours += sum(
            _share(p) * est_hours
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
                f"{key}  model={model}  params={params}  seeds={seeds}  status={status_text}"
                f"  hours={hours}  peak_gb={peak}",
                highlight=False,
                soft_wrap=True,
            )
    if not plans:
        return
    first = plans[0]
    protocol = first.protocol
    console.print(
        f"protocol: {first.protocol_kind}, {protocol.epochs} epochs, batch "
        f"{protocol.batch_size}, lr {protocol.lr:g} /{1 / protocol.lr_gamma:g} at "
        f"{list(protocol.lr_milestones)}; precision {first.precision} (fast path: "
        f"{first.fast_path}); tracking: {ledger.uri}; nothing trained (dry run)",
        highlight=False,
        soft_wrap=not console.is_terminal,  # a pipe: one line each
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
    sources = sorted({e.source for e in estimates.values()})
    unit = "CPU" if device_type == "cpu" else "GPU"
    line = f"estimate: {cost.format_hours(gpu_hours)} {unit}-hours still to train"
    if parallel:
        line += f" ({parallel})"
    console.print(
        f"{line}; {'; '.join(sources)}; peak memory per GPU at the full batch (see `rkrepro plan`)",
        highlight=False,
        soft_wrap=not console.is_terminal,  # a pipe: one line each
    )
