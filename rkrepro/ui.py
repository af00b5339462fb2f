"""``rkrepro ui``: MLflow's web UI on the local store, for one user, started and stopped as one
thing.

- One uvicorn worker and no job runner (mlflow's default of 4 workers plus a job runner with
  seven huey consumers took ~2 minutes to answer on a loaded 2-core machine; the jobs serve
  GenAI features a training store does not use).
- Loopback unless ``--expose`` (MLflow's REST API has no authentication).
- A port that something already listens on is refused before anything starts, and the server
  that answers must be the one started here (its listening socket belongs to one of its
  processes): otherwise the URLs printed would be another program's.
- ``mlflow ui`` starts uvicorn and more processes; they all run in one process group of their
  own, which SIGTERM, SIGINT and SIGHUP to ``rkrepro ui`` stop as a whole (no orphan keeps
  serving the port).
- Once the server answers, the URL of each table's runs view in MLflow's model-training
  workflow (``/#/experiments/ID/runs?workflowType=machine_learning``: the UI reads the workflow
  from that parameter, else from the browser's storage, whose default is GenAI).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from rkrepro.errors import RkreproError
from rkrepro.processes import group_members
from rkrepro.tracking import keys as mlflow_keys
from rkrepro.tracking import reader

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)  # noqa: E501
READY_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 10.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def check_address(host: str, port: int, expose: bool) -> None:
    """A valid interface and port; anything but loopback only with ``--expose``."""
    if not 1 <= port <= 65535:
        raise RkreproError(f"--port must be in 1..65535, got {port}")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME.match(host):
            shown = host if len(host) <= 60 and host.isprintable() else "this value"
            raise RkreproError(
                f"--host {shown!r} is neither an IP address nor a host name"
            ) from None
        loopback = host == "localhost"
    else:
        loopback = address.is_loopback
    if not loopback and not expose:
        raise RkreproError(
            f"--host {host} would let anyone who reaches port {port} read and change every run "
            "(MLflow's REST API has no authentication); add --expose if that is what you want"
        )


def runs_views(uri: str, base_url: str) -> list[tuple[str, str]]:
    """(table id, URL of its runs view) for each rkrepro experiment of a local SQLite store."""
    return [
        (table_id, mlflow_keys.ui_url(base_url, exp_id))
        for table_id, exp_id in reader.experiments(uri)
    ]


# --------------------------------------------------------------------------------------------
# The port: free before, and ours once it answers.


def _addresses(host: str, port: int) -> list[tuple[int, tuple]]:
    """(family, socket address) of each address ``host`` names; the wildcard hosts are probed
    on their loopback address (that is where a browser on this machine goes)."""
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    try:
        infos = socket.getaddrinfo(shown, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise RkreproError(f"--host {host}: {error.strerror}") from None
    return list(dict.fromkeys((family, address) for family, _, _, _, address in infos))


def check_port_free(host: str, port: int) -> None:
    """Refuse a port that a program already listens on (one that never answers, or another
    web server), in one line, before anything starts."""
    for family, address in _addresses(host, port):
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.settimeout(2.0)
            try:
                probe.connect(address)
            except OSError:
                pass
            else:
                raise RkreproError(_taken(host, port, "a program accepts connections there"))
    bind_host = host if host not in ("localhost",) else "127.0.0.1"
    for family, address in _addresses(bind_host, port):
        if host in ("0.0.0.0", "::"):
            address = (host, port, *address[2:])
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # As uvicorn binds: a socket left in TIME_WAIT by a UI that just stopped is no
            # reason to refuse, a listening one is.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as error:
                raise RkreproError(_taken(host, port, error.strerror or str(error))) from None


def _taken(host: str, port: int, why: str) -> str:
    return (
        f"port {port} on {host} is taken ({why}); stop that program or choose another --port "
        "(nothing was started)"
    )


def _listening_inodes(port: int) -> set[str] | None:
    """Socket inodes listening on ``port`` (any address), from ``/proc/net/tcp*``; None where
    the system has no such table (not Linux)."""
    found, seen_table = set(), False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        seen_table = True
        for line in lines:
            fields = line.split()
            listening = len(fields) > 9 and fields[3] == "0A"  # TCP_LISTEN
            if listening and int(fields[1].rsplit(":", 1)[1], 16) == port:
                found.add(fields[9])
    return found if seen_table else None


def _serves_port(group: int, port: int) -> bool | None:
    """Whether a process of ``group`` holds the socket listening on ``port``; None where this
    cannot be told (no ``/proc``)."""
    inodes = _listening_inodes(port)
    if inodes is None:
        return None
    for pid in group_members(group):
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        if any(link.startswith("socket:[") and link[8:-1] in inodes for link in links):
            return True
    return False


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our own server
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


# --------------------------------------------------------------------------------------------
# The server's processes: one group, stopped as a whole.


class _Stop(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def _stopped_by_signals() -> Iterator[None]:
    """The first SIGTERM, SIGINT or SIGHUP raises :class:`_Stop` here (the caller stops its
    group); later ones are ignored, so that they cannot interrupt the stopping, which ends in
    SIGKILL anyway."""
    stopping: list[int] = []

    def handler(signum: int, _frame: object) -> None:
        if not stopping:
            stopping.append(signum)
            raise _Stop(signum)

    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def stop_group(process: subprocess.Popen, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM to every process of the server's group, SIGKILL to what is left after
    ``timeout``; returns once none is left."""
    group = process.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=0.1)
        if process.poll() is not None and not group_members(group):
            return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + timeout
    while group_members(group) and time.monotonic() < deadline:
        time.sleep(0.05)


def serve(uri: str, artifacts: str, host: str, port: int) -> int:
    """Run ``mlflow ui`` until it ends or a signal stops it; returns the exit code."""
    check_port_free(host, port)
    argv = [
        sys.executable, "-m", "mlflow", "ui",
        "--backend-store-uri", uri,
        "--default-artifact-root", artifacts,
        "--host", host, "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    env = dict(os.environ)
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    base = f"http://{'[' + shown + ']' if ':' in shown else shown}:{port}"
    print(f"Starting the MLflow UI on {base} for {uri} (1 worker) ...", file=sys.stderr)
    process: subprocess.Popen | None = None
    with _stopped_by_signals():
        try:
            process = subprocess.Popen(argv, env=env, start_new_session=True)
            _wait_until_ready(process, base, port)
            views = runs_views(uri, base)
            print(f"MLflow UI ready: {base}", flush=True)
            for table_id, url in views:
                print(f"  {table_id}: {url}", flush=True)
            print("Stop it with Ctrl-C.", file=sys.stderr, flush=True)
            return process.wait()
        except _Stop as stop:
            print(f"Stopping the MLflow UI ({stop}) ...", file=sys.stderr, flush=True)
            return 128 + stop.signum
        finally:
            if process is not None:
                stop_group(process)


def _wait_until_ready(process: subprocess.Popen, base: str, port: int) -> None:
    """Until the server answers; it must be the one ``process`` started."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        code = process.poll()
        if code is not None:
            raise RkreproError(f"the MLflow UI stopped before it answered (exit code {code})")
        if _answers(f"{base}/health"):
            if _serves_port(process.pid, port) is False:
                raise RkreproError(
                    f"another program answers on port {port}, not the MLflow UI started here; "
                    "choose another --port"
                )
            return
        time.sleep(0.5)
    raise RkreproError(f"the MLflow UI did not answer on {base} within {READY_TIMEOUT_S:.0f} s")
