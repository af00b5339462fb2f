"""Writing files that never follow a link rkrepro did not make.

``runs/`` may sit on a shared disk that a colleague, or a compromised job, can write: a link
planted where rkrepro writes (a checkpoint's temporary file, a job log, a plot, the lock) would
otherwise make rkrepro write through it, outside ``runs/`` (``~/.bashrc``). So:

- whole files are written to a temporary file created exclusively under an unpredictable name
  in the target folder (``mkstemp``: ``O_CREAT|O_EXCL``, so never through an existing link) and
  then renamed over the target (a rename replaces a link, it does not follow it);
- files opened to append (job logs) or to lock are opened with ``O_NOFOLLOW``;
- folders are made one level at a time below a root, and a level that is a link is refused.

Which links are accepted: the runs folder itself may be a link (``runs -> /scratch/me/runs``,
the user's own choice); a link anywhere below it where rkrepro writes is refused with one line.
Torch-free.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from rkrepro.errors import RkreproError


class PlantedLink(RkreproError):
    """A link where rkrepro writes: it would write outside the folder it was given."""


def _refuse(path: Path, what: str) -> PlantedLink:
    return PlantedLink(
        f"{path} is a link ({what}): rkrepro never writes through a link it did not make; "
        f"remove it (someone with write access to this folder may have planted it)"
    )


def make_dirs(root: Path, target: Path) -> Path:
    """``target`` (inside ``root``) as a folder, made one level at a time; a level below ``root``
    that is a link is refused (one line), one that is not a folder is ``NotADirectoryError``.
    ``root`` itself may be a link."""
    root, target = Path(root).absolute(), Path(target).absolute()
    try:
        parts = target.relative_to(root).parts
    except ValueError:
        raise RkreproError(f"{target} is not inside {root}") from None
    root.mkdir(parents=True, exist_ok=True)
    current = root
    for part in parts:
        current = current / part
        try:
            os.mkdir(current)
            continue
        except FileExistsError:
            pass
        if current.is_symlink():
            raise _refuse(current, f"to {os.readlink(current)}")
        if not current.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(current))
    return target


def write_atomic(
    path: Path,
    write: Callable[[IO[bytes]], object],
    sync: bool = True,
    rotate: Path | None = None,
) -> None:
    """Write ``path`` whole: ``write`` fills a new temporary file beside it (created exclusively,
    unpredictable name), which then replaces ``path`` (a link there is replaced, not followed);
    with ``rotate``, the previous ``path`` is first renamed to it. On any failure the temporary
    file is removed and ``path`` is untouched."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            if sync:
                os.fsync(stream.fileno())
        if rotate is not None and os.path.lexists(path):
            os.replace(path, rotate)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def write_bytes_atomic(path: Path, data: bytes, sync: bool = True) -> None:
    write_atomic(path, lambda stream: stream.write(data), sync)


def open_nofollow(path: Path, flags: int, mode: int = 0o644) -> int:
    """``os.open`` that refuses a link at ``path`` (one line) instead of following it."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), mode)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise _refuse(Path(path), f"to {os.readlink(path)}") from None
        raise


@contextlib.contextmanager
def append_nofollow(path: Path) -> Iterator[IO[bytes]]:
    """``path`` opened to append (a job log), never through a link."""
    fd = open_nofollow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    with os.fdopen(fd, "ab") as stream:
        yield stream
