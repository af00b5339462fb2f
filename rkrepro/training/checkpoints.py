"""Checkpoints of one training configuration: written atomically, read defensively.

A reproduction runs for days, so this file decides whether a crash costs minutes or the run:
- ``last.pt`` is replaced only by a complete, fsynced file (temp file + ``os.replace``); the one
  before it is kept as ``prev.pt``, so a torn or corrupt ``last.pt`` falls back one epoch;
- when checkpoint files exist but none can be read, loading stops with a clear error instead of
  letting the caller train from scratch;
- a write that fails (disk full, quota) removes its temp file, leaves both older checkpoints
  untouched and raises one clear :class:`CheckpointWriteError`;
- an exclusive lock per configuration keeps two processes from training the same cell;
- once a run has finished, what it needs to resume is worth nothing and costs disk (two full
  training states per run): it keeps only ``final.pt``, the trained model's weights, and the
  resume state (``last.pt``, ``prev.pt``, ``last.json``) is removed;
- nothing is written through a link someone else planted in ``runs/``: temporary files get
  unpredictable names and are created exclusively, the lock is opened without following a
  link, and the folders below the runs folder must not be links (:mod:`rkrepro.safe_write`);
- nothing in a checkpoint can run code: ``runs/`` may sit on a filesystem other users can write
  (a cluster's shared disk), so files load with ``weights_only=True`` (tensors, numbers, strings
  and plain containers only) and a file that does not load that way is unreadable, like a torn
  one. The trainer saves plain types only (:func:`rkrepro.training.state.rng_states`).

torch is imported only to write or load a checkpoint: the launchers read ``last.json`` (the
epoch a run reached) without it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rkrepro.errors import RkreproError
from rkrepro.safe_write import make_dirs, open_nofollow, write_atomic

CHECKPOINT_FORMAT = 1
# What a finished run keeps: its final weights, ``{"model": state_dict, "run_id", "epochs"}``.
FINAL_NAME = "final.pt"
# Test hook (documented in the README): SIGKILL this process halfway through writing its N-th
# checkpoint, to prove that a kill during a write loses nothing.
FAULT_KILL_IN_CHECKPOINT_ENV = "RKREPRO_FAULT_KILL_IN_CHECKPOINT"


class CheckpointBusy(RkreproError):
    """Another process is training the same configuration."""


class CheckpointCorrupt(RkreproError):
    """Checkpoint files exist but none can be read: training from scratch would hide it."""


class CheckpointWriteError(RkreproError):
    """A checkpoint could not be written (disk full, ...); the older ones are intact."""

    exit_code = 1


class Checkpoints:
    """``last.pt`` (and the one before as ``prev.pt``) of one configuration, written atomically.

    A small ``last.json`` beside them tells ``--dry-run`` the epoch without loading tensors.
    """

    def __init__(self, directory: Path, root: Path | None = None) -> None:
        self.dir = Path(directory)
        # The folder these checkpoints must stay inside (the runs folder): no level between it
        # and ``dir`` may be a link.
        self.root = Path(root) if root is not None else self.dir.parent
        self.last = self.dir / "last.pt"
        self.prev = self.dir / "prev.pt"
        self.info = self.dir / "last.json"
        self.final = self.dir / FINAL_NAME
        self._saves = 0

    def save(self, state: dict[str, Any]) -> None:
        self._saves += 1
        try:
            make_dirs(self.root, self.dir)
            write_atomic(self.last, self._writer(state), rotate=self.prev)
            info = {k: state.get(k) for k in ("epoch", "step_in_epoch", "epochs", "run_id")}
            try:
                write_atomic(self.info, lambda stream: stream.write(json.dumps(info).encode()))
            except OSError:
                self.info.unlink(missing_ok=True)  # a stale summary is worse than none
                raise
            _fsync_dir(self.dir)
        except OSError as error:
            reason = os.strerror(error.errno) if error.errno else str(error)
            hint = " free some space and" if error.errno in _NO_SPACE else ""
            raise CheckpointWriteError(
                f"cannot write checkpoint in {self.dir}: {reason}; the previous checkpoint is "
                f"intact:{hint} rerun the same command to resume"
            ) from None

    def _writer(self, state: dict[str, Any]) -> Any:
        import torch

        def write(handle: Any) -> None:
            if self._fault_kill_now():
                # Half a file on disk, then the hardest possible stop.
                handle.write(b"\x80" * 4096)
                handle.flush()
                os.fsync(handle.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
            torch.save(state, handle)

        return write

    def _fault_kill_now(self) -> bool:
        wanted = os.environ.get(FAULT_KILL_IN_CHECKPOINT_ENV, "").strip()
        return wanted.isdigit() and int(wanted) == self._saves

    def load(self) -> dict[str, Any] | None:
        """The newest readable checkpoint (``prev.pt`` if ``last.pt`` is damaged), or None when
        there is none at all. Files that exist but cannot be read raise
        :class:`CheckpointCorrupt`: silently training from scratch would lose the run."""
        unreadable = []
        for path in (self.last, self.prev):
            if not path.exists():
                continue
            try:
                state = _safe_load(path)
            except Exception as error:  # noqa: BLE001 - any damage means "try the older one"
                unreadable.append(f"{path.name} ({type(error).__name__})")
                print(f"warning: ignoring unreadable checkpoint {path}: {error}", file=sys.stderr)
                continue
            if isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT:
                return state
            unreadable.append(f"{path.name} (not an rkrepro checkpoint)")
        if unreadable:
            raise CheckpointCorrupt(
                f"checkpoints in {self.dir} are unreadable: {', '.join(unreadable)}; "
                "move them away to start this configuration again from scratch"
            )
        return None

    def keep_final(self, weights: dict[str, Any], run_id: str | None, epochs: int) -> Path:
        """Write the finished model's weights to ``final.pt`` (atomically, through no planted
        link); returns its path. Loads with ``torch.load(path, weights_only=True)``."""
        import torch

        state = {"model": weights, "run_id": run_id, "epochs": epochs}
        try:
            make_dirs(self.root, self.dir)
            write_atomic(self.final, lambda handle: torch.save(state, handle))
        except OSError as error:
            reason = os.strerror(error.errno) if error.errno else str(error)
            raise CheckpointWriteError(
                f"cannot write the final weights in {self.dir}: {reason}; the last checkpoint "
                "is intact: rerun the same command to finish the run"
            ) from None
        return self.final

    def drop_resume_state(self) -> None:
        """After the run is recorded as finished: remove what only a resume needs."""
        for path in (self.last, self.prev, self.info):
            path.unlink(missing_ok=True)
        _fsync_dir(self.dir)

    def peek(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.info.read_text())
        except (OSError, ValueError):
            return None

    def clear(self) -> None:
        for path in (self.last, self.prev, self.info):
            path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive lock on this configuration; the OS drops it if we are killed."""
        make_dirs(self.root, self.dir)
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            yield
            return
        fd = open_nofollow(self.dir / "lock", os.O_RDWR | os.O_CREAT)
        with os.fdopen(fd, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise CheckpointBusy(
                    f"another rkrepro process is training this configuration ({self.dir})"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


class ReadOnlyCheckpoints(Checkpoints):
    """The checkpoints of a run another process writes: the other processes of a data-parallel
    run read rank 0's checkpoint but never write or delete it."""

    def save(self, state: dict[str, Any]) -> None:
        return None

    def keep_final(self, weights: dict[str, Any], run_id: str | None, epochs: int) -> Path:
        return self.final

    def drop_resume_state(self) -> None:
        return None

    def clear(self) -> None:
        return None


def _safe_load(path: Path) -> Any:
    """``torch.load`` restricted to data: torch's weights-only unpickler refuses every global
    outside its allow-list, so a planted ``__reduce__`` is an error, never a call. The only
    additions are what NumPy needs to rebuild a plain array, scoped to this call: checkpoints
    from before format-plain RNG states hold NumPy's RNG key array."""
    import numpy as np
    import torch

    multiarray = getattr(np, "_core", None) or np.core
    allowed = [multiarray.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, map_location="cpu", weights_only=True)


_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
