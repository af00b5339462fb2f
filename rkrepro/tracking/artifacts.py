"""A run's artifacts in a local artifact store (``runs/artifacts/...``), written without following
a link rkrepro did not make.

MLflow's local artifact repository copies a file to ``<run>/artifacts/NAME`` through whatever
is there: someone who can write a shared ``runs/`` and knows a run's id (it is in the store)
could plant ``metrics.csv -> ~/.bashrc`` and have the end of a resumed run write through it.
So for a local (``file:``) artifact location rkrepro writes the file itself, as MLflow would lay
it out: the folders made one level at a time (a level that is a link is refused, one line), the
file written whole under a new name and renamed over ``NAME`` (a link there is replaced, its
target untouched). Any other artifact location (a server's) is written by MLflow.
"""

from __future__ import annotations

import os
import urllib.parse
import urllib.request
from pathlib import Path

from rkrepro.paths import runs_dir
from rkrepro.safe_write import make_dirs, write_atomic

ARTIFACT_MODE = 0o644  # what MLflow's copy of a new file gives it (umask 022)


def local_artifact_dir(artifact_uri: str) -> Path | None:
    """The folder of a ``file:`` (or schemeless) artifact URI; None for any other kind."""
    parts = urllib.parse.urlsplit(artifact_uri)
    if parts.scheme == "file":
        return Path(urllib.request.url2pathname(parts.path))
    if parts.scheme == "":
        return Path(artifact_uri)
    return None


def write_artifact(folder: Path, name: str, data: bytes) -> Path:
    """``data`` as the artifact ``name`` (``plots/x.png``) of the run whose artifact folder is
    ``folder``; returns the file. Below the runs folder every level is checked (the runs folder
    itself may be a link); elsewhere the run's own folders (``<run_id>/artifacts/...``)."""
    target = Path(folder).absolute() / name
    make_dirs(_root(Path(folder).absolute()), target.parent)

    def fill(stream) -> None:
        os.fchmod(stream.fileno(), ARTIFACT_MODE)
        stream.write(data)

    write_atomic(target, fill, sync=False)
    return target


def _root(folder: Path) -> Path:
    """Where the checked levels start: the runs folder if ``folder`` is inside it, else the
    experiment's artifact location (``folder`` is ``<location>/<run_id>/artifacts``)."""
    runs = runs_dir().absolute()
    return runs if folder.is_relative_to(runs) else folder.parent.parent
