"""How a training ends early: a run that cannot go on, or a stop the user asked for.

A run failure (NaN loss, out of memory) ends that run and the command goes on to the next one;
a stop (SIGINT/SIGTERM) saves a checkpoint and ends the command, which the same command resumes.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

MEMORY_EFFICIENT_HINT = "rerun with --memory-efficient (checkpointed dense layers)"


class RunFailure(Exception):
    """This run cannot go on (NaN loss, out of memory); the command goes on to the next one."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NonFiniteLoss(RunFailure):
    pass


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; a checkpoint was written before this was raised."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopSignal:
    """Turns the first SIGINT/SIGTERM into a request the loop honours at the next step.

    A second SIGINT raises KeyboardInterrupt at once, for when saving itself hangs. With several
    processes (:class:`rkrepro.training.distributed.DistributedStop`) :meth:`sync` makes every
    process see the same request at the same step; alone it has nothing to agree on.
    """

    def __init__(self) -> None:
        self.signum: int | None = None

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignal]:
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)

    def sync(self) -> None:
        """Agree on a pending signal with the other processes (nothing to agree on alone)."""

    def check(self) -> None:
        if self.signum is not None:
            raise Interrupted(self.signum)
