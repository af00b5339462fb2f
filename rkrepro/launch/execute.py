"""``rkrepro run``: plan, check the launch, then train here or hand the jobs to a launcher
(the local queue, torchrun or SLURM). Every job is an ordinary ``rkrepro run`` of one cell and
one seed, so a job skips, resumes and tracks exactly as one run on one GPU does.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from rich.console import Console

from rkrepro.launch.placement import LaunchOptions, LaunchPlan
from rkrepro.planning.devices import in_torchrun
from rkrepro.planning.options import RunOptions
from rkrepro.planning.plan import Plan, make_plans
from rkrepro.training.ledger import Ledger

if TYPE_CHECKING:
    from rkrepro.estimate.target import Target
    from rkrepro.launch.slurm import SlurmSettings
    from rkrepro.paper import Cell, Table


def execute(
    cells: list[Cell],
    seeds: list[int],
    options: RunOptions,
    where: LaunchOptions,
    console: Console,
    *,
    dry_run: bool = False,
    slurm: SlurmSettings | None = None,
    gpu: str | None = None,
    order: str = "paper",
    tables: dict[str, Table] | None = None,
) -> int:
    """``rkrepro run``: plan, check the launch, then train here or hand jobs to a launcher.

    Cells of several rows are a *campaign*: a summary (runs done and left, hours to train,
    order) is printed before anything starts. ``gpu`` names the GPU the estimates are for when
    nothing trains here (a dry run, SLURM); ``order="claims"`` runs first what decides the
    paper's claims (``tables``: where the claims are).

    Returns the exit code; a stop by signal raises
    :class:`rkrepro.training.signals.Interrupted`.
    """
    if in_torchrun():  # one process of a data-parallel run, whatever --launcher says
        return _train_in_group(cells, seeds, options, console)
    launch = LaunchPlan.check(where, options.device)
    device_type = launch.device_type(options.device)
    cpu_asked = (
        options.device.strip().lower() == "cpu"
        or where.cpu_jobs is not None
        or (launch.launcher == "slurm" and launch.gpus_per_node == 0)
    )
    if gpu is not None and not cpu_asked:
        device_type = "cuda"  # the runs are planned for that GPU, wherever this command runs
    trains_here = launch.launcher != "slurm" or (slurm is not None and slurm.cluster == "local")
    campaign = len({(cell.table, cell.row) for cell in cells}) > 1
    target = None
    if gpu is not None or dry_run or campaign or order == "claims":
        from rkrepro.estimate import target as targets

        target = targets.for_run(gpu, device_type, cpu_asked, trains_here, dry_run)
    plans = make_plans(cells, seeds, options, device_type, launch.nproc)
    from rkrepro.data import check as data_check

    # Before the store is opened: a run that cannot read its data leaves nothing behind.
    data_states = data_check.check([p.protocol.dataset for p in plans], options.data_dir)
    if not dry_run and launch.launcher != "slurm":  # a SLURM node may see other paths
        ready_data(data_states, options.data_dir, console)
    ledger = Ledger(options.tracking_uri, options.force, console)
    ranking = estimates = None
    if order == "claims":
        assert target is not None and tables is not None
        plans, ranking, estimates = _claims_order(ledger, plans, target, tables)
    if dry_run:
        from rkrepro.launch import dry_run as dry

        assert target is not None
        dry.show(
            ledger,
            plans,
            target,
            parallel=launch.describe(),
            data=data_states,
            order=order if campaign or ranking else None,
            ranking=ranking,
            estimates=estimates,
        )
        return 0
    warn_cpu_protocol(plans, device_type, console)
    if campaign or ranking is not None:
        from rkrepro.launch.dry_run import campaign_summary

        assert target is not None
        campaign_summary(ledger, plans, target, order, ranking, estimates)
    if launch.in_process:
        from rkrepro.planning.devices import resolve_device
        from rkrepro.training.session import Session
        from rkrepro.training.world import World

        world = World(resolve_device(options.device))
        return Session(ledger, world, options.data_dir, options.workers).run(plans)
    if launch.launcher == "slurm":
        from rkrepro.launch import slurm as slurm_launch

        settings = replace(
            slurm or slurm_launch.SlurmSettings(), gpus_per_node=launch.gpus_per_node
        )
        slurm_launch.submit(ledger, plans, settings, launch.nproc, options.device)
        return 0
    from rkrepro.launch.local_queue import run_queue

    return run_queue(ledger, plans, launch)


def _claims_order(ledger: Ledger, plans: list[Plan], target: Target, tables: dict[str, Table]):
    """The plans in the order that decides the paper's claims first (all seeds of a cell
    together), and the ranking behind it."""
    from rkrepro.campaign import summary
    from rkrepro.campaign.order import claims_ranking
    from rkrepro.launch.dry_run import estimates_for

    estimates = estimates_for(ledger, plans, target)
    cells = list({p.cell.key: p.cell for p in plans}.values())
    hours = {cell.key: estimates[cell.key].gpu_hours if estimates else 1.0 for cell in cells}
    ranking = claims_ranking(tables, cells, hours, ledger.uri)
    return summary.order_plans(plans, ranking), ranking, estimates


def ready_data(states, data_dir, console: Console, download: bool = True) -> None:
    """Before any store or lock: stop (one line) on data a run cannot read or download, and
    with ``download``, download what is missing now, once, rather than in each job."""
    from rkrepro.errors import DataError

    stopping = [state for state in states if state.stops]
    if stopping:
        raise DataError(stopping[0].message)
    for state in states if download else ():
        if state.state == "missing":
            from rkrepro.data import cifar

            console.print(f"{state.message}: downloading it now", highlight=False, markup=False)
            cifar.load_cifar(state.dataset, data_dir)


def warn_cpu_protocol(plans: list[Plan], device_type: str, console: Console) -> None:
    """Before a paper-protocol run on the CPU: it takes days to weeks per cell there."""
    full = [p for p in plans if not p.shortened]
    chosen = {(p.options.device or "auto").strip().lower() for p in plans}
    if device_type != "cpu" or not full or not chosen <= {"auto", "cpu"}:
        return  # a bad --device is refused later, with its own one line
    epochs = full[0].protocol.epochs
    console.print(
        f"warning: {len(full)} paper-protocol run{'s' * (len(full) != 1)} ({epochs} epochs) "
        "on the CPU: one 300-epoch DenseNet-BC-100 cell is ~150 CPU-hours (`rkrepro plan "
        "--device cpu` estimates yours); for a smoke run use --epochs 2 --train-subset 512",
        style="yellow",
        highlight=False,
        markup=False,
        soft_wrap=not console.is_terminal,  # a terminal wraps it between words
    )


def _train_in_group(
    cells: list[Cell], seeds: list[int], options: RunOptions, console: Console
) -> int:
    """Inside torchrun: this process joins the group and trains every plan with the others;
    rank 0 alone speaks."""
    from rkrepro.data import check as data_check
    from rkrepro.training import distributed
    from rkrepro.training.session import Session

    datasets = list(dict.fromkeys(cell.protocol.dataset for cell in cells))
    # Each process only checks: the command that started the group has downloaded what was
    # missing (several processes downloading into one folder would race).
    states = data_check.check(datasets, options.data_dir)
    ready_data(states, options.data_dir, console, download=False)
    world = distributed.join(options.device)
    try:
        plans = make_plans(cells, seeds, options, world.device.type, world.size)
        quiet = console if world.is_main else Console(quiet=True)
        ledger = Ledger(options.tracking_uri, options.force, quiet)
        return Session(ledger, world, options.data_dir, options.workers).run(plans)
    finally:
        world.close()
