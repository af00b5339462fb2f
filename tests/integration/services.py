"""Bring up real services on this machine for the integration tests, and tear them down.

Everything lives in one temp folder and binds 127.0.0.1 on free ports; nothing touches a
cluster or database already on the host:

- a single-node SLURM cluster (slurmctld + slurmd, Debian's packages) with its own munged
  (own key and socket, ``AuthInfo=socket=...``) and its own ``SLURM_CONF``; it refuses to start
  when a slurmctld is already running on the host. Its folder names the process that started
  it; a watchdog stops the cluster when that process dies without stopping it (a killed test
  run), and each start first stops what such a run left (munged, slurmstepd and their jobs
  survive the death of the run's process group);
- an ``mlflow server`` with a SQLite backend, or with a PostgreSQL 15 backend in its own
  ``initdb`` cluster (run as the ``postgres`` user, on its own port and socket folder).

Run as a script to try it by hand::

    python3 tests/integration/services.py up slurm|sqlite|postgres   # prints the env, waits
    python3 tests/integration/services.py reap                       # stop killed runs' clusters
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")
MUNGED = "/usr/sbin/munged"
SLURMCTLD = "/usr/sbin/slurmctld"
SLURMD = "/usr/sbin/slurmd"


class Unavailable(Exception):
    """A service cannot be brought up here (missing binaries, not root, a foreign cluster)."""


def free_port() -> int:
    """A TCP port nobody listens on now (127.0.0.1), away from the services' defaults."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout: float, what: str, log: Path | None = None) -> None:
    """Poll ``check`` until it is true; on timeout raise with the log's tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
    raise RuntimeError(f"{what} did not come up in {timeout:.0f} s\n{tail}")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Service:
    """Processes started for one service, and the environment a client needs."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)
    procs: list[subprocess.Popen] = field(default_factory=list)
    pidfiles: list[Path] = field(default_factory=list)
    stops: list[list[str]] = field(default_factory=list)
    uri: str = ""
    before_stop: list = field(default_factory=list)  # callables, run first
    after_stop: list = field(default_factory=list)  # callables, run once the processes are gone

    def stop(self) -> None:
        """Stop what this service started (by pid), newest first, then remove its folder."""
        for hook in self.before_stop:
            with contextlib.suppress(Exception):
                hook()
        for argv in self.stops:
            subprocess.run(argv, capture_output=True, timeout=60, check=False)
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for pidfile in self.pidfiles:
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pidfile.read_text().split()[0]), signal.SIGTERM)
        time.sleep(0.5)
        for hook in self.after_stop:
            with contextlib.suppress(Exception):
                hook()
        shutil.rmtree(self.root, ignore_errors=True)


def _need(*paths: str | Path) -> None:
    for path in paths:
        if not (Path(path).exists() or shutil.which(str(path))):
            raise Unavailable(f"{path} not found (install slurmctld slurmd slurm-client munge)")


def _running(name: str) -> bool:
    return subprocess.run(["pgrep", "-x", name], capture_output=True).returncode == 0


# ----------------------------------------------------------------------------------------------
# Processes, told apart by what /proc says of them (never by name alone)


def _proc(pid: int, what: str) -> bytes:
    try:
        return (Path("/proc") / str(pid) / what).read_bytes()
    except OSError:
        return b""


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _start_time(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, /proc/PID/stat field 22), None
    when there is none: with the pid it names one process even once the pid is reused."""
    fields = _proc(pid, "stat").rsplit(b")", 1)[-1].split()
    return fields[19].decode() if len(fields) > 19 else None


def _alive(pid: int) -> bool:
    """Process ``pid`` exists and is not a zombie (a killed orphan stays one where nothing
    reaps it)."""
    fields = _proc(pid, "stat").rsplit(b")", 1)[-1].split()
    return bool(fields) and fields[0] != b"Z"


def _descendants(roots: set[int]) -> set[int]:
    """``roots`` and every process below them."""
    children: dict[int, list[int]] = {}
    for pid in _pids():
        fields = _proc(pid, "stat").rsplit(b")", 1)[-1].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(pid)
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo += children.get(pid, [])
    return found


# ----------------------------------------------------------------------------------------------
# SLURM

SLURM_PREFIX = "rkrepro-slurm-"  # a test cluster's folder: <tmp>/rkrepro-slurm-XXXXXXXX
OWNER = "owner"  # in that folder: "PID START_TIME" of the process that started the cluster
CLUSTER_NAME = "ClusterName=rkrepro-test"  # in its slurm.conf


def cluster_processes(root: Path) -> set[int]:
    """The processes of the test cluster in ``root``, and no other: its munged, slurmctld and
    slurmd (their command line names a file in ``root``), its slurmstepds (their environment
    carries its ``SLURM_CONF``), any job process of it that outlived its slurmstepd
    (``SLURM_CONF`` and ``SLURM_JOB_ID``), and everything below those. A shell that exported
    the cluster's ``SLURM_CONF`` is not one of them."""
    inside = (str(root) + "/").encode()
    conf = f"SLURM_CONF={root / 'slurm.conf'}".encode()
    daemons, stepds = set(), set()
    for pid in _pids():
        if pid == os.getpid():
            continue
        name = _proc(pid, "comm").strip()
        if name in (b"munged", b"slurmctld", b"slurmd") and inside in _proc(pid, "cmdline"):
            daemons.add(pid)
            continue
        environ = _proc(pid, "environ").split(b"\0")
        if conf in environ and (
            name == b"slurmstepd" or any(e.startswith(b"SLURM_JOB_ID=") for e in environ)
        ):
            stepds.add(pid)
    return _descendants(daemons | stepds) - {os.getpid()}


def _kill(pids: set[int]) -> None:
    """SIGKILL these processes (slurmstepd ignores SIGTERM) and wait until they are gone."""
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)


def _owner_alive(root: Path) -> bool | None:
    """Whether the process that started the cluster in ``root`` still runs; None when the
    folder names none (a cluster of an older version of these tests)."""
    try:
        pid, started = (root / OWNER).read_text().split()
        return _start_time(int(pid)) == started
    except (OSError, ValueError):
        return None


def reap_stale_clusters(base: Path | None = None) -> list[Path]:
    """Stop the test clusters that killed runs left under ``base`` (the temp folder) and remove
    their folders; returns those folders. A cluster is left over when the process that started
    it is gone (or, for a folder that names none, when its slurmctld is gone too); a cluster
    whose owner still runs, and any cluster these tests did not start, are not touched."""
    reaped = []
    for root in sorted(Path(base or tempfile.gettempdir()).glob(SLURM_PREFIX + "*")):
        try:
            ours = (root / OWNER).exists() or CLUSTER_NAME in (root / "slurm.conf").read_text()
        except OSError:
            ours = False
        if not root.is_dir() or not ours:
            continue
        pids = cluster_processes(root)
        alive = _owner_alive(root)
        if alive is None:  # no owner named: left over once its controller is gone
            alive = any(_proc(p, "comm").strip() == b"slurmctld" for p in pids)
        if alive:
            continue
        _kill(pids)
        shutil.rmtree(root, ignore_errors=True)
        reaped.append(root)
    return reaped


def _watch(root: Path) -> None:
    """The watchdog (``services.py watch ROOT``, in its own session): once the owner of the
    cluster in ``root`` has died without removing it (the normal stop removes the folder),
    stop the cluster and remove the folder."""
    while root.exists():
        if _owner_alive(root) is False:
            reap_stale_clusters(root.parent)
            return
        time.sleep(0.5)


def start_slurm(base: Path | None = None) -> Service:
    """A one-node cluster (this host, all its CPUs, no GPU) with its own munged and config."""
    _need(MUNGED, SLURMCTLD, SLURMD, "sbatch", "scontrol", "squeue")
    if os.geteuid() != 0:
        raise Unavailable("the SLURM test cluster runs slurmd as root: run the tests as root")
    for root in reap_stale_clusters(base):
        print(f"stopped the test cluster a killed run left in {root}", file=sys.stderr)
    if _running("slurmctld") or _running("slurmd"):
        raise Unavailable("a slurmctld/slurmd already runs on this host; not touching it")
    try:
        pwd.getpwnam("munge")
    except KeyError:
        raise Unavailable("no munge user (install the munge package)") from None
    root = Path(tempfile.mkdtemp(prefix=SLURM_PREFIX, dir=base))
    root.chmod(0o755)
    (root / OWNER).write_text(f"{os.getpid()} {_start_time(os.getpid())}\n")
    svc = Service(root)
    svc.before_stop.append(lambda: _cancel_all_jobs(svc))
    svc.after_stop.append(lambda: _kill(cluster_processes(root)))
    watchdog = [sys.executable, __file__, "watch", str(root)]
    svc.procs.append(
        subprocess.Popen(watchdog, start_new_session=True, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    )  # fmt: skip
    try:
        _start_munge(svc)
        _start_slurm_daemons(svc)
    except BaseException:
        svc.stop()
        raise
    return svc


def _slurm_tool_env(svc: Service) -> dict[str, str]:
    path = os.environ.get("RKREPRO_TEST_REAL_PATH") or os.environ.get("PATH", "")
    return {**os.environ, **svc.env, "PATH": path}


def _cancel_all_jobs(svc: Service, timeout: float = 20) -> None:
    """Cancel every job of this cluster (a failed test may leave one running) and wait for
    the queue to drain, so that slurmd ends their steps before it stops."""
    if "SLURM_CONF" not in svc.env:
        return
    env = _slurm_tool_env(svc)
    ids = subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True,
                         timeout=30).stdout.split()  # fmt: skip
    if not ids:
        return
    subprocess.run(["scancel", "--full", *ids], env=env, capture_output=True, timeout=30)
    wait_queue_empty(env, timeout)


def wait_queue_empty(env: dict[str, str], timeout: float) -> str:
    """Poll ``squeue`` until the cluster has no job; returns what is still queued ("" when
    empty) once ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True).stdout
        if not out.strip() or time.monotonic() > deadline:
            return out.strip()
        time.sleep(0.5)


def _start_munge(svc: Service) -> None:
    munge = svc.root / "munge"
    munge.mkdir(mode=0o700)
    key = munge / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    shutil.chown(munge, "munge", "munge")
    shutil.chown(key, "munge", "munge")
    sock = munge / "munge.socket"
    pidfile = munge / "munged.pid"
    log = munge / "munged.log"
    subprocess.run(
        ["runuser", "-u", "munge", "--", MUNGED, f"--key-file={key}", f"--socket={sock}",
         f"--pid-file={pidfile}", f"--log-file={log}", f"--seed-file={munge / 'seed'}",
         "--force"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    svc.pidfiles.append(pidfile)
    munge.chmod(0o755)  # slurmd/slurmctld (root) and job users reach the socket
    wait_until(sock.exists, 10, "munged", log)
    svc.env["_MUNGE_SOCKET"] = str(sock)


def _start_slurm_daemons(svc: Service) -> None:
    root = svc.root
    host = socket.gethostname().split(".")[0]
    cpus = os.cpu_count() or 1
    mem_mb = max(512, int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20) // 2)
    ctld_port, d_port = free_port(), free_port()
    for sub in ("state", "spool", "log"):
        (root / sub).mkdir()
    conf = root / "slurm.conf"
    conf.write_text(
        f"""ClusterName=rkrepro-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={svc.env["_MUNGE_SOCKET"]}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/slurmd-%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
JobRequeue=1
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=10
SchedulerParameters=sched_interval=1
PlugStackConfig={root}/plugstack.conf
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""
    )
    (root / "plugstack.conf").write_text("")
    env = {"SLURM_CONF": str(conf)}
    # The real SLURM tools, even inside the test suite (its PATH starts with refusing stand-ins).
    svc.env.update(env)
    denv = _slurm_tool_env(svc)
    svc.procs.append(
        subprocess.Popen([SLURMCTLD, "-D", "-i", "-f", str(conf)], env=denv,
                         stdout=subprocess.DEVNULL, stderr=(root / "log/ctld.err").open("w"))
    )  # fmt: skip
    wait_until(lambda: port_open(ctld_port), 20, "slurmctld", root / "log/slurmctld.log")
    svc.procs.append(
        subprocess.Popen([SLURMD, "-D", "-f", str(conf)], env=denv,
                         stdout=subprocess.DEVNULL, stderr=(root / "log/d.err").open("w"))
    )  # fmt: skip

    def node_idle() -> bool:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], env=denv, capture_output=True,
                             text=True).stdout  # fmt: skip
        return out.strip().startswith("idle")

    wait_until(node_idle, 30, "slurmd", root / "log/slurmd.log")


# ----------------------------------------------------------------------------------------------
# MLflow servers


def start_postgres(base: Path | None = None) -> Service:
    """Its own PostgreSQL 15 cluster (initdb in a temp dir, run as ``postgres``), own port."""
    if not (PG_BIN / "initdb").exists():
        raise Unavailable(f"PostgreSQL 15 not found under {PG_BIN} (apt install postgresql-15)")
    user = "postgres"
    try:
        pwd.getpwnam(user)
    except KeyError:
        raise Unavailable("no postgres user to run the test database as") from None
    root = Path(tempfile.mkdtemp(prefix="rkrepro-pg-", dir=base))
    root.chmod(0o755)
    svc = Service(root)
    data = root / "data"
    data.mkdir()
    shutil.chown(data, user)
    shutil.chown(root, user)
    port = free_port()
    try:
        subprocess.run(
            ["runuser", "-u", user, "--", str(PG_BIN / "initdb"), "-D", str(data), "-U",
             "mlflow", "--auth=trust", "-E", "UTF8", "--no-sync"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        log = root / "pg.log"
        svc.procs.append(
            subprocess.Popen(
                [
                    "runuser",
                    "-u",
                    user,
                    "--",
                    str(PG_BIN / "postgres"),
                    "-D",
                    str(data),
                    "-p",
                    str(port),
                    "-h",
                    "127.0.0.1",
                    "-k",
                    str(root),
                    "-c",
                    "fsync=off",
                ],
                stdout=subprocess.DEVNULL,
                stderr=log.open("w"),
            )  # fmt: skip
        )
        wait_until(lambda: port_open(port), 30, "postgres", log)
        time.sleep(0.5)
        subprocess.run(
            ["runuser", "-u", user, "--", str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p",
             str(port), "-U", "mlflow", "mlflow"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
    except BaseException:
        svc.stop()
        raise
    svc.uri = f"postgresql+psycopg2://mlflow@127.0.0.1:{port}/mlflow"
    return svc


def start_mlflow(backend_uri: str, base: Path | None = None, port: int | None = None) -> Service:
    """``mlflow server`` on 127.0.0.1 with this backend store; artifacts in a temp dir."""
    root = Path(tempfile.mkdtemp(prefix="rkrepro-mlflow-", dir=base))
    svc = Service(root)
    svc.env["_PORT"] = str(port or free_port())
    svc.env["_BACKEND"] = backend_uri
    _launch_mlflow(svc)
    return svc


def _launch_mlflow(svc: Service) -> None:
    port = int(svc.env["_PORT"])
    log = svc.root / f"mlflow-{len(svc.procs)}.log"
    argv = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
            str(port), "--backend-store-uri", svc.env["_BACKEND"], "--default-artifact-root",
            str(svc.root / "artifacts"), "--workers", "1"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    svc.procs.append(proc)
    svc.uri = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited:\n{log.read_text()[-3000:]}")
        if not port_open(port):
            return False
        try:  # answering, not just listening (workers start after the socket opens)
            with urllib.request.urlopen(f"{svc.uri}/health", timeout=5) as reply:
                return reply.status == 200
        except OSError:
            return False

    wait_until(ready, 120, "mlflow server", log)


def kill_mlflow(svc: Service) -> None:
    """Stop the server (its whole process group: gunicorn/uvicorn workers too)."""
    proc = svc.procs[-1]
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def restart_mlflow(svc: Service) -> None:
    _launch_mlflow(svc)


def stop_mlflow(svc: Service) -> None:
    for proc in svc.procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    shutil.rmtree(svc.root, ignore_errors=True)


@contextlib.contextmanager
def running(kind: str) -> Iterator[Service]:
    """``slurm``, ``sqlite`` or ``postgres``: the service up for the ``with`` block."""
    if kind == "slurm":
        svc = start_slurm()
        try:
            yield svc
        finally:
            svc.stop()
        return
    pg = start_postgres() if kind == "postgres" else None
    try:
        if pg is None:
            db = Path(tempfile.mkdtemp(prefix="rkrepro-sqlite-")) / "mlflow.db"
            backend = f"sqlite:///{db}"
        else:
            backend = pg.uri
        server = start_mlflow(backend)
        try:
            yield server
        finally:
            stop_mlflow(server)
            if pg is None:
                shutil.rmtree(db.parent, ignore_errors=True)
    finally:
        if pg is not None:
            pg.stop()


def main(argv: list[str]) -> int:
    if argv == ["reap"]:
        for root in reap_stale_clusters():
            print(f"stopped the test cluster left in {root}")
        return 0
    if len(argv) == 2 and argv[0] == "watch":
        _watch(Path(argv[1]))
        return 0
    if len(argv) != 2 or argv[0] != "up" or argv[1] not in ("slurm", "sqlite", "postgres"):
        print("usage: services.py up slurm|sqlite|postgres | reap", file=sys.stderr)
        return 2
    started = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # before bring-up: a stop cleans up
    try:
        with running(argv[1]) as svc:
            print(f"up in {time.monotonic() - started:.1f} s", flush=True)
            for k, v in svc.env.items():
                if not k.startswith("_"):
                    print(f"export {k}={v}", flush=True)
            if svc.uri:
                print(f"export MLFLOW_TRACKING_URI={svc.uri}", flush=True)
            print("Ctrl-C (or SIGTERM) tears it down", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
    except Unavailable as error:
        print(f"unavailable: {error}", file=sys.stderr)
        return 3
    return 0


REPO = Path(__file__).resolve().parent.parent.parent


def real_env(workspace_env: dict[str, str], **extra: str) -> dict[str, str]:
    """The environment of an rkrepro subprocess that may reach the services started here."""
    env = {**os.environ, **workspace_env, "OMP_NUM_THREADS": "1", **extra}
    env["PATH"] = os.environ["RKREPRO_TEST_REAL_PATH"]  # the real sbatch, not the refusing one
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
