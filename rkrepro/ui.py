"""``rkrepro ui``: MLflow's web UI on the local store, for one user.

One uvicorn worker (mlflow's default of 4 took ~2 minutes to answer on a loaded 2-core
machine), loopback unless ``--expose`` (MLflow's REST API has no authentication), and once the
server answers, the URL of each table's runs view (``/#/experiments/ID/runs``), which is what a
reproduction needs (the experiments are tagged as model training, so the UI opens on the runs).
"""

from __future__ import annotations

import ipaddress
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

from rkrepro.errors import RkreproError
from rkrepro.tracking import reader

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)  # noqa: E501
READY_TIMEOUT_S = 300.0


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
        (table_id, f"{base_url}/#/experiments/{exp_id}/runs")
        for table_id, exp_id in reader.experiments(uri)
    ]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our own server
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def serve(uri: str, artifacts: str, host: str, port: int) -> int:
    """Run ``mlflow ui`` until it ends (Ctrl-C stops it); returns its exit code."""
    argv = [
        sys.executable, "-m", "mlflow", "ui",
        "--backend-store-uri", uri,
        "--default-artifact-root", artifacts,
        "--host", host, "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    base = f"http://{'[' + shown + ']' if ':' in shown else shown}:{port}"
    print(f"Starting the MLflow UI on {base} for {uri} (1 worker) ...", file=sys.stderr)
    process = subprocess.Popen(argv)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while process.poll() is None and time.monotonic() < deadline:
            if _answers(f"{base}/health"):
                views = runs_views(uri, base)
                print(f"MLflow UI ready: {base}", flush=True)
                for table_id, url in views:
                    print(f"  {table_id}: {url}", flush=True)
                break
            time.sleep(0.5)
        return process.wait()
    except KeyboardInterrupt:
        process.send_signal(signal.SIGINT)
        try:
            return process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            return 130
    finally:
        if process.poll() is None:
            process.terminate()
