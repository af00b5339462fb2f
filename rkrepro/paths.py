"""Where runs and data live: one rule for the writer (training) and the readers (list, report,
status).

Free of torch and mlflow, so the fast commands can use it.
"""

from __future__ import annotations

import os
from pathlib import Path

from rkrepro.textsafe import one_line

RUNS_DIR_ENV = "RKREPRO_RUNS_DIR"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
DATA_DIR_ENV = "RKREPRO_DATA_DIR"


def runs_dir() -> Path:
    """``$RKREPRO_RUNS_DIR``, else ``./runs``: the local store, artifacts and checkpoints.

    Its path reaches job scripts (SLURM's ``#SBATCH`` lines, shell lines) and store URIs, so a
    control character in it (a newline would start a line of its own) is refused here."""
    folder = Path(os.environ.get(RUNS_DIR_ENV) or "runs").absolute()
    text = str(folder)
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        from rkrepro.errors import RkreproError

        raise RkreproError(
            f"the runs folder {ascii(text)[:120]} holds a control character (a newline would "
            f"become a line of a job script); use a folder without one ({RUNS_DIR_ENV})"
        )
    return folder


def unwritable(folder: Path) -> str | None:
    """None when ``folder`` takes new files, or could be made where its nearest existing
    parent takes them; else why not, in the system's words ("Read-only file system",
    "Permission denied"). Tried for real, with a file made and removed at once (permission
    bits do not stop root, a read-only mount does); creates no folder."""
    import tempfile

    existing = folder.absolute()
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a folder"
    try:
        handle, probe = tempfile.mkstemp(prefix=".rkrepro-write-check-", dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        return error.strerror or str(error)
    return None


def default_data_dir() -> Path:
    """``$RKREPRO_DATA_DIR``, else ``./data``: where the data sets are read from."""
    return Path(os.environ.get(DATA_DIR_ENV) or "data")


# Characters a path cannot carry inside an SQLite URI: ``?`` and ``#`` end the path part and
# ``%`` starts an escape. Percent-quoting them is not enough: MLflow makes the store's folder
# from the quoted text itself (a stray ``exp%3F1/`` beside the real ``exp?1/``).
URI_BREAKING = "?#%"


def local_store_uri() -> str:
    """The embedded default: an SQLite store under :func:`runs_dir`, no server needed. A runs
    folder whose path would end or escape the URI (``exp?1/runs/mlflow.db`` opened the store
    ``exp``) is refused with one line."""
    folder = runs_dir()
    found = sorted({c for c in str(folder) if c in URI_BREAKING})
    if found:
        from rkrepro.errors import RkreproError

        raise RkreproError(
            f"the runs folder {ascii(str(folder))[:120]} holds {' '.join(found)}, which a local "
            f"MLflow store's URI cannot carry (the runs would go to another file); use a folder "
            f"without ?, # or % ({RUNS_DIR_ENV}), or a store of your own (--tracking-uri)"
        )
    return f"sqlite:///{folder / 'mlflow.db'}"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else :func:`local_store_uri`.

    A URI with a control character (CR/LF would split an HTTP request, or a message) is
    refused with one line that shows only its scheme (the rest may hold a password)."""
    chosen = uri or os.environ.get(TRACKING_URI_ENV) or local_store_uri()
    if one_line(chosen) != chosen:
        from rkrepro.errors import RkreproError

        scheme, sep, _ = chosen.partition("://")
        shown = f"{ascii(one_line(scheme))[1:-1][:20]}://..." if sep else "(a path)"
        raise RkreproError(
            f"the tracking URI {shown} holds a control character (a line break would split a "
            f"request or a message); remove it (--tracking-uri or {TRACKING_URI_ENV})"
        )
    return chosen


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///FILE`` URI; ``None`` for any other kind of store.

    SQLAlchemy spelling: three slashes then a relative path, four for an absolute one.
    """
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None
    path = tracking_uri[len(prefix) :].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path)


def checkpoint_dir(config_hash: str, tracking_uri: str) -> Path:
    """Where one configuration's checkpoints live in the store ``tracking_uri``.

    The store is part of the place: a checkpoint belongs to one run of one store, so the same
    cell trained against another ``--tracking-uri`` must neither resume from nor clear the
    default store's checkpoint. ``tracking_uri`` is the resolved URI the run is logged to
    (:func:`resolve_tracking_uri`), required: a default here would silently mean the default
    store, and a caller that forgot the URI would look for the checkpoints of a run logged
    elsewhere in the wrong folder. The default local store keeps ``runs/checkpoints/HASH``;
    every other store gets ``runs/checkpoints/store-DIGEST/HASH``, DIGEST naming its URI (an
    SQLite file by its absolute path, so two spellings of one file share their checkpoints)."""
    import hashlib

    if not tracking_uri:
        raise ValueError("checkpoint_dir needs the tracking URI of the run's store")
    root = runs_dir() / "checkpoints"
    uri = tracking_uri
    path = sqlite_path(uri)
    if path is not None:
        if path.absolute() == (runs_dir() / "mlflow.db").absolute():
            return root / config_hash
        uri = f"sqlite:///{path.absolute()}"
    digest = hashlib.sha256(uri.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return root / f"store-{digest}" / config_hash
