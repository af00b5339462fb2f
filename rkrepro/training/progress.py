"""The console progress the trainer reports to: a live bar on a terminal, a line per epoch
everywhere (logs and pipes keep a readable history)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from rich.console import Console

if TYPE_CHECKING:
    from rkrepro.training.state import EpochRecord


def format_duration(seconds: float) -> str:
    """``1h05m`` or ``4m07s``: how long a run or job took or has left."""
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
            f"ETA {format_duration(eta)}",
            highlight=False,
            soft_wrap=True,
        )

    def close(self) -> None:
        pass


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

    def close(self) -> None:
        if self.task is not None:
            self.bar.stop()


def for_console(console: Console, label: str, batch_size: int) -> PlainProgress:
    """A bar on a terminal, plain lines otherwise."""
    if not console.is_terminal:
        return PlainProgress(console, label)
    progress = RichProgress(console, label)
    progress.batch = batch_size
    return progress
