"""The ``run`` command: options in, :func:`rkrepro.launch.execute.execute` called, exit code out.

torch and mlflow are imported inside the command body so that ``rkrepro --help`` stays
instant; :mod:`rkrepro.cli.app` calls :func:`register`."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Optional

import typer

from rkrepro.cli.options import DataDir, Precision, TablesDir, TrackingUri
from rkrepro.errors import RkreproError

_LAUNCH = "Parallel and cluster launches"
_SLURM = "SLURM (--launcher slurm)"
_SHARE_HELP = (
    "--share: only the weight-shared cells; --no-share: only the unshared ones. "
    "Default (--both): what the paper reports."
)


def run_command(
    table: Annotated[
        str, typer.Argument(help="Table id, e.g. table1, or all (every table of the paper).")
    ],
    row: Annotated[
        Optional[list[str]],
        typer.Option(
            "--row",
            "-r",
            help="Row id, e.g. densenet-bc-k12 (repeatable). Default: every row of TABLE.",
            show_default=False,
        ),
    ] = None,
    variant: Annotated[
        Optional[list[str]],
        typer.Option("--variant", "-v", help="RKNet variant (repeatable), or 'original'."),
    ] = None,
    share: Annotated[
        Optional[bool], typer.Option("--share/--no-share", help=_SHARE_HELP, show_default=False)
    ] = None,
    both: Annotated[
        bool, typer.Option("--both", help="Shared and unshared cells (the default).")
    ] = False,
    seeds: Annotated[
        Optional[int], typer.Option("--seeds", help="Run seeds 0..N-1.", show_default=False)
    ] = None,
    seed: Annotated[
        Optional[list[int]],
        typer.Option("--seed", help="Run this seed (repeatable). Default: seed 0."),
    ] = None,
    epochs: Annotated[
        Optional[int],
        typer.Option(help="Shorten training to N epochs (milestones scale; tagged shortened)."),
    ] = None,
    train_subset: Annotated[
        Optional[int],
        typer.Option(help="Train on a fixed random subset of N images (tagged shortened)."),
    ] = None,
    data_dir: DataDir = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda:N.")] = "auto",
    tracking_uri: TrackingUri = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would run (and its status); train nothing.")
    ] = False,
    gpu: Annotated[
        Optional[str],
        typer.Option(
            "--gpu",
            help="Estimate the hours for this GPU (e.g. h100, a100-80gb; `rkrepro plan --help`): "
            "with --dry-run or --launcher slurm, where nothing trains on this machine.",
            show_default=False,
        ),
    ] = None,
    order: Annotated[
        str,
        typer.Option(
            "--order",
            help="paper: the paper's order; claims: first the runs that decide the paper's "
            "claims (and judged cells) per GPU-hour, as `rkrepro plan --budget` ranks them.",
        ),
    ] = "paper",
    force: Annotated[
        bool, typer.Option("--force", help="Start new runs even where a finished one exists.")
    ] = False,
    tables_dir: TablesDir = None,
    reading: Annotated[
        Optional[list[str]],
        typer.Option(
            "--reading",
            help="Train under another reading of the paper, NAME=VALUE (repeatable), e.g. "
            "resnet_stages=lincomb; `rkrepro show` lists a row's readings. Part of the run's "
            "identity.",
            show_default=False,
        ),
    ] = None,
    memory_efficient: Annotated[
        bool,
        typer.Option(help="Checkpoint dense-layer concatenations: less GPU memory, slower."),
    ] = False,
    precision: Precision = "fp32",
    fast_path: Annotated[
        Optional[str],
        typer.Option(
            envvar="RKREPRO_FAST_PATH",
            help="Overhead removal that keeps the numbers, on by default: 'off' is the plain "
            "eager loop; or +NAME/-NAME items, e.g. -cuda_graph. Names: channels_last, "
            "feature_buffer, cudnn_benchmark, fused_sgd, cuda_graph, cpu_malloc, gpu_decode "
            "(ImageNet, off by default; other pixels, so part of a run's identity).",
            show_default=False,
        ),
    ] = None,
    workers: Annotated[
        int, typer.Option(min=0, help="Data loader processes (ImageNet only).")
    ] = min(8, os.cpu_count() or 1),
    launcher: Annotated[
        str,
        typer.Option(
            help="local (this machine; in parallel with --gpus/--cpu-jobs), torchrun "
            "(data-parallel over --nproc-per-node GPUs) or slurm (a submitit array job).",
            rich_help_panel=_LAUNCH,
        ),
    ] = "local",
    gpus: Annotated[
        Optional[str],
        typer.Option(
            help="Run jobs in parallel on these GPUs, e.g. 0,1,2,3 (one job per GPU; each "
            "pinned with CUDA_VISIBLE_DEVICES).",
            show_default=False,
            rich_help_panel=_LAUNCH,
        ),
    ] = None,
    jobs_per_gpu: Annotated[
        int, typer.Option(help="Jobs sharing each GPU of --gpus.", rich_help_panel=_LAUNCH)
    ] = 1,
    cpu_jobs: Annotated[
        Optional[int],
        typer.Option(
            help="Run N jobs in parallel on the CPU (no GPU needed).",
            show_default=False,
            rich_help_panel=_LAUNCH,
        ),
    ] = None,
    nproc_per_node: Annotated[
        Optional[int],
        typer.Option(
            help="torchrun: processes (GPUs) per run; the global batch is split over them. "
            "Default: the GPUs of --gpus, or every visible GPU.",
            show_default=False,
            rich_help_panel=_LAUNCH,
        ),
    ] = None,
    sync_bn: Annotated[
        bool,
        typer.Option(
            "--sync-bn",
            help="torchrun: BatchNorm statistics over the global batch (default: per GPU, as "
            "the paper's multi-GPU Torch training).",
            rich_help_panel=_LAUNCH,
        ),
    ] = False,
    partition: Annotated[
        Optional[str],
        typer.Option(help="slurm: partition.", show_default=False, rich_help_panel=_SLURM),
    ] = None,
    gpus_per_node: Annotated[
        Optional[int],
        typer.Option(
            help="slurm: GPUs per task (default: --nproc-per-node, or 1; 0 with --device cpu): "
            "0 asks for no GPU; with more than one the task runs torchrun.",
            show_default=False,
            rich_help_panel=_SLURM,
        ),
    ] = None,
    time: Annotated[
        int,
        typer.Option(
            "--time",
            help="slurm: time limit per task in minutes; a task that reaches it checkpoints "
            "and is requeued (not when it made no progress since it started).",
            rich_help_panel=_SLURM,
        ),
    ] = 24 * 60,
    slurm_account: Annotated[
        Optional[str],
        typer.Option(help="slurm: account.", show_default=False, rich_help_panel=_SLURM),
    ] = None,
    cpus_per_task: Annotated[
        Optional[int],
        typer.Option(
            help="slurm: CPUs per task (default: 8 per GPU, or a whole node for a CPU job; "
            "never more than the partition's nodes have).",
            show_default=False,
            rich_help_panel=_SLURM,
        ),
    ] = None,
    signal_delay: Annotated[
        Optional[int],
        typer.Option(
            help="slurm: seconds before the time limit that a task is told to checkpoint "
            "(default: a tenth of --time, 15 to 180 s).",
            show_default=False,
            rich_help_panel=_SLURM,
        ),
    ] = None,
    max_parallel: Annotated[
        Optional[int],
        typer.Option(
            help="slurm: at most N tasks of the array job running at once (a shared queue).",
            show_default=False,
            rich_help_panel=_SLURM,
        ),
    ] = None,
) -> None:
    """Train the cells of a table row, of several rows, of a table or of the whole paper
    (`all`) under the paper's protocol, tracked in MLflow.

    With no --variant it runs each row's original and every variant, with and without weight
    sharing where the paper reports both. Several rows print a campaign summary first.
    Finished runs are skipped, interrupted ones resume.
    """
    from rich.console import Console

    from rkrepro import paper
    from rkrepro.campaign.summary import check_order
    from rkrepro.launch import execute, placement, slurm
    from rkrepro.planning import devices
    from rkrepro.planning import options as run_options

    if both and share is not None:
        raise RkreproError("use only one of --share, --no-share and --both")
    devices.check_device_name(device)  # before planning: a dry run must not accept tpu:7
    order = check_order(order)
    if max_parallel is not None and max_parallel < 1:
        raise RkreproError(f"--max-parallel must be >= 1, got {max_parallel}")
    if max_parallel is not None and launcher.strip().lower() != "slurm":
        raise RkreproError(
            "--max-parallel is for --launcher slurm (the local queue runs one job per slot)"
        )
    share_choice = "both" if share is None else ("share" if share else "no-share")
    tables = paper.load_tables(tables_dir)
    cells = paper.campaign_cells(tables, table, row, variant or None, share_choice)
    if not cells:
        raise RkreproError("nothing to run: the original network has no shared form (--share)")
    values = locals()
    options = run_options.RunOptions.from_values(values)
    where = placement.LaunchOptions(
        **{k: values[k] for k in placement.LaunchOptions.__dataclass_fields__}
    )
    settings = slurm.SlurmSettings(
        partition=partition,
        account=slurm_account,
        cpus_per_task=cpus_per_task,
        time_min=time,
        signal_delay_s=signal_delay,
        cluster=os.environ.get(slurm.SUBMITIT_CLUSTER_ENV) or "slurm",
        max_parallel=max_parallel,
    )
    console = Console(soft_wrap=True) if not sys.stdout.isatty() else Console()
    seed_list = run_options.parse_seeds(seeds, seed)
    _exit_with(
        lambda: execute.execute(
            cells,
            seed_list,
            options,
            where,
            console,
            dry_run=dry_run,
            slurm=settings,
            gpu=gpu,
            order=order,
            tables=tables,
        )
    )


def _exit_with(body) -> None:
    """Run ``body`` (returns an exit code); stops by signal exit 128+N, with a hint."""
    from rkrepro.training.signals import Interrupted

    try:
        code = body()
    except Interrupted as stop:
        typer.echo(f"Stopped by {stop}; rerun the same command to resume.", err=True)
        raise typer.Exit(stop.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("Interrupted; rerun the same command to resume.", err=True)
        raise typer.Exit(130) from None
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add ``run`` to the rkrepro app."""
    app.command("run")(run_command)
