"""Training plans in this process: for each, decide (skip, resume or new), build, fit, track.

The runner holds no MLflow logic of its own (that is :class:`rkrepro.tracking.Tracker`) and no
training loop (that is :class:`rkrepro.train.Trainer`); it sequences them per plan so that a
run's checkpoint and its MLflow run always agree, and so that a rerun of the same command
finds and continues its own work.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import yaml
from rich.console import Console

from rkrepro import mlflow_keys, paths, tracking
from rkrepro.checkpoints import CheckpointBusy, Checkpoints
from rkrepro.errors import RkreproError
from rkrepro.fast_path import FastPath, run_precision
from rkrepro.paths import checkpoint_dir
from rkrepro.run import progress as progress_ui
from rkrepro.run.plans import Plan, RunOptions, per_rank_batch, resolve_device

if TYPE_CHECKING:
    import torch

    from rkrepro.train import EpochRecord, StopSignal


@dataclass
class PlanStatus:
    state: str  # "done", "resume", "new"
    run: tracking.ExistingRun | None
    detail: str = ""


def checkpoints_for(plan: Plan, tracking_uri: str) -> Checkpoints:
    """The plan's checkpoints in the store ``tracking_uri`` (see :func:`checkpoint_dir`)."""
    return Checkpoints(checkpoint_dir(plan.config_hash, tracking_uri))


@dataclass
class _OpenedRun:
    """A plan's MLflow run as this process sees it (``log`` is None off rank 0)."""

    run_id: str
    log: tracking.RunLog | None
    state: dict[str, Any] | None  # the checkpoint to resume from
    checkpoints: Checkpoints
    how: str  # "new run ...", "resuming run ..."
    new: bool = False  # a fresh MLflow run: its parameter counts are logged once, now


class Runner:
    """Executes plans one after another against one tracking store.

    With ``dist`` (inside torchrun) every rank runs this same sequence: rank 0 decides and
    tracks, the others follow its decisions (:mod:`rkrepro.run.distributed`).
    """

    def __init__(
        self, options: RunOptions, console: Console | None = None, dist: Any = None
    ) -> None:
        self.options = options
        self.dist = dist  # rkrepro.run.distributed.Context, or None for one process
        if dist is not None and not dist.is_main:
            console = Console(quiet=True)  # one voice: rank 0's
        self.console = console or Console()
        self.tracker = tracking.Tracker(options.tracking_uri)
        self._arrays: dict[str, Any] = {}
        self.device: torch.device
        self.stop: StopSignal

    @property
    def uri(self) -> str:
        return self.tracker.uri

    @property
    def is_main(self) -> bool:
        return self.dist is None or self.dist.is_main

    def _say(self, text: str, **style: Any) -> None:
        self.console.print(text, highlight=False, soft_wrap=True, **style)

    # -- deciding -----------------------------------------------------------------------

    def connect(self, create: bool = True) -> bool:
        """Check the store before anything else; False when a local store does not exist yet.

        To train (``create``), the runs folder must take new files as well: checkpoints, job
        logs and a local store's artifacts go there, whichever store the runs are logged to.
        """
        if create:
            folder = paths.runs_dir()
            why = paths.unwritable(folder)
            if why is not None:
                raise RkreproError(
                    f"cannot write the runs folder {folder} (checkpoints, job logs, the local "
                    f"store): {why}; use a writable folder (RKREPRO_RUNS_DIR)"
                )
        return self.tracker.connect(create)

    def prepare(self, plans: list[Plan]) -> list[Plan]:
        """Before launching parallel jobs: create the store and every experiment once (so that
        no two jobs race to), and leave out the plans already done. Returns those to run."""
        self.connect()
        for table_id in dict.fromkeys(p.cell.table for p in plans):
            self.tracker.experiment(table_id)
        todo = []
        for plan in plans:
            status = self.status(plan)
            if status.state == "done" and status.run is not None:
                self._say_done(plan, status)
            else:
                todo.append(plan)
        return todo

    def _say_done(self, plan: Plan, status: PlanStatus) -> None:
        assert status.run is not None
        self._say(f"{plan.label}: done (run {status.run.run_id}); skipped (--force reruns it)")

    def status(self, plan: Plan) -> PlanStatus:
        existing = self.tracker.latest_run(plan.cell.table, plan.config_hash)
        if existing is None:
            return PlanStatus("new", None)
        if existing.status == "FINISHED":
            if self.options.force:
                return PlanStatus("new", existing, "forced; a finished run exists")
            return PlanStatus("done", existing)
        if self.options.force:
            return PlanStatus("new", existing, f"forced; replaces a {existing.status} run")
        info = checkpoints_for(plan, self.uri).peek()
        detail = existing.status.lower()
        if info and info.get("run_id") == existing.run_id:
            detail += f", checkpoint after epoch {info.get('epoch')}/{plan.protocol.epochs}"
            if info.get("step_in_epoch"):
                detail += f" (+{info['step_in_epoch']} steps)"
        else:
            detail += ", no checkpoint: restarts"
        return PlanStatus("resume", existing, detail)

    # -- running ------------------------------------------------------------------------

    def run(self, plans: list[Plan]) -> int:
        """Train every plan; returns the exit code (0, or 1 when any run failed)."""
        from rkrepro.train import Interrupted

        if self.dist is not None:  # before anything trains: every batch must split evenly
            for plan in plans:
                per_rank_batch(plan.protocol.batch_size, self.dist.world_size, plan.cell.key)
        self._set_up()
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
        self._say(f"{done}/{len(plans)} runs done" + (f", {failed} failed" if failed else ""))
        return 1 if failed else 0

    def _set_up(self) -> None:
        """The device, the stop signal and the store, before the first plan."""
        from rkrepro.train import StopSignal

        if self.dist is None:
            self.device = resolve_device(self.options.device)
            self.stop = StopSignal()
        else:
            from rkrepro.run import distributed

            self.device = self.dist.device
            self.stop = distributed.DistributedStop(self.dist)
        if self.options.amp and self.device.type != "cuda":
            raise RkreproError("--amp needs a CUDA device")
        if self.dist is None:
            self.connect()
        else:
            self.dist.on_main(self.connect)

    def _run_plan(self, plan: Plan) -> bool:
        """Skip, resume or start one plan. False when it failed (the command goes on)."""
        with contextlib.ExitStack() as held:

            def decide() -> PlanStatus:
                status = self.status(plan)
                if status.state == "done":
                    self._say_done(plan, status)
                    return status
                held.enter_context(checkpoints_for(plan, self.uri).lock())
                return self.status(plan)  # again, now that no other process can start it

            try:
                status = decide() if self.dist is None else self.dist.on_main(decide)
            except CheckpointBusy as error:
                self._say(f"{plan.label}: {error}", style="red")
                return False
            if status.state == "done":
                return True
            return self._train(plan, status)

    # -- one plan -----------------------------------------------------------------------

    def _train(self, plan: Plan, status: PlanStatus) -> bool:
        from rkrepro.train import seed_everything

        fast = self._fast_path(plan)
        batches = self._data(plan)  # data and model problems surface before a run exists
        seed_everything(plan.seed)
        model = self._build(plan)
        opened = self._open(plan, status)
        world = f" x {self.dist.world_size} processes" if self.dist is not None else ""
        self._say(
            f"{plan.label}: {opened.how}; config {plan.config_hash}, device {self.device}{world}"
        )
        if opened.log is not None:
            self._log_start(opened.log, plan, model, counts=opened.new)
        history = self._fit(plan, model, fast, batches, opened)
        if history is None:
            return False
        final = history[-1]
        summary = {
            mlflow_keys.M_FINAL_TEST_ERROR: final.test_error,
            mlflow_keys.M_BEST_TEST_ERROR: min(r.test_error for r in history),
        }
        if final.test_top5_error is not None:
            summary[mlflow_keys.M_FINAL_TEST_TOP5] = final.test_top5_error
        if opened.log is not None:
            from rkrepro.train import history_csv

            with self.tracker.errors():
                opened.log.complete(summary, final.epoch, history_csv(history))
        self._say(
            f"{plan.label}: finished; final test error {final.test_error:.2f}% "
            f"(best {summary[mlflow_keys.M_BEST_TEST_ERROR]:.2f}%)"
        )
        return True

    def _fast_path(self, plan: Plan) -> FastPath:
        """The fast path on this device; it must give the precision the plan was hashed with."""
        fast = self.options.fast().for_device(self.device)
        precision = run_precision(fast, self.device.type, self.options.amp)
        if precision != plan.precision:
            raise RkreproError(
                f"{plan.label}: planned for {plan.precision} but {self.device} trains in "
                f"{precision}; plan on the device you run on"
            )
        return fast

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
        from rkrepro.run import distributed

        train_source = distributed.shard(batches[0], self.dist, self.stop)
        test_source = batches[1] if self.dist.is_main else distributed.NoBatches()
        return train_source, test_source

    def _build(self, plan: Plan):
        from rkrepro.models import build_model

        try:
            return build_model(plan.cell.spec, memory_efficient=self.options.memory_efficient)
        except ValueError as error:
            raise RkreproError(f"{plan.cell.key}: cannot build the model: {error}") from None

    def _environment_tags(self) -> dict[str, str]:
        import torch

        device = str(self.device)
        if self.device.type == "cuda":
            device += f" ({torch.cuda.get_device_name(self.device)})"
        world = self.dist.world_size if self.dist is not None else 1
        batchnorm = None
        if world > 1:
            device = f"{world} x {device.replace(f'cuda:{self.device.index}', 'cuda')}"
            batchnorm = "sync" if self.options.sync_bn else "per-gpu"
        return tracking.environment_tags(device, world, batchnorm)

    def _open_run(self, plan: Plan, status: PlanStatus) -> _OpenedRun:
        """Rank 0 / one process: the MLflow run to write (resumed or new) and its checkpoint."""
        checkpoints = checkpoints_for(plan, self.uri)
        env_tags = self._environment_tags()
        existing = status.run
        if status.state == "resume" and existing is not None:
            state = checkpoints.load()
            if state is not None and state.get("run_id") != existing.run_id:
                state = None
            if state is None and self.tracker.logged_epochs(existing):
                # Epochs were logged but their checkpoint is gone: retraining them into the
                # same run would mix two histories, so start a fresh run instead.
                self.tracker.supersede(existing, "no checkpoint")
            else:
                log = self.tracker.resume(existing, env_tags)
                how = f"resuming run {log.run_id} ({status.detail})"
                return _OpenedRun(log.run_id, log, state, checkpoints, how)
        elif existing is not None and existing.status == "RUNNING":
            self.tracker.supersede(existing, "forced")
        checkpoints.clear()
        log = self.tracker.create(
            plan.cell.table,
            plan.run_name,
            {**plan.tags(), **env_tags},
            tracking.flatten(plan.config()),
            tracking.DatasetInfo(**plan.dataset_info()),
        )
        return _OpenedRun(log.run_id, log, None, checkpoints, f"new run {log.run_id}", new=True)

    def _open(self, plan: Plan, status: PlanStatus) -> _OpenedRun:
        """The run to train into; inside torchrun, rank 0 opens it and the others follow."""
        if self.dist is None:
            return self._open_run(plan, status)
        from rkrepro.run import distributed

        mine: list[_OpenedRun] = []

        def open_on_main() -> tuple[str, bool, str]:
            mine.append(self._open_run(plan, status))
            return mine[0].run_id, mine[0].state is not None, mine[0].how

        run_id, resume, how = self.dist.on_main(open_on_main)
        if self.dist.is_main:
            opened = mine[0]
        else:
            checkpoints = distributed.NoCheckpoints(checkpoints_for(plan, self.uri).dir)
            state = None
            if resume:  # rank 0 is not writing yet: it waits in the barrier below
                state = checkpoints.load()
                if state is None or state.get("run_id") != run_id:
                    raise RkreproError(f"{plan.label}: rank 0's checkpoint is not readable")
            opened = _OpenedRun(run_id, None, state, checkpoints, how)
        self.dist.barrier()
        return opened

    def _log_start(self, log: tracking.RunLog, plan: Plan, model: Any, counts: bool) -> None:
        """The run's configuration and model summary; with ``counts`` (a new run, not a resumed
        one) its parameter counts, so that each is logged once."""
        from rkrepro.models import count_params

        config = plan.config()
        with self.tracker.errors():
            if counts:
                paper_count, total_count = count_params(model)
                log.log_metrics(
                    {
                        mlflow_keys.M_PARAMS_PAPER: paper_count,
                        mlflow_keys.M_PARAMS_TOTAL: total_count,
                    }
                )
            log.log_text(yaml.safe_dump(config, sort_keys=False), "config.yaml")
            log.log_text(json.dumps(config, indent=2), "config.json")
            log.log_text(str(model) + "\n", "model_summary.txt")

    def _trainer(self, plan: Plan, model: Any, fast: FastPath, batches, opened: _OpenedRun):
        from rkrepro.train import Trainer, model_device_setup

        if self.dist is None:
            model = model_device_setup(model, self.device, fast)
        else:
            from rkrepro.run import distributed

            model = distributed.wrap_model(model, self.dist, self.options.sync_bn, fast)
        on_epoch = None
        if opened.log is not None:
            log = opened.log

            def on_epoch(record: EpochRecord) -> None:
                with self.tracker.errors():
                    log.log_epoch(record)

        progress = None
        if self.is_main:
            progress = progress_ui.for_console(self.console, plan.label, plan.protocol.batch_size)
        trainer = Trainer(
            model,
            batches[0],
            batches[1],
            plan.protocol,
            self.device,
            opened.checkpoints,
            run_id=opened.run_id,
            amp=self.options.amp,
            fast=fast,
            top5=plan.protocol.dataset == "imagenet",
            progress=progress,
            stop=self.stop,
            on_epoch=on_epoch,
            extra_state={"config_hash": plan.config_hash},
            reduce_sums=self.dist.sum if self.dist is not None else None,
        )
        if opened.state is not None:
            trainer.restore(opened.state)
            if not self.is_main:
                # Rank 0's partial sums of an interrupted epoch are counted once, by it.
                trainer.partial = None
            if opened.log is not None:
                with self.tracker.errors():
                    for record in trainer.history:  # epochs done before a crash, if unlogged
                        opened.log.log_epoch(record)
        return trainer, progress

    def _fit(
        self, plan: Plan, model: Any, fast: FastPath, batches, opened: _OpenedRun
    ) -> list[EpochRecord] | None:
        """Train to the end; None when the run failed (it is marked FAILED with its reason).

        A stop (signal, Ctrl-C) marks the run KILLED and propagates: the checkpoint resumes it.
        """
        import torch

        from rkrepro.train import MEMORY_EFFICIENT_HINT, Interrupted, RunFailure

        outcome, reason = "FAILED", "unexpected error"
        trainer = progress = None
        try:
            trainer, progress = self._trainer(plan, model, fast, batches, opened)
            history = trainer.fit()
            outcome = "FINISHED"
            return history
        except RunFailure as failure:
            reason = failure.reason
        except torch.cuda.OutOfMemoryError:
            reason = f"CUDA out of memory; {MEMORY_EFFICIENT_HINT}"
        except (Interrupted, KeyboardInterrupt) as stop:
            outcome = "KILLED"
            reason = f"stopped by {stop}" if isinstance(stop, Interrupted) else "interrupted"
            self._say(f"{plan.label}: stopped; checkpoint saved, the same command resumes it")
            raise
        except Exception as error:
            reason = f"{type(error).__name__}: {error}"
            raise
        finally:
            if progress is not None:
                progress.close()
            if opened.log is not None and outcome != "FINISHED":
                self._close_run(opened.log, outcome, reason, trainer)
        self._say(f"{plan.label}: FAILED: {reason}", style="red")
        return None

    def _close_run(self, log: tracking.RunLog, outcome: str, reason: str, trainer: Any) -> None:
        """Record a stopped or failed run; best effort, it must not hide the original error."""
        from rkrepro.train import history_csv

        try:
            history = (
                history_csv(trainer.history) if trainer is not None and trainer.history else None
            )
            log.stop(outcome, reason, history)
        except Exception as error:  # noqa: BLE001
            self._say(f"warning: could not mark the run {outcome}: {error}", style="red")
