"""``rkrepro ui`` and what the MLflow UI shows of a reproduction.

Address checks are plain CLI calls. The store is written by rkrepro's own :class:`Tracker`
(experiment kind, short run names, dataset input); the browser test starts ``rkrepro ui`` on a
free 127.0.0.1 port against that store, waits for the runs-view URL it prints, loads it in a
real headless Chromium and finds the runs in the DOM (screenshot kept as a test artifact).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import helpers_browser as browser
import pytest
from typer.testing import CliRunner

from rkrepro.cli.app import app
from rkrepro.tracking import keys as mlflow_keys
from rkrepro.tracking import runs as tracking

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.bad_input
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "70000"], "--port must be in 1..65535"),
        (["--port", "0"], "--port must be in 1..65535"),
        (["--host", "not a host"], "neither an IP address nor a host name"),
        (["--host", "0.0.0.0"], "no authentication"),
        (["--host", "192.168.1.5"], "add --expose"),
    ],
)
def test_ui_address_is_validated_in_one_line(tmp_path, args, message):
    env = {"RKREPRO_RUNS_DIR": str(tmp_path / "runs")}
    result = CliRunner().invoke(app, ["ui", *args], env=env)
    assert result.exit_code == 2, result.output
    error = result.stderr.strip()
    assert message in error and "\n" not in error and "Traceback" not in result.output


def test_ui_help_has_no_raw_markup():
    result = CliRunner().invoke(app, ["ui", "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0 and "``" not in result.stdout and "--expose" in result.stdout


def _plans():
    """Runs a reproduction makes of one row: every model and share, two seeds, a shortened
    run and a bf16 one of the original, named as ``rkrepro run`` names them."""
    from rkrepro import paper
    from rkrepro.planning.options import RunOptions
    from rkrepro.planning.plan import make_plans

    cells = paper.resolve_cells(paper.load_tables(), "table1", "densenet-bc-k12")
    original = [c for c in cells if c.model == "original"]
    return [
        *make_plans(cells, [0, 1], RunOptions(), "cpu"),
        *make_plans(original, [0], RunOptions(epochs=2, train_subset=512), "cpu"),
        *make_plans(original, [0], RunOptions(precision="bf16"), "cuda"),
    ]


def _store(folder: Path) -> tuple[str, str]:
    """The runs of :func:`_plans`, finished, written through the Tracker as training does."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    tracker = tracking.Tracker(uri)
    tracker.connect()
    for plan in _plans():
        info = tracking.DatasetInfo(**plan.dataset_info())
        params = tracking.flatten(plan.config())
        log = tracker.create("table1", plan.run_name, plan.tags(), params, info)
        tracker.client.log_metric(log.run_id, mlflow_keys.M_FINAL_TEST_ERROR, 4.6)
        tracker.client.log_metric(log.run_id, mlflow_keys.M_BEST_TEST_ERROR, 4.5)
        tracker.client.set_terminated(log.run_id, "FINISHED")
    return uri, tracker.experiment("table1")


def test_run_names_tell_every_run_of_a_table_apart():
    """Two runs that are different configurations never have the same name, and each name
    says its row."""
    plans = _plans()
    names = [plan.run_name for plan in plans]
    assert len(set(names)) == len({plan.config_hash for plan in plans}) == len(plans)
    assert all(name.startswith("densenet-bc-k12 ") for name in names)
    assert "densenet-bc-k12 1x8_1x2_1x2+share s1" in names
    assert "densenet-bc-k12 original s0 2ep 512img" in names
    assert "densenet-bc-k12 original s0 bf16-autocast" in names


def test_the_store_is_what_the_ui_needs(tmp_path):
    uri, experiment_id = _store(tmp_path)
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment(experiment_id)
    assert experiment.tags[mlflow_keys.TAG_EXPERIMENT_KIND] == "custom_model_development"
    runs = client.search_runs([experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(p.run_name for p in _plans())
    inputs = {r.info.run_name: r.inputs.dataset_inputs for r in runs}
    inputs = inputs["densenet-bc-k12 original s0"]
    assert [d.dataset.name for d in inputs] == ["cifar10"]
    assert {t.key: t.value for t in inputs[0].tags} == {"mlflow.data.context": "training"}
    view = json.loads(experiment.tags["mlflow.sharedViewState.rkrepro"])
    assert "metrics.`final_test_error`" in view["selectedColumns"]
    from rkrepro.ui import runs_views

    assert runs_views(uri, "http://127.0.0.1:1") == [
        (
            "table1",
            f"http://127.0.0.1:1/#/experiments/{experiment_id}/runs"
            "?viewStateShareKey=rkrepro&workflowType=machine_learning",
        )
    ]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.browser
@pytest.mark.slow
def test_ui_opens_on_the_runs_in_chromium(tmp_path, tmp_path_factory):
    browser.chromium()  # skip early without it
    runs = tmp_path / "runs"
    runs.mkdir()
    uri, experiment_id = _store(runs)
    port = _free_port()
    process = _ui_process(runs, port, tmp_path)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 240
        url = None
        while time.monotonic() < deadline and process.poll() is None:
            line = process.stdout.readline()
            lines.append(line)
            if line.strip().startswith("table1: "):
                url = line.split(": ", 1)[1].strip()
                break
        runs_view = f"http://127.0.0.1:{port}/#/experiments/{experiment_id}/runs"
        assert url == runs_view + "?viewStateShareKey=rkrepro&workflowType=machine_learning", lines
        assert any("(1 worker)" in line for line in lines)
        artifacts = browser.artifacts_dir(tmp_path_factory)
        shot = artifacts / "mlflow_ui_runs.png"
        browser.run(url, screenshot=shot, budget_ms=20000, size="1400,900", timeout=240)
        assert shot.stat().st_size > 20_000
        dom = browser.run(url, dump_dom=True, budget_ms=20000, timeout=240)
        for plan in _plans():  # every run, each under its own name
            assert f">{plan.run_name}<" in dom, f"run {plan.run_name!r} not in the runs view"
        assert "No data available" not in dom
        # The model-training view (its sidebar: Runs, Models), not GenAI's (Evaluation runs,
        # Judges), with the test errors as columns.
        assert "Evaluation runs" not in dom and "Judges" not in dom
        assert "final_test_err" in dom and "best_test_err" in dom
        # A run page reached from rkrepro's links stays in the training view ("Runs").
        from mlflow import MlflowClient

        run_id = MlflowClient(uri).search_runs([experiment_id])[0].info.run_id
        page = mlflow_keys.ui_url(f"http://127.0.0.1:{port}", experiment_id, run_id)
        run_dom = browser.run(page, dump_dom=True, budget_ms=20000, timeout=240)
        assert "Evaluation runs" not in run_dom and "Model metrics" in run_dom
        browser.run(page, screenshot=artifacts / "mlflow_ui_run_page.png", budget_ms=20000,
                    size="1400,900", timeout=240)  # fmt: skip
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=30)


# --------------------------------------------------------------------------------------------
# Starting and stopping as one thing.


def _ui_process(runs: Path, port: int, cwd: Path) -> subprocess.Popen:
    """``rkrepro ui`` as a user starts it, in a session of its own so the test can clean up."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "RKREPRO_RUNS_DIR": str(runs)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen(
        [sys.executable, "-m", "rkrepro", "ui", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != "Z":
                parents[int(entry.name)] = int(fields[1])
    found, todo = set(), [pid]
    while todo:
        current = todo.pop()
        for child, parent in parents.items():
            if parent == current and child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _port_answers(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _read_until_ready(process: subprocess.Popen, timeout: float = 240) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        line = process.stdout.readline()
        lines.append(line)
        if line.startswith("MLflow UI ready"):
            return lines
    pytest.fail(f"rkrepro ui never became ready: {lines}")


@pytest.mark.fault
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_to_rkrepro_ui_stops_every_process_it_started(tmp_path, signum):
    """`kill PID` (or Ctrl-C, or a closed terminal) of `rkrepro ui` alone: mlflow ui, uvicorn and
    whatever they started stop too, and the port is free."""
    runs = tmp_path / "runs"
    runs.mkdir()
    _store(runs)
    port = _free_port()
    process = _ui_process(runs, port, tmp_path)
    started: set[int] = set()
    try:
        _read_until_ready(process)
        started = _descendants(process.pid)
        assert started and _port_answers(port)
        os.kill(process.pid, signum)  # the ui process only, as `kill PID` does
        assert process.wait(timeout=60) == 128 + signum
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(pid) for pid in started):
            time.sleep(0.1)
        assert not [pid for pid in started if _alive(pid)], "a process of the UI survived"
        assert not _port_answers(port), "something still serves the port"
    finally:
        for pid in [process.pid, *started]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
        process.wait(timeout=30)


class _Health(http.server.BaseHTTPRequestHandler):
    """Another web server: answers every GET with 200, like MLflow's /health."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def taken_port(request):
    """A port held by a listener that never answers, or by another HTTP server."""
    if request.param == "silent":
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]
        listener.close()
        return
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.mark.bad_input
@pytest.mark.parametrize("taken_port", ["silent", "http"], indirect=True)
def test_a_taken_port_is_one_line_before_anything_starts(tmp_path, taken_port):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "mlflow.db").touch()  # a store exists: only the port is wrong
    started = time.monotonic()
    process = _ui_process(runs, taken_port, tmp_path)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 2, output
    assert time.monotonic() - started < 30
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: port"), output
    assert f"port {taken_port} on 127.0.0.1 is taken" in lines[0]
    assert "ready" not in output and "Starting" not in output


@pytest.mark.bad_input
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_port_taken_while_the_ui_starts_is_never_announced_as_the_ui(tmp_path):
    """Another server takes the port after the check, before mlflow's server binds it: the
    server that answers is not the one started, so no URL is printed and nothing is left."""
    runs = tmp_path / "runs"
    runs.mkdir()
    _store(runs)
    port = _free_port()
    process = _ui_process(runs, port, tmp_path)
    server = None
    try:
        deadline = time.monotonic() + 60
        while server is None and time.monotonic() < deadline:
            if _descendants(process.pid):  # mlflow ui has started; it binds seconds later
                server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Health)
                threading.Thread(target=server.serve_forever, daemon=True).start()
            time.sleep(0.01)
        assert server is not None, "mlflow ui never started"
        output, _ = process.communicate(timeout=240)
        assert process.returncode == 2, output
        assert "MLflow UI ready" not in output and "#/experiments/" not in output
        errors = [line for line in output.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1, output
        assert "another program answers on port" in errors[0] or "stopped before" in errors[0]
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
