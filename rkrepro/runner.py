"""``rkrepro run``: cells x seeds -> planned runs -> skip, resume or train each, tracked in MLflow.

A *plan* is one (cell, seed) with its resolved configuration; the configuration's hash names
its checkpoint folder and tags its MLflow run, so reruns find their own work and different
configurations (a shortened protocol, --memory-efficient) never mix.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from rich.console import Console

from rkrepro import schema, tracking
from rkrepro.errors import DataError, RkreproError
from rkrepro.fast_path import FastPath, run_precision
from rkrepro.spec import Protocol

if TYPE_CHECKING:
    from rkrepro.targets import Cell
    from rkrepro.train import EpochRecord


# --------------------------------------------------------------------------------------------
# Plans and their configuration.


def scale_milestones(
    milestones: tuple[int, ...], paper_epochs: int, epochs: int
) -> tuple[int, ...]:
    """Milestones of a shortened run: the same fractions of training, rounded half up."""
    if epochs == paper_epochs:
        return tuple(milestones)
    scaled = (max(1, int(m * epochs / paper_epochs + 0.5)) for m in milestones)
    return tuple(sorted({m for m in scaled if m <= epochs}))


@dataclass(frozen=True)
class RunOptions:
    """What the command line asks for beyond the cells."""

    epochs: int | None = None
    train_subset: int | None = None
    memory_efficient: bool = False
    amp: bool = False
    force: bool = False
    data_dir: Path = field(default_factory=lambda: Path("data"))
    device: str = "auto"
    tracking_uri: str | None = None
    workers: int = 8
    sync_bn: bool = False
    fast_path: str | None = None  # --fast-path; None: $RKREPRO_FAST_PATH, else the defaults

    def fast(self) -> FastPath:
        """The requested fast path (before :meth:`FastPath.for_device`)."""
        return FastPath.from_env() if self.fast_path is None else FastPath.parse(self.fast_path)


def planned_device_type(device: str) -> str:
    """``cpu`` or ``cuda``: where ``--device`` will put the runs (``auto``: a GPU if any)."""
    name = (device or "auto").strip().lower()
    if name == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if name.startswith("cuda") else "cpu"


@dataclass(frozen=True)
class Plan:
    cell: Cell
    seed: int
    protocol: Protocol  # effective: epochs and milestones of a shortened run
    shortened: bool
    train_subset: int | None
    memory_efficient: bool
    amp: bool
    sync_bn: bool = False
    precision: str = schema.PRECISION_FP32  # see rkrepro.fast_path
    fast_path: str = "off"  # the switches in effect on the planned device (FastPath.describe)
    gpu_decode: bool = False  # ImageNet JPEGs decoded by nvJPEG: other pixels than PIL's

    @property
    def label(self) -> str:
        return f"{self.cell.key} seed {self.seed}"

    def identity(self) -> dict[str, Any]:
        """Everything that changes what is trained; the hash of this names the run."""
        p = self.protocol
        return {
            "cell": self.cell.key,
            "spec": asdict(self.cell.spec),
            "seed": self.seed,
            "protocol": {
                "dataset": p.dataset,
                "augmentation": p.augmentation,
                "batch_size": p.batch_size,
                "epochs": p.epochs,
                "lr": float(p.lr),
                "momentum": float(p.momentum),
                "weight_decay": float(p.weight_decay),
                "weight_decay_scope": "all parameters",
                "dampening": 0.0,
                "nesterov": p.nesterov,
                "lr_milestones": list(p.lr_milestones),
                "lr_gamma": float(p.lr_gamma),
                "train_subset": self.train_subset,
            },
            "memory_efficient": self.memory_efficient,
            "amp": self.amp,
            # Only when on, so the hashes (and runs) of every earlier configuration stay valid.
            # The number of GPUs is not identity: a run resumes on 1 GPU or on N.
            **({"sync_bn": True} if self.sync_bn else {}),
            # bf16 autocast changes the numbers, so a CUDA fast-path run and an fp32 run of a
            # cell are different runs. The other switches only remove overhead: not identity.
            **({"precision": self.precision} if self.precision == schema.PRECISION_BF16 else {}),
            **({"gpu_decode": True} if self.gpu_decode else {}),
        }

    @property
    def config_hash(self) -> str:
        text = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def config(self) -> dict[str, Any]:
        """The whole resolved configuration (MLflow params and the config artifact)."""
        config = self.identity()
        config["config_hash"] = self.config_hash
        config["precision"] = self.precision
        config["fast_path"] = self.fast_path
        config["table"], config["row"] = self.cell.table, self.cell.row
        config["model"], config["share"] = self.cell.model, self.cell.share
        config["protocol"]["kind"] = (
            schema.PROTOCOL_SHORTENED if self.shortened else schema.PROTOCOL_PAPER
        )
        config["protocol"]["paper_epochs"] = self.cell.protocol.epochs
        config["protocol"]["paper_lr_milestones"] = list(self.cell.protocol.lr_milestones)
        extra = {k: v for k, v in self.cell.protocol.extra.items() if _jsonable(v)}
        if extra:
            config["protocol"]["extra"] = extra
        config["reported"] = {
            "params_m": _num(self.cell.reported_params_m),
            "error": _num(self.cell.reported_error),
            "top5": _num(self.cell.reported_top5),
        }
        return config

    def tags(self) -> dict[str, str]:
        return {
            schema.TAG_TABLE: self.cell.table,
            schema.TAG_ROW: self.cell.row,
            schema.TAG_MODEL: self.cell.model,
            schema.TAG_SHARE: "true" if self.cell.share else "false",
            schema.TAG_SEED: str(self.seed),
            schema.TAG_PROTOCOL: (
                schema.PROTOCOL_SHORTENED if self.shortened else schema.PROTOCOL_PAPER
            ),
            schema.TAG_CONFIG_HASH: self.config_hash,
            schema.TAG_PRECISION: self.precision,
            schema.TAG_FAST_PATH: self.fast_path,
        }


def _num(value: float | None) -> float | None:
    return None if value is None else float(value)


def _jsonable(value: object) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def make_plans(
    cells: list[Cell], seeds: list[int], options: RunOptions, device_type: str | None = None
) -> list[Plan]:
    """Every (cell, seed) with its resolved configuration; ``device_type`` (``cpu``/``cuda``,
    default: from ``options.device``) decides the precision and fast path in effect."""
    fast = options.fast()  # a bad --fast-path fails here, before anything runs
    device_type = device_type or planned_device_type(options.device)
    precision = run_precision(fast, device_type, options.amp)
    on_device = fast.for_device(device_type)
    if options.epochs is not None and options.epochs < 1:
        raise RkreproError(f"--epochs must be >= 1, got {options.epochs}")
    if options.train_subset is not None and options.train_subset < 1:
        raise RkreproError(f"--train-subset must be >= 1, got {options.train_subset}")
    plans = []
    for cell in cells:
        paper = cell.protocol
        epochs = options.epochs or paper.epochs
        protocol = replace(
            paper,
            epochs=epochs,
            lr_milestones=scale_milestones(paper.lr_milestones, paper.epochs, epochs),
        )
        shortened = epochs != paper.epochs or options.train_subset is not None
        effective = on_device.for_dataset(paper.dataset)
        for seed in seeds:
            plans.append(
                Plan(
                    cell,
                    seed,
                    protocol,
                    shortened,
                    options.train_subset,
                    options.memory_efficient,
                    options.amp,
                    options.sync_bn,
                    precision,
                    effective.describe(),
                    effective.gpu_decode,
                )
            )
    return plans


# --------------------------------------------------------------------------------------------
# Feedback.


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class PlainProgress:
    """One log line per epoch, for logs and pipes."""

    def __init__(self, console: Console, label: str) -> None:
        self.console = console
        self.label = label
        self.seconds: list[float] = []
        self.epochs = 0

    def epoch_start(self, epoch: int, epochs: int, steps: int, done: int) -> None:
        self.epochs = epochs

    def step(self, done: int, loss: float, error: float) -> None:
        pass

    def epoch_end(self, record: EpochRecord) -> None:
        self.seconds.append(record.epoch_seconds)
        recent = self.seconds[-5:]
        eta = sum(recent) / len(recent) * (self.epochs - record.epoch)
        top5 = "" if record.test_top5_error is None else f" top5 {record.test_top5_error:.2f}%"
        self.console.print(
            f"{self.label} epoch {record.epoch}/{self.epochs} loss {record.train_loss:.4f} "
            f"train {record.train_error:.2f}% test {record.test_error:.2f}%{top5} "
            f"lr {record.lr:g} {record.images_per_s:.0f} img/s {record.epoch_seconds:.1f}s "
            f"ETA {_duration(eta)}",
            highlight=False,
            soft_wrap=True,
        )


class RichProgress(PlainProgress):
    """A live bar per epoch on a terminal, plus the plain line when each epoch ends."""

    def __init__(self, console: Console, label: str) -> None:
        super().__init__(console, label)
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f} err {task.fields[error]:.2f}%"),
            TextColumn("{task.fields[speed]:.0f} img/s"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.task: Any = None
        self.started = 0.0
        self.done0 = 0
        self.batch = 1

    def epoch_start(self, epoch: int, epochs: int, steps: int, done: int) -> None:
        super().epoch_start(epoch, epochs, steps, done)
        if self.task is None:
            self.bar.start()
        else:
            self.bar.remove_task(self.task)
        self.task = self.bar.add_task(
            f"epoch {epoch}/{epochs}", total=steps, completed=done, loss=0.0, error=0.0, speed=0.0
        )
        self.started, self.done0 = time.perf_counter(), done

    def step(self, done: int, loss: float, error: float) -> None:
        elapsed = time.perf_counter() - self.started
        steps = done - self.done0
        speed = steps / elapsed if elapsed > 0 else 0.0
        self.bar.update(self.task, completed=done, loss=loss, error=error, speed=speed * self.batch)

    def epoch_end(self, record: EpochRecord) -> None:
        super().epoch_end(record)

    def close(self) -> None:
        if self.task is not None:
            self.bar.stop()


# --------------------------------------------------------------------------------------------
# Status of planned runs.


@dataclass
class PlanStatus:
    state: str  # "done", "resume", "new"
    run: tracking.ExistingRun | None
    detail: str = ""


def checkpoints_for(plan: Plan):
    from rkrepro.train import Checkpoints

    return Checkpoints(tracking.runs_dir() / "checkpoints" / plan.config_hash)


class Runner:
    """Executes plans one after another against one tracking store.

    With ``dist`` (inside torchrun) every rank runs this same sequence: rank 0 decides and
    tracks, the others follow its decisions (:mod:`rkrepro.distributed`).
    """

    def __init__(
        self, options: RunOptions, console: Console | None = None, dist: Any = None
    ) -> None:
        self.options = options
        self.dist = dist  # rkrepro.distributed.Context, or None for one process
        if dist is not None and not dist.is_main:
            console = Console(quiet=True)  # one voice: rank 0's
        self.console = console or Console()
        self.uri = tracking.resolve_tracking_uri(options.tracking_uri)
        self._client: Any = None
        self._experiments: dict[str, str | None] = {}
        self._arrays: dict[str, Any] = {}

    @property
    def is_main(self) -> bool:
        return self.dist is None or self.dist.is_main

    # -- store --------------------------------------------------------------------------

    def connect(self, create: bool = True) -> bool:
        """Check the store before anything else; False when a local store does not exist yet."""
        tracking.check_reachable(self.uri)
        if not create and not tracking.store_exists(self.uri):
            return False
        with tracking.wrap_errors(self.uri):
            self._client = tracking.client(self.uri)
            self._client.search_experiments(max_results=1)
        return True

    def experiment(self, table_id: str, create: bool = True) -> str | None:
        if table_id not in self._experiments or (create and self._experiments[table_id] is None):
            self._experiments[table_id] = tracking.experiment_id(
                self._client, self.uri, table_id, create=create
            )
        return self._experiments[table_id]

    def prepare(self, plans: list[Plan]) -> list[Plan]:
        """Before launching parallel jobs: create the store and every experiment once (so that
        no two jobs race to), and leave out the plans already done. Returns those to run."""
        self.connect()
        for table_id in dict.fromkeys(p.cell.table for p in plans):
            self.experiment(table_id)
        todo = []
        for plan in plans:
            status = self.status(plan)
            if status.state == "done" and status.run is not None:
                self.console.print(
                    f"{plan.label}: done (run {status.run.run_id}); skipped (--force reruns it)",
                    highlight=False,
                    soft_wrap=True,
                )
            else:
                todo.append(plan)
        return todo

    def status(self, plan: Plan) -> PlanStatus:
        existing = None
        if self._client is not None:
            exp = self.experiment(plan.cell.table, create=False)
            if exp is not None:
                with tracking.wrap_errors(self.uri):
                    existing = tracking.latest_run(self._client, exp, plan.config_hash)
        if existing is None:
            return PlanStatus("new", None)
        if existing.status == "FINISHED":
            if self.options.force:
                return PlanStatus("new", existing, "forced; a finished run exists")
            return PlanStatus("done", existing)
        if self.options.force:
            return PlanStatus("new", existing, f"forced; replaces a {existing.status} run")
        info = checkpoints_for(plan).peek()
        detail = existing.status.lower()
        if info and info.get("run_id") == existing.run_id:
            detail += f", checkpoint after epoch {info.get('epoch')}/{plan.protocol.epochs}"
            if info.get("step_in_epoch"):
                detail += f" (+{info['step_in_epoch']} steps)"
        else:
            detail += ", no checkpoint: restarts"
        return PlanStatus("resume", existing, detail)

    # -- dry run ------------------------------------------------------------------------

    def dry_run(self, plans: list[Plan], parallel: str | None = None) -> None:
        """What would run, its status and its estimated cost (``rkrepro plan``'s estimate).

        ``parallel`` describes the launcher (e.g. "4 GPU slots") for the wall-clock line.
        """
        from rkrepro import plan as cost
        from rkrepro.models import spec_param_counts

        self.connect(create=False)
        by_cell: dict[str, list[Plan]] = {}
        for plan in plans:
            by_cell.setdefault(plan.cell.key, []).append(plan)
        try:
            estimates = {
                e.cell.key: e for e in cost.estimate([ps[0].cell for ps in by_cell.values()])
            }
        except Exception as error:  # noqa: BLE001 - the plan is still worth showing
            self.console.print(
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
            statuses = [(p.seed, self.status(p)) for p in cell_plans]
            words = [s.state + (f" ({s.detail})" if s.detail else "") for _, s in statuses]
            if len(statuses) == 1:
                status_text = words[0]
            else:
                status_text = "; ".join(
                    f"seed {seed}: {w}" for (seed, _), w in zip(statuses, words, strict=True)
                )
            seeds = ",".join(str(p.seed) for p in cell_plans)
            est = estimates.get(cell.key)
            est_hours = est.gpu_hours if est is not None else float("nan")
            hours = sum(_share_of_paper(p) * est_hours for p in cell_plans)
            gpu_hours += sum(
                _share_of_paper(p) * est_hours
                for (p, (_, s)) in zip(cell_plans, statuses, strict=True)
                if s.state != "done"
            )
            rows.append(
                (
                    cell.key,
                    cell.model,
                    f"{paper_count / 1e6:.3f}M",
                    seeds,
                    status_text,
                    _hours(hours),
                    f"{est.peak_memory_gb:.1f}" if est is not None else "?",
                )
            )
        protocol = plans[0].protocol if plans else None
        if self.console.is_terminal:
            from rich.table import Table

            table = Table(title="rkrepro run --dry-run", header_style="bold")
            for name in (
                "cell",
                "model",
                "params (paper count)",
                "seeds",
                "status",
                "GPU-h (est.)",
                "peak GB (est.)",
            ):
                table.add_column(name)
            for row in rows:
                table.add_row(*row)
            self.console.print(table)
        else:
            for key, model, params, seeds, status_text, hours, peak in rows:
                self.console.print(
                    f"{key}  model={model}  params={params}  seeds={seeds}  status={status_text}"
                    f"  gpu_hours={hours}  peak_gb={peak}",
                    highlight=False,
                    soft_wrap=True,
                )
        if protocol is not None:
            kind = "shortened" if plans[0].shortened else "paper"
            self.console.print(
                f"protocol: {kind}, {protocol.epochs} epochs, batch {protocol.batch_size}, "
                f"lr {protocol.lr:g} /{1 / protocol.lr_gamma:g} at {list(protocol.lr_milestones)}"
                f"; precision {plans[0].precision} (fast path: {plans[0].fast_path})"
                f"; tracking: {self.uri}; nothing trained (dry run)",
                highlight=False,
                soft_wrap=True,
            )
            sources = sorted({e.source for e in estimates.values()})
            line = f"estimate: {_hours(gpu_hours)} GPU-hours still to train"
            if parallel:
                line += f" ({parallel})"
            self.console.print(
                f"{line}; {'; '.join(sources)}; peak memory per GPU at the full batch "
                f"(see `rkrepro plan`)",
                highlight=False,
                soft_wrap=True,
            )

    # -- execution ----------------------------------------------------------------------

    def run(self, plans: list[Plan]) -> int:
        """Train every plan; returns the exit code (0, or 1 when any run failed)."""
        from rkrepro.train import Interrupted, StopSignal, resolve_device

        if self.dist is not None:
            from rkrepro import distributed

            self.device = self.dist.device
            for plan in plans:
                distributed.per_rank_batch(
                    plan.protocol.batch_size, self.dist.world_size, plan.cell.key
                )
            self.stop: StopSignal = distributed.DistributedStop(self.dist)
            self.dist.on_main(self.connect)
        else:
            self.device = resolve_device(self.options.device)
            self.stop = StopSignal()
        if self.options.amp and self.device.type != "cuda":
            raise RkreproError("--amp needs a CUDA device")
        if self.dist is None:
            self.connect()
        failed = 0
        with self.stop.installed():
            for plan in plans:
                if self.dist is not None:
                    self.stop.sync()  # type: ignore[attr-defined] # a signal between runs
                if self.stop.signum is not None:
                    raise Interrupted(self.stop.signum)
                if not self._run_plan(plan):
                    failed += 1
        done = len(plans) - failed
        self.console.print(
            f"{done}/{len(plans)} runs done" + (f", {failed} failed" if failed else ""),
            highlight=False,
        )
        return 1 if failed else 0

    def _data(self, plan: Plan):
        """Batch sources for a plan; CIFAR arrays are read once per command."""
        from rkrepro import data

        dataset = plan.protocol.dataset
        channels_last = self.device.type == "cuda"
        if dataset == "imagenet":
            batches = data.imagenet_batches(
                self.options.data_dir,
                plan.protocol.batch_size,
                self.device,
                plan.seed,
                plan.train_subset,
                self.options.workers,
                channels_last,
                gpu_decode=plan.gpu_decode,
            )
        else:
            if dataset not in self._arrays:
                self._arrays[dataset] = data.load_cifar(dataset, self.options.data_dir)
            train, test = self._arrays[dataset]
            batches = data.cifar_batches(
                train,
                test,
                plan.protocol.batch_size,
                self.device,
                plan.seed,
                plan.train_subset,
                channels_last,
            )
        if self.dist is None:
            return batches
        from rkrepro import distributed

        train_source = distributed.shard(batches[0], self.dist, self.stop)
        test_source = batches[1] if self.dist.is_main else distributed.NoBatches()
        return train_source, test_source

    def _env_tags(self) -> dict[str, str]:
        import torch

        device = str(self.device)
        if self.device.type == "cuda":
            device += f" ({torch.cuda.get_device_name(self.device)})"
        world = self.dist.world_size if self.dist is not None else 1
        if world > 1:
            device = f"{world} x {device.replace(f'cuda:{self.device.index}', 'cuda')}"
        commit, dirty = tracking.git_commit()
        tags = {
            schema.TAG_DEVICE: device,
            schema.TAG_GIT_COMMIT: commit,
            tracking.TAG_GIT_DIRTY: str(dirty).lower(),
            tracking.TAG_TORCH: torch.__version__,
            tracking.TAG_CUDA: str(torch.version.cuda or "none"),
            tracking.TAG_WORLD_SIZE: str(world),
        }
        if world > 1:
            tags[tracking.TAG_BATCHNORM] = "sync" if self.options.sync_bn else "per-gpu"
        tags.update(tracking.launcher_tags())
        return tags

    def _run_plan(self, plan: Plan) -> bool:
        """Skip, resume or start one plan. False when it failed (the command goes on)."""
        from rkrepro.train import CheckpointBusy

        with contextlib.ExitStack() as held:

            def decide() -> PlanStatus:
                status = self.status(plan)
                if status.state == "done":
                    assert status.run is not None
                    self.console.print(
                        f"{plan.label}: done (run {status.run.run_id}); skipped "
                        f"(--force reruns it)",
                        highlight=False,
                        soft_wrap=True,
                    )
                    return status
                held.enter_context(checkpoints_for(plan).lock())
                return self.status(plan)

            try:
                status = decide() if self.dist is None else self.dist.on_main(decide)
            except CheckpointBusy as error:
                self.console.print(f"{plan.label}: {error}", style="red", highlight=False)
                return False
            if status.state == "done":
                return True
            return self._train(plan, status)

    def _open_run(self, plan: Plan, status: PlanStatus) -> tuple[tracking.RunLog, Any, str]:
        """Rank 0 / one process: the MLflow run to write (resumed or new) and its checkpoint."""
        exp = self.experiment(plan.cell.table)
        assert exp is not None
        checkpoints = checkpoints_for(plan)
        env_tags = self._env_tags()
        state = None
        log = None
        how = ""
        with tracking.wrap_errors(self.uri):
            if status.state == "resume" and status.run is not None:
                log = tracking.RunLog(self._client, status.run.run_id)
                state = checkpoints.load()
                if state is not None and state.get("run_id") != log.run_id:
                    state = None
                if state is None and log.logged_epochs():
                    # Epochs were logged but their checkpoint is gone: retraining them into
                    # the same run would mix two histories, so start a fresh run instead.
                    self._client.set_tag(log.run_id, tracking.TAG_SUPERSEDED, "no checkpoint")
                    if status.run.status == "RUNNING":
                        self._client.set_terminated(log.run_id, "KILLED")
                    log = None
                else:
                    log.reopen(env_tags)
                    how = f"resuming run {log.run_id} ({status.detail})"
            elif status.run is not None and status.run.status == "RUNNING":
                self._client.set_tag(status.run.run_id, tracking.TAG_SUPERSEDED, "forced")
                self._client.set_terminated(status.run.run_id, "KILLED")
            if log is None:
                checkpoints.clear()
                state = None
                name = f"{plan.cell.row}/{plan.cell.model}{'/share' if plan.cell.share else ''}"
                log = tracking.RunLog.create(
                    self._client,
                    exp,
                    f"{name}/seed{plan.seed}",
                    {**plan.tags(), **env_tags},
                    tracking.flatten(plan.config()),
                )
                how = f"new run {log.run_id}"
        return log, state, how

    def _train(self, plan: Plan, status: PlanStatus) -> bool:
        import torch

        from rkrepro.models import build_model, count_params
        from rkrepro.train import (
            Interrupted,
            RunFailure,
            Trainer,
            history_csv,
            model_device_setup,
            seed_everything,
        )

        fast = self.options.fast().for_device(self.device)
        precision = run_precision(fast, self.device.type, plan.amp)
        if precision != plan.precision:
            raise RkreproError(
                f"{plan.label}: planned for {plan.precision} but {self.device} trains in "
                f"{precision}; plan on the device you run on"
            )
        batches = self._data(plan)  # data and model problems surface before a run exists
        seed_everything(plan.seed)
        try:
            model = build_model(plan.cell.spec, memory_efficient=plan.memory_efficient)
        except ValueError as error:
            raise RkreproError(f"{plan.cell.key}: cannot build the model: {error}") from None
        checkpoints = checkpoints_for(plan)
        log: tracking.RunLog | None = None
        if self.dist is None:
            log, state, how = self._open_run(plan, status)
            run_id = log.run_id
        else:
            from rkrepro import distributed

            opened: dict[str, Any] = {}

            def open_on_main() -> tuple[str, bool, str]:
                opened["log"], opened["state"], how = self._open_run(plan, status)
                return opened["log"].run_id, opened["state"] is not None, how

            run_id, resume, how = self.dist.on_main(open_on_main)
            log, state = opened.get("log"), opened.get("state")
            if not self.dist.is_main:
                checkpoints = distributed.NoCheckpoints(checkpoints.dir)
                if resume:  # rank 0 is not writing yet: it waits in the barrier below
                    state = checkpoints.load()
                    if state is None or state.get("run_id") != run_id:
                        raise RkreproError(f"{plan.label}: rank 0's checkpoint is not readable")
            self.dist.barrier()
        world = f" x {self.dist.world_size} processes" if self.dist is not None else ""
        self.console.print(
            f"{plan.label}: {how}; config {plan.config_hash}, device {self.device}{world}",
            highlight=False,
            soft_wrap=True,
        )

        paper_count, total_count = count_params(model)
        config = plan.config()
        if log is not None:
            with tracking.wrap_errors(self.uri):
                log.log_metrics(
                    {schema.M_PARAMS_PAPER: paper_count, schema.M_PARAMS_TOTAL: total_count}
                )
                log.log_text(yaml.safe_dump(config, sort_keys=False), "config.yaml")
                log.log_text(json.dumps(config, indent=2), "config.json")
                log.log_text(str(model) + "\n", "model_summary.txt")

        progress = None
        if self.is_main:
            progress_cls = RichProgress if self.console.is_terminal else PlainProgress
            progress = progress_cls(self.console, plan.label)
            if isinstance(progress, RichProgress):
                progress.batch = plan.protocol.batch_size

        on_epoch = None
        if log is not None:
            run_log = log

            def on_epoch(record: EpochRecord) -> None:
                with tracking.wrap_errors(self.uri):
                    run_log.log_epoch(record)

        outcome, reason = "FAILED", "unexpected error"
        trainer = None
        try:
            if self.dist is None:
                model = model_device_setup(model, self.device, fast)
            else:
                from rkrepro import distributed

                model = distributed.wrap_model(model, self.dist, self.options.sync_bn, fast)
            trainer = Trainer(
                model,
                batches[0],
                batches[1],
                plan.protocol,
                self.device,
                checkpoints,
                run_id=run_id,
                amp=plan.amp,
                fast=fast,
                top5=plan.protocol.dataset == "imagenet",
                progress=progress,
                stop=self.stop,
                on_epoch=on_epoch,
                extra_state={"config_hash": plan.config_hash},
                reduce_sums=self.dist.sum if self.dist is not None else None,
            )
            if state is not None:
                trainer.restore(state)
                if not self.is_main:
                    # Rank 0's partial sums of an interrupted epoch are counted once, by it.
                    trainer.partial = None
                if log is not None:
                    with tracking.wrap_errors(self.uri):
                        for record in trainer.history:  # epochs done before a crash, if unlogged
                            log.log_epoch(record)
            history = trainer.fit()
            outcome = "FINISHED"
        except RunFailure as failure:
            reason = failure.reason
            self.console.print(f"{plan.label}: FAILED: {reason}", style="red", highlight=False)
            return False
        except torch.cuda.OutOfMemoryError:
            from rkrepro.train import MEMORY_EFFICIENT_HINT

            reason = f"CUDA out of memory; {MEMORY_EFFICIENT_HINT}"
            self.console.print(f"{plan.label}: FAILED: {reason}", style="red", highlight=False)
            return False
        except (Interrupted, KeyboardInterrupt) as stop:
            outcome = "KILLED"
            reason = f"stopped by {stop}" if isinstance(stop, Interrupted) else "interrupted"
            self.console.print(
                f"{plan.label}: stopped; checkpoint saved, the same command resumes it",
                highlight=False,
            )
            raise
        except Exception as error:
            reason = f"{type(error).__name__}: {error}"
            raise
        finally:
            if isinstance(progress, RichProgress):
                progress.close()
            if log is not None:
                self._close_run(log, outcome, reason, trainer)

        final = history[-1]
        summary = {
            schema.M_FINAL_TEST_ERROR: final.test_error,
            schema.M_BEST_TEST_ERROR: min(r.test_error for r in history),
        }
        if final.test_top5_error is not None:
            summary[schema.M_FINAL_TEST_TOP5] = final.test_top5_error
        if log is not None:
            with tracking.wrap_errors(self.uri):
                log.log_metrics(summary, step=final.epoch)
                log.log_text(history_csv(history), "metrics.csv")
                log.finish("FINISHED")
        self.console.print(
            f"{plan.label}: finished; final test error {final.test_error:.2f}% "
            f"(best {summary[schema.M_BEST_TEST_ERROR]:.2f}%)",
            highlight=False,
        )
        return True

    def _close_run(self, log: tracking.RunLog, outcome: str, reason: str, trainer: Any) -> None:
        """Record a stopped or failed run; best effort, it must not hide the original error."""
        if outcome == "FINISHED":
            return
        from rkrepro.train import history_csv

        try:
            if trainer is not None and trainer.history:
                log.log_text(history_csv(trainer.history), "metrics.csv")
            if outcome == "FAILED":
                log.set_tags({schema.TAG_FAILURE: reason[:5000]})
            log.finish(outcome)
        except Exception as error:  # noqa: BLE001
            self.console.print(f"warning: could not mark the run {outcome}: {error}", style="red")


def _share_of_paper(plan: Plan) -> float:
    """The fraction of the paper protocol's cost a (possibly shortened) plan trains."""
    from rkrepro.plan import DATASET_SIZES

    share = plan.protocol.epochs / plan.cell.protocol.epochs
    if plan.train_subset is not None:
        share *= min(1.0, plan.train_subset / DATASET_SIZES[plan.protocol.dataset][0])
    return share


def _hours(hours: float) -> str:
    if hours != hours:  # NaN: no estimate
        return "?"
    return f"{hours:,.2f}" if hours >= 0.01 or hours == 0 else f"{hours:.1g}"


def parse_seeds(seeds: int | None, seed: list[int] | None) -> list[int]:
    """``--seeds N`` -> 0..N-1; ``--seed S`` (repeatable) -> those; neither -> [0]."""
    if seeds is not None and seed:
        raise RkreproError("use either --seeds N or --seed S, not both")
    if seed:
        for value in seed:
            if not 0 <= value < 2**32:  # what numpy and torch accept as a seed
                raise RkreproError(f"--seed must be in [0, 2^32), got {value}")
        return list(dict.fromkeys(seed))
    if seeds is not None:
        if not 1 <= seeds <= MAX_SEEDS:
            raise RkreproError(f"--seeds must be between 1 and {MAX_SEEDS}, got {seeds}")
        return list(range(seeds))
    return [0]


MAX_SEEDS = 100  # a typo like --seeds 1000000 must not queue a million runs


__all__ = ["DataError", "Plan", "RunOptions", "Runner", "make_plans", "parse_seeds"]
