"""Run a piece of loading code in a forked child and measure it: how it ended, how long it took,
how much memory it touched. A hang is killed at the timeout instead of hanging the suite."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Outcome:
    error: str | None  # the exception's type name, None if it returned
    message: str
    seconds: float
    peak_mib: float  # resident memory above the child's start (its high-water mark)


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _child(connection, fn: Callable[[], object]) -> None:
    import torch

    torch.set_num_threads(1)
    with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
        refs.write("5")  # the high-water mark starts again from here
    base = _status_kib("VmRSS:")
    started = time.monotonic()
    try:
        fn()
        error, message = None, ""
    except BaseException as caught:  # noqa: BLE001 - reported to the parent
        error, message = type(caught).__name__, str(caught)
    seconds = time.monotonic() - started
    peak = (_status_kib("VmHWM:") - base) / 1024
    connection.send(Outcome(error, message, seconds, peak))


def run_bounded(fn: Callable[[], object], timeout_s: float = 90.0) -> Outcome:
    """``fn()`` in a forked child (it inherits this process: monkeypatches, imports)."""
    context = multiprocessing.get_context("fork")
    parent, child = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(child, fn))
    process.start()
    child.close()
    if not parent.poll(timeout_s):
        process.kill()
        process.join()
        return Outcome("Timeout", f"no answer within {timeout_s:.0f} s", timeout_s, 0.0)
    outcome = parent.recv()
    process.join()
    return outcome
