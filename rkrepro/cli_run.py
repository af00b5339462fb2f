"""The ``run`` and ``ui`` commands. torch and mlflow are imported inside the command bodies so
that ``rkrepro --help`` stays instant; ``rkrepro.cli`` calls :func:`register`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from rkrepro.errors import RkreproError

_LAUNCH = "Parallel and cluster launches"
_SLURM = "SLURM (--launcher slurm)"
_SHARE_HELP = (
    "--share: only the weight-shared cells; --no-share: only the unshared ones. "
    "Default (--both): what the paper reports."
)


def run_command(
    table: Annotated[str, typer.Argument(help="Table id, e.g. table1.")],
    row: Annotated[str, typer.Option("--row", "-r", help="Row id, e.g. densenet-bc-k12.")],
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
    data_dir: Annotated[
        Optional[Path],
        typer.Option(
            envvar="RKREPRO_DATA_DIR", help="Data sets folder (default: data/).", show_default=False
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda:N.")] = "auto",
    tracking_uri: Annotated[
        Optional[str],
        typer.Option(
            envvar="MLFLOW_TRACKING_URI",
            help="MLflow tracking URI (default: sqlite under runs/, or $RKREPRO_RUNS_DIR).",
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would run (and its status); train nothing.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Start new runs even where a finished one exists.")
    ] = False,
    tables_dir: Annotated[
        Optional[Path],
        typer.Option(
            envvar="RKREPRO_TABLES_DIR", help="Folder of table YAML files.", show_default=False
        ),
    ] = None,
    memory_efficient: Annotated[
        bool,
        typer.Option(help="Checkpoint dense-layer concatenations: less GPU memory, slower."),
    ] = False,
    amp: Annotated[
        bool,
        typer.Option(help="Mixed precision (fp16 + loss scaling) on CUDA; not the paper's fp32."),
    ] = False,
    fast_path: Annotated[
        Optional[str],
        typer.Option(
            envvar="RKREPRO_FAST_PATH",
            help="Overhead removal, on by default: 'off' is the plain eager fp32 loop; or "
            "+NAME/-NAME items, e.g. -bf16,-cuda_graph. Names: channels_last, feature_buffer, "
            "bf16, cudnn_benchmark, fused_sgd, cuda_graph, cpu_malloc, gpu_decode (ImageNet, "
            "off by default). bf16 and gpu_decode (CUDA) are part of a run's identity.",
            show_default=False,
        ),
    ] = None,
    workers: Annotated[int, typer.Option(help="Data loader processes (ImageNet only).")] = min(
        8, os.cpu_count() or 1
    ),
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
            help="slurm: GPUs per task (default: --nproc-per-node, or 1); with more than one "
            "the task runs torchrun.",
            show_default=False,
            rich_help_panel=_SLURM,
        ),
    ] = None,
    time: Annotated[
        int,
        typer.Option(
            "--time",
            help="slurm: time limit per task in minutes; a task that reaches it checkpoints "
            "and is requeued.",
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
            help="slurm: CPUs per task (default 8 per GPU).",
            show_default=False,
            rich_help_panel=_SLURM,
        ),
    ] = None,
) -> None:
    """Train the cells of one table row under the paper's protocol, tracked in MLflow.

    With no --variant it runs the row's original and every variant, with and without weight
    sharing where the paper reports both. Finished runs are skipped, interrupted ones resume.
    """
    from rich.console import Console

    from rkrepro import launch, runner, targets

    if both and share is not None:
        raise RkreproError("use only one of --share, --no-share and --both")
    share_choice = "both" if share is None else ("share" if share else "no-share")
    tables = targets.load_tables(tables_dir)
    cells = _select_cells(tables, table, row, variant or [], share_choice)
    options = runner.RunOptions(
        epochs=epochs,
        train_subset=train_subset,
        memory_efficient=memory_efficient,
        amp=amp,
        force=force,
        data_dir=data_dir or _default_data_dir(),
        device=device,
        tracking_uri=tracking_uri,
        workers=workers,
        sync_bn=sync_bn,
        fast_path=fast_path,
    )
    seed_list = runner.parse_seeds(seeds, seed)
    console = Console(soft_wrap=True) if not sys.stdout.isatty() else Console()
    if launch.in_torchrun():  # one rank of a data-parallel run, whatever --launcher says
        plans = runner.make_plans(cells, seed_list, options)
        _exit_with(_run_rank(options, plans, console))
        return
    launch_plan = _LaunchPlan.from_options(
        launcher, gpus, jobs_per_gpu, cpu_jobs, nproc_per_node, gpus_per_node, device
    )
    plans = runner.make_plans(cells, seed_list, options, launch_plan.device_type(device))
    launch_plan.check_batches(plans)
    run = runner.Runner(options, console)
    if dry_run:
        run.dry_run(plans, parallel=launch_plan.describe())
        return
    if launch_plan.in_process:
        _exit_with(lambda: run.run(plans))
        return
    common = launch.common_args(options, tables_dir)
    if launcher == "slurm":
        settings = launch.SlurmSettings(
            partition=partition,
            account=slurm_account,
            gpus_per_node=launch_plan.gpus_per_node,
            cpus_per_task=cpus_per_task,
            time_min=time,
            cluster=os.environ.get(launch.SUBMITIT_CLUSTER_ENV) or "slurm",
        )
        _submit_slurm(run, plans, common, launch_plan, settings, console)
        return
    _exit_with(lambda: _run_queue(run, plans, common, launch_plan, console))


# Beyond this many simultaneous writers, a local SQLite store is the bottleneck: use a server.
SQLITE_WRITERS_LIMIT = 8


class _LaunchPlan:
    """Where the jobs of a command go, validated before anything starts."""

    def __init__(
        self,
        launcher: str,
        slots: list | None,
        nproc: int,
        gpus_per_node: int = 1,
    ) -> None:
        self.launcher = launcher
        self.slots = slots  # None: train in this process
        self.nproc = nproc
        self.gpus_per_node = gpus_per_node

    @property
    def in_process(self) -> bool:
        return self.launcher == "local" and self.slots is None

    @classmethod
    def from_options(
        cls,
        launcher: str,
        gpus: str | None,
        jobs_per_gpu: int,
        cpu_jobs: int | None,
        nproc: int | None,
        gpus_per_node: int | None,
        device: str,
    ) -> _LaunchPlan:
        from rkrepro import launch

        launcher = launcher.strip().lower()
        if launcher not in launch.LAUNCHERS:
            raise RkreproError(
                f"unknown --launcher {launcher!r}: use one of {', '.join(launch.LAUNCHERS)}"
            )
        if gpus is not None and cpu_jobs is not None:
            raise RkreproError("use either --gpus or --cpu-jobs, not both")
        gpu_list = launch.parse_gpus(gpus) if gpus is not None else None
        if gpu_list is not None and device.strip().lower() == "cpu":
            raise RkreproError("--gpus and --device cpu contradict each other")
        if jobs_per_gpu != 1 and gpu_list is None:
            raise RkreproError("--jobs-per-gpu needs --gpus")
        if nproc is not None and nproc < 1:
            raise RkreproError(f"--nproc-per-node must be >= 1, got {nproc}")
        if launcher == "slurm":
            if gpu_list is not None or cpu_jobs is not None:
                raise RkreproError("--launcher slurm takes --gpus-per-node, not --gpus/--cpu-jobs")
            per_node = gpus_per_node or nproc or 1
            if per_node < 1:
                raise RkreproError(f"--gpus-per-node must be >= 1, got {per_node}")
            return cls("slurm", None, nproc or per_node, per_node)
        if gpus_per_node is not None:
            raise RkreproError("--gpus-per-node is for --launcher slurm (use --gpus here)")
        if gpu_list is not None:
            launch.check_gpus(gpu_list)
        if launcher == "local":
            if nproc not in (None, 1):
                raise RkreproError("--nproc-per-node needs --launcher torchrun")
            if gpu_list is not None:
                return cls("local", launch.gpu_slots(gpu_list, jobs_per_gpu), 1)
            if cpu_jobs is not None:
                return cls("local", launch.cpu_slots(cpu_jobs), 1)
            return cls("local", None, 1)
        # torchrun
        cpu = device.strip().lower() == "cpu" or cpu_jobs is not None
        if gpu_list is not None:
            nproc = nproc or len(gpu_list)
            return cls("torchrun", launch.gpu_slots(gpu_list, 1, nproc), nproc)
        if cpu:
            if nproc is None:
                raise RkreproError("--launcher torchrun on the CPU needs --nproc-per-node N")
            return cls("torchrun", launch.cpu_slots(cpu_jobs or 1, nproc), nproc)
        visible = launch.visible_gpu_count()
        if visible == 0:
            raise RkreproError(
                "--launcher torchrun: no CUDA GPU is visible here (add --device cpu and "
                "--nproc-per-node N for gloo processes on the CPU)"
            )
        nproc = nproc or visible
        if nproc > visible:
            raise RkreproError(f"--nproc-per-node {nproc}: only {visible} GPUs are visible")
        return cls("torchrun", [launch.Slot(f"GPUs 0-{nproc - 1}", {}, "auto")], nproc)

    def device_type(self, device: str) -> str:
        """``cpu`` or ``cuda``: where this launch's runs train (their precision depends on it)."""
        from rkrepro import runner

        if self.launcher == "slurm":  # GPU nodes, unless the jobs are told to use the CPU
            return "cpu" if device.strip().lower() == "cpu" else "cuda"
        if self.slots:
            return "cpu" if all(slot.device == "cpu" for slot in self.slots) else "cuda"
        return runner.planned_device_type(device)

    def check_batches(self, plans: list) -> None:
        """Every run's global batch must split evenly over its processes."""
        from rkrepro import launch

        if self.nproc > 1:
            for plan in plans:
                launch.per_rank_batch(plan.protocol.batch_size, self.nproc, plan.cell.key)

    def describe(self) -> str | None:
        if self.launcher == "slurm":
            return f"one SLURM task per run, {self.gpus_per_node} GPU(s) each"
        if self.slots is None:
            return None
        each = f", {self.nproc} processes each" if self.nproc > 1 else ""
        return f"{len(self.slots)} parallel slots{each}"


def _exit_with(body) -> None:
    """Run ``body`` (returns an exit code); stops by signal exit 128+N, with a hint."""
    from rkrepro.train import Interrupted

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


def _run_rank(options, plans, console):
    """Inside torchrun: this process is one rank; join the group and train with the others."""

    def body() -> int:
        from rkrepro import distributed, runner

        ctx = distributed.init(options.device)
        try:
            return runner.Runner(options, console, dist=ctx).run(plans)
        finally:
            distributed.shutdown()

    return body


def _warn_sqlite(uri: str, writers: int, launcher: str) -> None:
    from rkrepro import tracking

    if tracking.sqlite_path(uri) is None:
        return
    if launcher == "slurm":
        typer.echo(
            f"warning: --launcher slurm with the local SQLite store {uri}: every node must see "
            f"this file on a shared filesystem, and SQLite locking over NFS is unreliable; "
            f"start an MLflow server and pass --tracking-uri http://HOST:PORT (see README)",
            err=True,
        )
    elif writers > SQLITE_WRITERS_LIMIT:
        typer.echo(
            f"warning: {writers} parallel jobs writing to the SQLite store {uri}; beyond "
            f"{SQLITE_WRITERS_LIMIT} writers, lock waits slow them down: use an MLflow server "
            f"(--tracking-uri http://HOST:PORT, see README)",
            err=True,
        )


def _run_queue(run, plans, common, launch_plan: _LaunchPlan, console) -> int:
    """Create the store and experiments once, then one job per plan on the free slots."""
    from rkrepro import launch

    assert launch_plan.slots is not None
    _warn_sqlite(run.uri, len(launch_plan.slots), launch_plan.launcher)
    todo = run.prepare(plans)
    if not todo:
        console.print(f"0 jobs to run: {len(plans)} runs done", highlight=False)
        return 0
    jobs = [launch.job_for(p, common, "auto", launch_plan.nproc) for p in todo]
    console.print(
        f"{len(jobs)} jobs on {launch_plan.describe()}: "
        + ", ".join(s.name for s in launch_plan.slots),
        highlight=False,
        soft_wrap=True,
    )
    code, outcomes = launch.LocalQueue(launch_plan.slots, console).run(jobs)
    launch.summary(outcomes, console)
    ended = sum(o.code == 0 for o in outcomes)
    failed = sum(o.code not in (0, None) for o in outcomes) if code < 128 else 0
    console.print(
        f"{ended}/{len(jobs)} jobs done" + (f", {failed} failed" if failed else ""),
        highlight=False,
    )
    if code >= 128:
        import signal

        raise _stopped(signal.Signals(code - 128))
    return code


def _stopped(signum):
    from rkrepro.train import Interrupted

    return Interrupted(int(signum))


def _submit_slurm(run, plans, common, launch_plan: _LaunchPlan, settings, console) -> None:
    from rkrepro import launch

    executor = launch.make_executor(settings)  # no SLURM here: one line before anything
    _warn_sqlite(run.uri, 0, "slurm")
    todo = run.prepare(plans)
    if not todo:
        console.print(f"nothing to submit: {len(plans)} runs done", highlight=False)
        return
    jobs = [launch.job_for(p, common, "auto", launch_plan.nproc) for p in todo]
    handles = launch.submit_slurm(jobs, executor)
    first = handles[0].job_id.split("_")[0]
    console.print(
        f"submitted {len(handles)} tasks as {settings.cluster} array job {first} "
        f"({launch_plan.describe()}); logs under {handles[0].paths.folder}; "
        f"follow with `rkrepro status` or squeue -j {first}",
        highlight=False,
        soft_wrap=True,
    )
    for job, handle in zip(jobs, handles, strict=True):
        console.print(f"  {handle.job_id}: {job.label}", highlight=False, soft_wrap=True)


def _default_data_dir() -> Path:
    return Path(os.environ.get("RKREPRO_DATA_DIR") or "data")


def _select_cells(tables, table: str, row: str, variants: list[str], share: str):
    """The row's cells for these options ('original' counts as a variant name)."""
    from rkrepro import targets

    cells = targets.resolve_cells(tables, table, row, variants or None, share)
    if not cells:
        raise RkreproError("nothing to run: the original network has no shared form (--share)")
    return cells


def ui_command(
    tracking_uri: Annotated[
        Optional[str],
        typer.Option(envvar="MLFLOW_TRACKING_URI", help="MLflow tracking URI.", show_default=False),
    ] = None,
    port: Annotated[int, typer.Option(help="Port of the web UI.")] = 5000,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
) -> None:
    """Open the MLflow web UI on the runs store (``mlflow ui --backend-store-uri ...``)."""
    from rkrepro import tracking

    uri = tracking.resolve_tracking_uri(tracking_uri)
    if not tracking.is_local_store(uri):
        raise RkreproError(f"{uri} is a tracking server already: open it in a browser")
    if not tracking.store_exists(uri):
        raise RkreproError(f"no runs yet: {uri} does not exist (run `rkrepro run` first)")
    artifacts = (tracking.runs_dir() / "artifacts").as_uri()
    argv = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--default-artifact-root",
        artifacts,
        "--host",
        host,
        "--port",
        str(port),
    ]
    typer.echo(f"MLflow UI on http://{host}:{port} for {uri}", err=True)
    sys.stdout.flush()
    os.execv(sys.executable, argv)


def register(app: typer.Typer) -> None:
    """Add ``run`` and ``ui`` to the rkrepro app."""
    app.command("run")(run_command)
    app.command("ui")(ui_command)
