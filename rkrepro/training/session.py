"""Training plans in this process: for each, claim it (skip, resume or new), build, fit, track.

The session sequences the parts so that a run's checkpoint and its MLflow run always agree and
a rerun of the same command finds and continues its own work: the decisions about a plan are
its :class:`~rkrepro.training.setup.Execution`, the loop is the
:class:`~rkrepro.training.loop.Trainer`, MLflow is
:class:`rkrepro.tracking.training_run.TrainingRun`, and the processes are a
:class:`~rkrepro.training.world.World` (one, or a torchrun group: the same calls either way).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rkrepro.errors import RkreproError
from rkrepro.planning.plan import Plan
from rkrepro.tracking import runs as tracking
from rkrepro.tracking.training_run import TrainingRun
from rkrepro.training import progress as progress_ui
from rkrepro.training.checkpoints import CheckpointBusy, Checkpoints, ReadOnlyCheckpoints
from rkrepro.training.ledger import Ledger, PlanStatus
from rkrepro.training.setup import Execution
from rkrepro.training.world import World

if TYPE_CHECKING:
    from rkrepro.training.loop import Trainer


@dataclass
class OpenedRun:
    """A plan's MLflow run as this process sees it (``run`` is None off rank 0)."""

    run_id: str
    run: TrainingRun | None
    state: dict[str, Any] | None  # the checkpoint to resume from
    checkpoints: Checkpoints
    how: str  # "new run ...", "resuming run ..."
    new: bool = False  # a fresh MLflow run: its parameter counts are logged once, now


@dataclass
class _Outcome:
    """How a run ended, for :meth:`Session._ending`."""

    status: str = "FAILED"
    reason: str = "unexpected error"
    history: list[Any] = field(default_factory=list)


class Session:
    """Trains plans one after another against one tracking store, in this process's world."""

    def __init__(self, ledger: Ledger, world: World, data_dir: Any, workers: int = 8) -> None:
        self.ledger, self.world = ledger, world
        self.data_dir, self.workers = data_dir, workers
        self.stop = world.stop_signal()
        self._arrays: dict[str, Any] = {}  # CIFAR arrays, read once per command

    def _say(self, text: str, **style: Any) -> None:
        self.ledger.say(text, **style)

    def run(self, plans: list[Plan]) -> int:
        """Train every plan; returns the exit code (0, or 1 when any run failed). A stop by
        signal checkpoints the current run and raises :class:`Interrupted`."""
        failed = 0
        self.world.on_main(self.ledger.connect)
        with self.stop.installed():
            for plan in plans:
                self.stop.sync()  # a signal that came between runs
                self.stop.check()
                with contextlib.ExitStack() as lock:
                    try:
                        status = self.world.on_main(functools.partial(self._claim, plan, lock))
                    except CheckpointBusy as error:
                        self._say(f"{plan.label}: {error}", style="red")
                        failed += 1
                        continue
                    if status.state != "done" and not self.train(plan, status):
                        failed += 1
        # Every rank leaves together: a rank whose process exited while rank 0 was still
        # recording died in gloo's teardown (SIGABRT), and torchrun then stops the whole group.
        self.world.barrier()
        done = len(plans) - failed
        self._say(f"{done}/{len(plans)} runs done" + (f", {failed} failed" if failed else ""))
        return 1 if failed else 0

    def _claim(self, plan: Plan, lock: contextlib.ExitStack) -> PlanStatus:
        """Rank 0: the plan's status, asked again under its checkpoint lock (held in ``lock``
        until the run ends) so that no other process can start it meanwhile."""
        status = self.ledger.status(plan)
        if status.state == "done":
            self.ledger.say_done(plan, status)
            return status
        lock.enter_context(self.ledger.checkpoints(plan).lock())
        return self.ledger.status(plan)

    def train(self, plan: Plan, status: PlanStatus) -> bool:
        """Build, open its run, fit, record: False when the run failed (the command goes on)."""
        from rkrepro.training.loop import Trainer
        from rkrepro.training.state import seed_everything

        execution = Execution.for_plan(plan, self.world)
        train, test = self.world.shard(*self._batches(plan, execution), self.stop)
        seed_everything(plan.seed)
        model = _build(plan)  # data and model problems surface before a run exists
        config = plan.config()
        opened = self._open(plan, status, execution, config)
        processes = f" x {self.world.size} processes" if self.world.size > 1 else ""
        self._say(
            f"{plan.label}: {opened.how}; config {plan.config_hash}, device "
            f"{execution.device}{processes}"
        )
        on_epoch = None
        if opened.run is not None:
            opened.run.start(config, str(model) + "\n", _param_counts(model, opened.new))
            on_epoch = functools.partial(_log_epoch, opened.run)
        trainer = Trainer(
            model,
            train,
            test,
            plan.protocol,
            execution,
            opened.checkpoints,
            run_id=opened.run_id,
            progress=progress_ui.for_console(
                self.ledger.console, plan.label, plan.protocol.batch_size
            ),
            stop=self.stop,
            on_epoch=on_epoch,
            extra_state={"config_hash": plan.config_hash},
        )
        if opened.state is not None:
            trainer.restore(opened.state)
            if opened.run is not None:
                opened.run.epochs(trainer.history)  # epochs done before a crash, if unlogged
        with self._ending(plan, opened, trainer) as outcome:
            history = trainer.fit()
            outcome.status = "FINISHED"
        if outcome.status != "FINISHED":
            return False
        final = history[-1]
        best = min(r.test_error for r in history)
        if opened.run is not None:
            # The weights first, then the run FINISHED, then the resume state gone: a stop
            # between any two leaves a run that resumes or a finished run with its weights.
            weights = opened.checkpoints.keep_final(
                trainer.model.state_dict(), opened.run_id, plan.protocol.epochs
            )
            opened.run.finish(history, weights)
            opened.checkpoints.drop_resume_state()
        self._say(
            f"{plan.label}: finished; final test error {final.test_error:.2f}% (best {best:.2f}%)"
        )
        return True

    @contextlib.contextmanager
    def _ending(self, plan: Plan, opened: OpenedRun, trainer: Trainer) -> Iterator[_Outcome]:
        """How a fit ends, recorded: a run failure (NaN, out of memory) marks the run FAILED
        with its reason and is swallowed (the command goes on); a stop marks it KILLED and
        propagates (its checkpoint resumes it); any other error marks it FAILED and
        propagates."""
        import torch

        from rkrepro.training.signals import MEMORY_EFFICIENT_HINT, Interrupted, RunFailure

        outcome = _Outcome()
        try:
            yield outcome
        except RunFailure as failure:
            outcome.reason = failure.reason
        except torch.cuda.OutOfMemoryError:
            outcome.reason = f"CUDA out of memory; {MEMORY_EFFICIENT_HINT}"
        except (Interrupted, KeyboardInterrupt) as stop:
            outcome.status = "KILLED"
            outcome.reason = (
                f"stopped by {stop}" if isinstance(stop, Interrupted) else "interrupted"
            )
            self._say(f"{plan.label}: stopped; checkpoint saved, the same command resumes it")
            raise
        except Exception as error:
            outcome.reason = f"{type(error).__name__}: {error}"
            raise
        finally:
            if trainer.progress is not None:
                trainer.progress.close()
            if opened.run is not None and outcome.status != "FINISHED":
                warning = opened.run.end(outcome.status, outcome.reason, trainer.history)
                if warning:
                    self._say(warning, style="red")
        if outcome.status == "FAILED":
            self._say(f"{plan.label}: FAILED: {outcome.reason}", style="red")

    # -- the parts of one plan -------------------------------------------------------------

    def _batches(self, plan: Plan, execution: Execution) -> tuple[Any, Any]:
        """Train and test batch sources on the device, in the execution's memory format."""
        from rkrepro.data import cifar, imagenet

        dataset = plan.protocol.dataset
        if dataset == "imagenet":
            return imagenet.imagenet_batches(
                self.data_dir,
                plan.protocol.batch_size,
                execution.device,
                plan.seed,
                plan.train_subset,
                self.workers,
                execution.channels_last,
                gpu_decode=plan.gpu_decode,
            )
        if dataset not in self._arrays:
            self._arrays[dataset] = cifar.load_cifar(dataset, self.data_dir)
        train, test = self._arrays[dataset]
        return cifar.cifar_batches(
            train,
            test,
            plan.protocol.batch_size,
            execution.device,
            plan.seed,
            plan.train_subset,
            execution.channels_last,
        )

    def _open(
        self, plan: Plan, status: PlanStatus, execution: Execution, config: dict[str, Any]
    ) -> OpenedRun:
        """The run to train into: rank 0 opens it (resumed or new); the other processes of a
        group follow with rank 0's checkpoint, read only."""
        mine: list[OpenedRun] = []

        def open_on_main() -> tuple[str, bool, str]:
            mine.append(self._open_run(plan, status, execution, config))
            return mine[0].run_id, mine[0].state is not None, mine[0].how

        run_id, resume, how = self.world.on_main(open_on_main)
        if not mine:  # not rank 0: rank 0 is not writing yet, it waits in the barrier below
            checkpoints = ReadOnlyCheckpoints(self.ledger.checkpoints(plan).dir)
            state = checkpoints.load() if resume else None
            if resume and (state is None or state.get("run_id") != run_id):
                raise RkreproError(f"{plan.label}: rank 0's checkpoint is not readable")
            mine.append(OpenedRun(run_id, None, state, checkpoints, how))
        self.world.barrier()
        return mine[0]

    def _open_run(
        self, plan: Plan, status: PlanStatus, execution: Execution, config: dict[str, Any]
    ) -> OpenedRun:
        """Rank 0: the MLflow run to write (resumed, or new) and the checkpoint to resume."""
        tracker = self.ledger.tracker
        checkpoints = self.ledger.checkpoints(plan)
        env_tags = tracking.environment_tags(
            execution.device_label, self.world.size, _batchnorm(plan, self.world)
        )
        existing = status.run
        if status.state == "resume" and existing is not None:
            state = checkpoints.load()
            if state is not None and state.get("run_id") != existing.run_id:
                state = None
            if state is None and tracker.logged_epochs(existing):
                # Epochs were logged but their checkpoint is gone: retraining them into the
                # same run would mix two histories, so start a fresh run instead.
                tracker.supersede(existing, "no checkpoint")
            else:
                run = TrainingRun(tracker, tracker.resume(existing, env_tags, plan.run_name))
                how = f"resuming run {run.run_id} ({status.detail})"
                return OpenedRun(run.run_id, run, state, checkpoints, how)
        elif existing is not None and existing.status == "RUNNING":
            tracker.supersede(existing, "forced")
        checkpoints.clear()
        log = tracker.create(
            plan.cell.table,
            plan.run_name,
            {**plan.tags(), **env_tags},
            tracking.flatten(config),
            tracking.DatasetInfo(**plan.dataset_info()),
        )
        run = TrainingRun(tracker, log)
        return OpenedRun(run.run_id, run, None, checkpoints, f"new run {run.run_id}", new=True)


def _build(plan: Plan) -> Any:
    from rkrepro.models import build_model

    try:
        return build_model(plan.cell.spec, memory_efficient=plan.options.memory_efficient)
    except ValueError as error:
        raise RkreproError(f"{plan.cell.key}: cannot build the model: {error}") from None


def _log_epoch(run: TrainingRun, record: Any) -> None:
    run.epochs([record])


def _param_counts(model: Any, new: bool) -> tuple[int, int] | None:
    """(paper-rule, total) parameter counts, for a new run only: each is logged once."""
    from rkrepro.models import count_params

    return count_params(model) if new else None


def _batchnorm(plan: Plan, world: World) -> str | None:
    """How BatchNorm normalises in a group: per GPU (the paper's) or over the global batch."""
    if world.size == 1:
        return None
    return "sync" if plan.options.sync_bn else "per-gpu"
