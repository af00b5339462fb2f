"""What the store and the checkpoints say about each plan: done (skip), resume, or new.

The launchers ask before they start jobs (and ``--dry-run`` shows it); a training process asks
again under the plan's checkpoint lock, so that no two processes train one configuration.
Torch-free: a login node plans a campaign without loading torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.console import Console

from rkrepro import paths
from rkrepro.errors import RkreproError
from rkrepro.paths import checkpoint_dir
from rkrepro.safe_write import PlantedLink
from rkrepro.textsafe import clean
from rkrepro.tracking import runs as tracking
from rkrepro.training.checkpoints import Checkpoints

if TYPE_CHECKING:
    from rkrepro.planning.plan import Plan


@dataclass
class PlanStatus:
    state: str  # "done", "resume", "new"
    run: tracking.ExistingRun | None
    detail: str = ""


# The folders rkrepro writes below the runs folder; none of them may be a link.
RUNS_SUBFOLDERS = ("checkpoints", "logs", "artifacts", "slurm")


def checkpoints_for(plan: Plan, tracking_uri: str) -> Checkpoints:
    """The plan's checkpoints in the store ``tracking_uri`` (see :func:`checkpoint_dir`)."""
    return Checkpoints(checkpoint_dir(plan.config_hash, tracking_uri), root=paths.runs_dir())


class Ledger:
    """Plans against one tracking store: which are done, which resume, which are new."""

    def __init__(
        self, tracking_uri: str | None, force: bool = False, console: Console | None = None
    ):
        self.tracker = tracking.Tracker(tracking_uri)
        self.force = force
        self.console = console or Console()

    @property
    def uri(self) -> str:
        return self.tracker.uri

    def say(self, text: str, **style: object) -> None:
        """One line of the run's output, printed as is: run ids and states come from the store
        and checkpoint details from ``runs/``, so no markup and no control character."""
        options: dict = {"highlight": False, "soft_wrap": True, "markup": False, **style}
        self.console.print(clean(text), **options)

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
            for name in RUNS_SUBFOLDERS:
                if (folder / name).is_symlink():
                    raise PlantedLink(
                        f"{folder / name} is a link (to {os.readlink(folder / name)}): rkrepro "
                        f"writes only inside the runs folder; move the runs folder itself "
                        f"instead (RKREPRO_RUNS_DIR, or a link in place of runs/)"
                    )
        return self.tracker.connect(create)

    def checkpoints(self, plan: Plan) -> Checkpoints:
        return checkpoints_for(plan, self.uri)

    def prepare(self, plans: list[Plan]) -> list[Plan]:
        """Before launching parallel jobs: create the store and every experiment once (so that
        no two jobs race to), and leave out the plans already done. Returns those to run."""
        self.connect()
        for table_id in dict.fromkeys(p.cell.table for p in plans):
            self.tracker.experiment(table_id)
        todo = []
        for plan in plans:
            status = self.status(plan)
            if status.state == "done":
                self.say_done(plan, status)
            else:
                todo.append(plan)
        return todo

    def say_done(self, plan: Plan, status: PlanStatus) -> None:
        assert status.run is not None
        self.say(f"{plan.label}: done (run {status.run.run_id}); skipped (--force reruns it)")

    def status(self, plan: Plan) -> PlanStatus:
        existing = self.tracker.latest_run(plan.cell.table, plan.config_hash)
        if existing is None:
            return PlanStatus("new", None)
        if existing.status == "FINISHED":
            if self.force:
                return PlanStatus("new", existing, "forced; a finished run exists")
            return PlanStatus("done", existing)
        if self.force:
            return PlanStatus("new", existing, f"forced; replaces a {existing.status} run")
        info = self.checkpoints(plan).peek()
        detail = existing.status.lower()
        if info and info.get("run_id") == existing.run_id:
            detail += f", checkpoint after epoch {info.get('epoch')}/{plan.protocol.epochs}"
            if info.get("step_in_epoch"):
                detail += f" (+{info['step_in_epoch']} steps)"
        else:
            detail += ", no checkpoint: restarts"
        return PlanStatus("resume", existing, detail)
