"""The local queue: jobs run as subprocesses on slots, as many at once as there are slots; a
progress line per event; SIGINT/SIGTERM forwarded (every job checkpoints and stops); a non-zero
exit if any job failed. Every job is an ordinary ``rkrepro run`` of one cell and one seed
(:mod:`rkrepro.launch.jobs`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from rkrepro.errors import RkreproError
from rkrepro.launch.jobs import STOP_GRACE_S, Job, job_env, job_for, warn_sqlite
from rkrepro.launch.placement import LaunchPlan, Slot
from rkrepro.paths import runs_dir
from rkrepro.safe_write import append_nofollow, make_dirs
from rkrepro.training.progress import format_duration

if TYPE_CHECKING:
    from rkrepro.planning.plan import Plan
    from rkrepro.training.ledger import Ledger


# --------------------------------------------------------------------------------------------
# The local queue.


@dataclass
class Outcome:
    job: Job
    slot: str
    code: int | None  # None: never started
    seconds: float


def _describe(code: int | None) -> str:
    if code is None:
        return "not started"
    if code == 0:
        return "done"
    if code in (130, 143) or code < 0:
        return f"stopped (exit {code}); resumes on rerun"
    return f"FAILED (exit {code})"


def _tail(path: Path, lines: int = 2) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:] if line.strip())


class LocalQueue:
    """Runs jobs on slots, as many at once as there are slots; one log file per job."""

    def __init__(self, slots: list[Slot], console: Console, poll_s: float = 0.5) -> None:
        if not slots:
            raise RkreproError("no slot to run jobs on")
        self.slots = slots
        self.console = console
        self.poll_s = poll_s
        self._lock = threading.RLock()  # a second signal may arrive inside the handler
        self._running: dict[str, subprocess.Popen] = {}
        self._stopping: int | None = None
        self._done = 0
        self._failed = 0
        self._total = 0

    def _say(self, text: str) -> None:
        running = len(self._running)
        waiting = self._total - self._done - running
        head = f"[{self._done}/{self._total} ended, {self._failed} failed, {running} running, "
        self.console.print(
            head + f"{max(waiting, 0)} waiting] {text}", highlight=False, soft_wrap=True
        )

    def _work(self, job: Job, free: queue.Queue[Slot]) -> Outcome:
        slot = free.get()
        try:
            with self._lock:
                if self._stopping is not None:
                    self._done += 1
                    return Outcome(job, slot.name, None, 0.0)
                args = list(job.args)
                if "--device" in args:
                    args[args.index("--device") + 1] = slot.device
                started = time.monotonic()
                with append_nofollow(job.log) as log:
                    proc = subprocess.Popen(
                        [sys.executable, *args],
                        env=job_env(slot.env),
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # a terminal's Ctrl-C reaches us, we forward it
                    )
                self._running[job.label] = proc
                self._say(f"started {job.label} on {slot.name} (log {job.log})")
            code = proc.wait()
            with self._lock:
                self._running.pop(job.label, None)
                self._done += 1
                ok = code == 0
                self._failed += 0 if ok or self._stopping is not None else 1
                detail = "" if ok else f": {_tail(job.log)}"
                seconds = time.monotonic() - started
                self._say(f"{job.label}: {_describe(code)} in {format_duration(seconds)}{detail}")
            return Outcome(job, slot.name, code, seconds)
        finally:
            free.put(slot)

    def _signal(self, signum: int, frame: object) -> None:
        with self._lock:
            again = self._stopping is not None
            self._stopping = self._stopping or signum
            procs = list(self._running.values())
        kind = signal.SIGKILL if again else signal.SIGTERM
        for proc in procs:
            with contextlib.suppress(OSError):
                proc.send_signal(kind)
        if not again:
            self.console.print(
                f"{signal.Signals(signum).name}: stopping {len(procs)} job(s) (they checkpoint);"
                " again to kill them",
                highlight=False,
            )

    def run(self, jobs: list[Job]) -> tuple[int, list[Outcome]]:
        """Run every job; (exit code, outcomes). 0 all done, 1 any failed, 128+sig stopped."""
        self._total = len(jobs)
        free: queue.Queue[Slot] = queue.Queue()
        for slot in self.slots:
            free.put(slot)
        handlers = _install(self._signal)
        outcomes: list[Outcome] = []
        try:
            with concurrent.futures.ThreadPoolExecutor(len(self.slots)) as pool:
                futures = [pool.submit(self._work, job, free) for job in jobs]
                pending = set(futures)
                while pending:  # short waits, so that signals are handled at once
                    _, pending = concurrent.futures.wait(pending, timeout=self.poll_s)
                outcomes = [f.result() for f in futures]
        finally:
            _restore(handlers)
            self._kill_all()
        if self._stopping is not None:
            return 128 + self._stopping, outcomes
        return (1 if any(o.code != 0 for o in outcomes) else 0), outcomes

    def _kill_all(self) -> None:
        """Nothing outlives the queue (e.g. after an unexpected error in the parent)."""
        with self._lock:
            procs = list(self._running.values())
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()


def _install(handler: Callable[[int, Any], None]) -> dict[int, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}


def _restore(handlers: dict[int, Any]) -> None:
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


def summary(outcomes: list[Outcome], console: Console) -> None:
    """One line per job at the end: what happened, how long, where its log is."""
    for o in outcomes:
        console.print(
            f"  {o.job.label}: {_describe(o.code)} [{o.slot}, {format_duration(o.seconds)}] "
            f"{o.job.log}",
            highlight=False,
            soft_wrap=True,
        )


def open_logs(jobs: list[Job]) -> None:
    """Create every job's log before the first job starts: a log that cannot be written (a
    read-only or full ``runs/``, a name over the system's limit) is one line, with no job
    half-launched and no traceback from a queue thread."""
    for job in jobs:
        try:
            make_dirs(runs_dir(), job.log.parent)
            with append_nofollow(job.log):
                pass
        except OSError as error:
            shown = str(job.log)
            if len(shown) > 160:
                shown = shown[:80] + "..." + shown[-60:]
            raise RkreproError(
                f"cannot write the log of job {job.label[:80]}: {shown}: {error.strerror}; "
                f"no job was started"
            ) from None


def run_queue(ledger: Ledger, plans: list[Plan], launch: LaunchPlan) -> int:
    """Create the store and experiments once, then one job per plan on the free slots."""
    from rkrepro.training.signals import Interrupted

    assert launch.slots is not None
    console = ledger.console
    warning = warn_sqlite(ledger.uri, len(launch.slots), launch.launcher)
    if warning:
        print(warning, file=sys.stderr)
    todo = ledger.prepare(plans)
    if not todo:
        console.print(f"0 jobs to run: {len(plans)} runs done", highlight=False)
        return 0
    jobs = [job_for(p, "auto", launch.nproc) for p in todo]
    open_logs(jobs)
    console.print(
        f"{len(jobs)} jobs on {launch.describe()}: " + ", ".join(s.name for s in launch.slots),
        highlight=False,
        soft_wrap=True,
    )
    code, outcomes = LocalQueue(launch.slots, console).run(jobs)
    summary(outcomes, console)
    ended = sum(o.code == 0 for o in outcomes)
    failed = sum(o.code not in (0, None) for o in outcomes) if code < 128 else 0
    console.print(
        f"{ended}/{len(jobs)} jobs done" + (f", {failed} failed" if failed else ""),
        highlight=False,
    )
    if code >= 128:
        raise Interrupted(code - 128)
    return code
