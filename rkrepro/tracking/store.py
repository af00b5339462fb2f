"""Reaching a store: its URI's kind, the checks that fail in seconds before any training or
reading (SQLite file, database, server), the client whose calls wait out SQLite's lock, the
artifact folder of a local store, and store failures as one line with no password in it.

mlflow is imported inside the functions that need it (it takes seconds), so the fast commands
can use this module.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rkrepro.errors import TrackingError
from rkrepro.paths import runs_dir, sqlite_path, unwritable

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

# SQLite lets one writer in at a time; MLflow waits up to 20 s for the lock (busy_timeout), but
# a transaction that read before writing gets "database is locked" at once when another writer
# got in first. Such calls are retried with exponential backoff and jitter, about a minute in
# all, before the error is shown.
LOCK_RETRIES = 12
LOCK_BACKOFF_S = 0.05
LOCK_BACKOFF_MAX_S = 8.0
_LOCK_MARKERS = ("database is locked", "database is busy", "database table is locked")

# A tracking server that stops answering must not hold a run for minutes in MLflow's default
# HTTP retry backoff (7 retries, factor 2: about 4 minutes per call). These bound every call to
# about a minute; a variable the user set wins.
HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
REACH_TIMEOUT_S = 5.0  # the first request to a server: a stuck one fails in seconds
_UNREACHABLE = ("max retries exceeded", "connection refused", "read timed out", "timed out")
# The password of a ``scheme://user:password@host`` URI, as SQLAlchemy parses it.
_PASSWORD = re.compile(r"^([\w+.-]+://[^:/@]*):[^@]*@")
# The same anywhere in a message (MLflow's own name the URL they failed on, password and all).
_PASSWORD_IN_TEXT = re.compile(r"([\w+.-]+://[^:/@\s]*):[^@\s/]*@")


def shown_uri(uri: str) -> str:
    """``uri`` as messages show it: a password in it becomes ``***`` (as SQLAlchemy shows it)."""
    return _PASSWORD.sub(r"\1:***@", uri, count=1)


def hide_passwords(text: str, uri: str | None = None) -> str:
    """``text`` (a message) with the password of every ``scheme://user:password@`` in it shown
    as ``***``, and ``uri``'s password, wherever else it appears, too."""
    text = _PASSWORD_IN_TEXT.sub(r"\1:***@", text)
    if uri is not None:
        import urllib.parse

        password = _password(uri)
        for form in {password, urllib.parse.unquote(password)} - {""}:
            text = text.replace(form, "***")
    return text


def _password(uri: str) -> str:
    """The password of ``scheme://user:password@host...``; ``""`` when it has none."""
    found = _PASSWORD.match(uri)
    return found.group(0)[len(found.group(1)) + 1 : -1] if found else ""


def without_credentials(url: str) -> tuple[str, str | None]:
    """(``url`` without ``user:password@``, the HTTP Basic ``Authorization`` value for them or
    None): a request library that reads credentials from the URL would otherwise take
    ``user:password@host`` for the host."""
    import base64
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    user, _, password = parts.netloc.rpartition("@")[0].partition(":")
    plain = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    pair = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}"
    return plain, "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")


def is_local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def store_exists(uri: str) -> bool:
    """False only when a local SQLite store has not been created yet (nothing ran)."""
    path = sqlite_path(uri)
    return path is None or path.exists()


def bound_http_calls(uri: str) -> None:
    """For a tracking server: cap MLflow's HTTP timeout and retries (:data:`HTTP_LIMITS`)
    unless the user set them; no effect on other stores. With a password in the URI, MLflow's
    "View run ... at: URL" lines are not printed: their URL is the URI, password and all."""
    if uri.startswith(("http://", "https://")):
        for name, value in HTTP_LIMITS.items():
            os.environ.setdefault(name, value)
        if _password(uri):
            os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"


def check_reachable(uri: str, timeout: float = REACH_TIMEOUT_S, write: bool = True) -> None:
    """Fail in seconds, before any training (or reading), when the store cannot be used: a
    local store that is not an SQLite database or (``write``) sits in a folder that takes no
    new files, a database URI whose driver is not installed, a server that does not answer."""
    path = sqlite_path(uri)
    if path is not None:
        check_sqlite_store(path, write)
        return
    if uri.startswith(("http://", "https://")):
        import http.client
        import urllib.error
        import urllib.request

        try:
            url, authorization = without_credentials(uri.rstrip("/") + "/health")
            request = urllib.request.Request(url)
            if authorization is not None:
                request.add_header("Authorization", authorization)
            with urllib.request.urlopen(request, timeout=timeout):  # noqa: S310 - user's server
                return
        except urllib.error.HTTPError:
            return  # something answered; the API calls will tell if it is MLflow
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as error:
            reason = getattr(error, "reason", error)
            if isinstance(reason, TimeoutError):
                raise TrackingError(
                    f"MLflow tracking server {shown_uri(uri)} did not answer within {timeout:g} s "
                    f"(it accepts connections but sends nothing back); is it overloaded or stuck?"
                ) from None
            reason = hide_passwords(str(reason), uri)
            raise TrackingError(
                f"MLflow tracking server {shown_uri(uri)} is unreachable ({reason})"
            ) from None
        return
    scheme = uri.split(":", 1)[0].lower()
    if scheme.split("+", 1)[0] in _DATABASES:
        check_database(uri, timeout)
    elif scheme == "databricks":
        check_databricks(uri)


def check_databricks(uri: str) -> None:
    """A ``databricks`` URI needs credentials (``DATABRICKS_HOST`` and ``DATABRICKS_TOKEN``, or
    a profile): without them, one line instead of MLflow's warning and paragraph of advice."""
    import logging

    from mlflow.utils.databricks_utils import get_databricks_host_creds

    chatty = logging.getLogger("mlflow.utils.databricks_utils")
    level = chatty.level
    chatty.setLevel(logging.CRITICAL)  # its warning names the same missing credentials
    try:
        get_databricks_host_creds(uri)
    except ImportError as error:
        raise TrackingError(
            f"tracking store {shown_uri(uri)}: needs the Python package databricks-sdk "
            f"(no module {error.name or str(error)!r})"
        ) from None
    except Exception:  # noqa: BLE001 - MLflow's and the SDK's errors alike
        raise TrackingError(
            f"tracking store {shown_uri(uri)}: no Databricks credentials for it (set "
            f"DATABRICKS_HOST and DATABRICKS_TOKEN, or a profile in ~/.databrickscfg)"
        ) from None
    finally:
        chatty.setLevel(level)


def check_sqlite_store(path: Path, write: bool) -> None:
    """An existing store must be an SQLite database (read-only check: a corrupt file is left
    exactly as it is); a store to write needs a folder that takes new files, since SQLite
    keeps its journal next to the database (MLflow would retry opening it for ~100 s)."""
    if write:
        why = unwritable(path.parent)
        if why is not None:
            raise TrackingError(
                f"cannot write the tracking store {path}: its folder {path.parent} does not "
                f"take new files ({why}); use a writable RKREPRO_RUNS_DIR or --tracking-uri"
            )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise TrackingError(
                f"cannot create the tracking store folder {path.parent}: {error.strerror}"
            ) from None
        if path.exists() and not os.access(path, os.W_OK):
            raise TrackingError(
                f"cannot write the tracking store {path}: the file is read-only; use a writable "
                f"RKREPRO_RUNS_DIR or --tracking-uri"
            )
    if not path.exists():
        return
    try:
        con = connect_read_only(path)
        try:
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            con.close()
    except sqlite3.Error as error:
        if is_lock_error(error):
            return  # a busy store is a store; MLflow's calls wait for the lock
        raise TrackingError(
            f"cannot read MLflow store {path}: {error} (left untouched: restore it from a "
            f"backup, or move it away to start a new store)"
        ) from None


def connect_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection to the SQLite file ``path``: what a reader or a check opens, so
    that a corrupt store is left exactly as it is and none is created."""
    import urllib.parse

    location = urllib.parse.quote(path.resolve().as_posix())
    return sqlite3.connect(f"file:{location}?mode=ro", uri=True, timeout=5)


# Database backends MLflow opens through SQLAlchemy (besides SQLite, checked above).
_DATABASES = ("postgresql", "mysql", "mssql")


def check_database(uri: str, timeout: float = REACH_TIMEOUT_S) -> None:
    """A database URI: its SQLAlchemy driver must be importable (MLflow's import of a missing
    one is a traceback; ``postgresql://`` means psycopg 3 to SQLAlchemy 2.1, which the
    ``server`` extra's psycopg2 is not), and one connection bounded by ``timeout`` must open
    (MLflow retries a database that refuses or is silent for ~2 minutes, then a traceback)."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine.url import make_url
    from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
    from sqlalchemy.pool import NullPool

    try:
        url = make_url(uri)
        shown = url.render_as_string(hide_password=True)
        url.get_dialect().import_dbapi()
    except ImportError as error:
        backend = url.get_backend_name()
        hint = (
            "; spell postgresql+psycopg2://... (the driver that pip install 'rkrepro[server]' "
            "installs)"
            if backend == "postgresql"
            else f"; install the driver or name an installed one ({backend}+DRIVER)"
        )
        raise TrackingError(
            f"tracking store {shown}: its database driver {url.get_driver_name()!r} is not "
            f"installed (no Python module {error.name or str(error)!r}){hint}"
        ) from None
    except ArgumentError as error:  # NoSuchModuleError: an unknown +driver; a malformed URI
        raise TrackingError(f"tracking store {uri.split('://', 1)[0]}://...: {error}") from None
    timed = url.get_backend_name() in ("postgresql", "mysql")
    args = {"connect_timeout": max(1, round(timeout))} if timed else {}
    try:
        engine = create_engine(url, poolclass=NullPool, connect_args=args)
        try:
            engine.connect().close()
        finally:
            engine.dispose()
    except DBAPIError as error:
        first = str(error.orig or error).strip().splitlines() or [type(error).__name__]
        raise TrackingError(f"tracking store {shown}: cannot connect ({first[0][:300]})") from None
    except SQLAlchemyError as error:
        raise TrackingError(f"tracking store {shown}: {str(error).splitlines()[0][:300]}") from None


def client(uri: str) -> MlflowClient:
    """An MLflow client whose calls survive SQLite lock contention (see :class:`RetryingClient`).

    A local SQLite store that is not yet :func:`settled` is opened under :func:`creation_lock`:
    MLflow creates and migrates a new store when its client is made, and two processes doing
    that at once (a campaign's parallel jobs on a fresh store) broke one of them in the
    migration. A settled store is opened without it, so that parallel jobs start together."""
    from mlflow.tracking import MlflowClient

    path = sqlite_path(uri)
    if path is None:
        return MlflowClient(tracking_uri=uri)
    lock = contextlib.nullcontext() if settled(path) else creation_lock(path)
    with lock, _quiet_migrations():
        inner = MlflowClient(tracking_uri=uri)
    return RetryingClient(inner)  # type: ignore[return-value]


def settled(path: Path) -> bool:
    """Whether the SQLite store ``path`` was created to the end: its default experiment, which
    MLflow writes after every table and migration, exists. Opening such a store only reads (an
    out-of-date schema is refused, not migrated), so it needs no creation lock."""
    try:
        con = connect_read_only(path)
        try:
            row = con.execute("SELECT 1 FROM experiments WHERE experiment_id = 0").fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return False  # missing, being created, or not a store: the locked path decides
    return row is not None


CREATION_WAIT_S = 300.0  # a store's migrations take seconds; a holder this long is stuck


@contextlib.contextmanager
def creation_lock(path: Path, wait_s: float = CREATION_WAIT_S) -> Iterator[None]:
    """Hold ``FILE.init-lock`` beside the SQLite file ``path`` exclusively: one process at a
    time creates, migrates or checks the store's schema; the others wait (the OS drops the lock
    of a killed holder). Where the folder takes no file (a read-only store that is only read),
    nothing is locked; a link planted there is refused (one line)."""
    import fcntl

    from rkrepro.safe_write import open_nofollow

    lock = path.with_name(path.name + ".init-lock")
    try:
        fd = open_nofollow(lock, os.O_RDWR | os.O_CREAT, 0o644)  # a link: PlantedLink
    except OSError:
        yield  # nothing can create the store here either
        return
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TrackingError(
                        f"another process has held {lock} for {wait_s:g} s while opening the "
                        f"store {path}; is it stuck? (it is free once that process ends)"
                    ) from None
                time.sleep(0.05 + 0.1 * random.random())
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def _quiet_migrations() -> Iterator[None]:
    """MLflow's and alembic's INFO lines while a new store is created ("Creating initial MLflow
    database tables...") are not shown: they would break a one-line error on stderr."""
    import logging

    loggers = [logging.getLogger(name) for name in ("mlflow.store.db.utils", "alembic")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def connect(uri: str, write: bool) -> MlflowClient:
    """The client every reader and the report's writer use: MLflow's HTTP calls bounded, the
    store checked in seconds (:func:`check_reachable`), SQLite's lock waited out."""
    bound_http_calls(uri)
    check_reachable(uri, write=write)
    return client(uri)


def is_lock_error(error: BaseException) -> bool:
    """True for SQLite's "database is locked"/"busy", however MLflow/SQLAlchemy wrapped it."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(getattr(current, "message", "") or current).lower()
        if any(marker in text for marker in _LOCK_MARKERS):
            return True
        current = current.__cause__ or current.__context__
    return False


def retry_locked(fn, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; on an SQLite lock error wait (exponential backoff, jitter) and call again.

    Safe to repeat: a locked SQLite transaction is rolled back whole, nothing of it was written.
    """
    for attempt in range(LOCK_RETRIES):
        try:
            return fn(*args, **kwargs)
        except Exception as error:
            if not is_lock_error(error) or attempt == LOCK_RETRIES - 1:
                raise
            delay = min(LOCK_BACKOFF_MAX_S, LOCK_BACKOFF_S * 2**attempt)
            time.sleep(delay * (0.5 + random.random()))
    raise AssertionError("unreachable")


class RetryingClient:
    """An ``MlflowClient`` whose every method goes through :func:`retry_locked`.

    Several processes write to one local SQLite store (``rkrepro run --gpus``): each write
    waits for the others instead of failing the run.
    """

    def __init__(self, inner: MlflowClient) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            return retry_locked(attr, *args, **kwargs)

        return call


def artifacts_root() -> Path:
    """Where a local store keeps its artifacts: ``runs/artifacts`` (``rkrepro ui`` serves it)."""
    return runs_dir() / "artifacts"


def artifact_location(uri: str, folder: str) -> str | None:
    """Local stores keep an experiment's artifacts under runs/artifacts/<folder>; a server
    decides its own. One rule for every experiment rkrepro creates (tables and reports)."""
    if not is_local_store(uri):
        return None
    return (artifacts_root() / folder).as_uri()


def wrap_errors(uri: str, prefix: str = "tracking store"):
    """Context manager turning store failures into :class:`TrackingError`: one line, which
    starts ``{prefix} {uri}:`` (the URI without its password)."""

    @contextlib.contextmanager
    def _wrapped():
        from mlflow.exceptions import MlflowException

        shown = shown_uri(uri)
        try:
            yield
        except MlflowException as error:
            text = (error.message or str(error)).strip()
            if uri.startswith(("http://", "https://")) and any(
                marker in text.lower() for marker in _UNREACHABLE
            ):
                raise TrackingError(
                    f"MLflow tracking server {shown} is unreachable (it stopped answering); this "
                    f"command stops here, "
                    f"every checkpoint is kept: rerun the same command once the server is back"
                ) from None
            first = text.splitlines()[0] if text else type(error).__name__
            raise TrackingError(f"{prefix} {shown}: {hide_passwords(first, uri)}") from None
        except Exception as error:
            database = _database_error(error)
            if database is None:
                raise
            raise TrackingError(f"{prefix} {shown}: {hide_passwords(database, uri)}") from None

    return _wrapped()


def _database_error(error: BaseException) -> str | None:
    """The first line of SQLite's or the database's own message when ``error`` is one that
    MLflow let through unwrapped (SQLAlchemy's, e.g. "database disk image is malformed" from a
    page torn deeper in the file); None for anything else."""
    from sqlalchemy.exc import DBAPIError, SQLAlchemyError  # mlflow's own dependency

    if isinstance(error, DBAPIError) and error.orig is not None:
        error = error.orig
    elif not isinstance(error, (SQLAlchemyError, sqlite3.Error)):
        return None
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:500]
