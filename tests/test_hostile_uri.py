"""Tracking URIs that must stay one line and keep their secret: a password in
``http://user:password@host/`` never shown (messages, the dry run's ``tracking:`` line, the HTML
report's run links), a URI with a line break refused before anything reads it, a ``databricks``
URI without credentials one line instead of MLflow's warning and advice. Every command runs as
a real subprocess, so that what MLflow logs on stderr counts too."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import helpers_workspace as ws
import pytest

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "hunter2-secret"
RUN = ("run", "tiny", "--row", "bc-k4", "--variant", "original", "--no-share", "--epochs", "1")
COMMANDS = {
    "status": ("status", "tiny"),
    "list": ("list",),
    "report": ("report", "tiny"),
    "run": (*RUN, "--device", "cpu"),
    "run --dry-run": (*RUN, "--device", "cpu", "--dry-run"),
}


def _env(root: Path) -> dict[str, str]:
    env = {**os.environ, **ws.make_workspace(root, n_train=16, n_test=8)}
    env["PYTHONPATH"] = str(REPO)
    env["HOME"] = str(root)  # no ~/.databrickscfg, no user settings
    for name in list(env):
        if name.startswith(("MLFLOW_", "DATABRICKS_")):
            env.pop(name)
    return env


def _rkrepro_each(
    env: dict[str, str], commands: list[tuple[str, ...]], timeout: float = 120
) -> list[tuple[tuple[str, ...], int, str]]:
    """``python -m rkrepro ARGS`` for each command, four at a time: (args, exit code, output)."""

    def one(args: tuple[str, ...]) -> tuple[tuple[str, ...], int, str]:
        done = subprocess.run(
            [sys.executable, "-m", "rkrepro", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=Path(env["RKREPRO_RUNS_DIR"]).parent,
        )
        return args, done.returncode, done.stdout + done.stderr

    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(one, commands))


def _one_error_line(args: tuple[str, ...], code: int, output: str) -> str:
    lines = output.strip().splitlines()
    assert code == 2 and len(lines) == 1, (args, code, output[-3000:])
    assert lines[0].startswith("Error: ") and "Traceback" not in output, (args, output[-3000:])
    return lines[0]


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "uri",
    [
        "http://127.0.0.1:9/\r\nX-Injected: 1",
        "sqlite:////tmp/rkrepro-store\n/mlflow.db",
        f"postgresql+psycopg2://mlflow:{PASSWORD}@127.0.0.1:9/db\nx",
    ],
    ids=["http CRLF", "sqlite newline", "postgresql newline"],
)
def test_a_tracking_uri_with_a_line_break_is_one_line(tmp_path: Path, uri: str) -> None:
    """CR/LF in an HTTP URI was an ``InvalidURL`` traceback; a newline in a store's path was
    accepted (and printed as two lines by the dry run). Refused before anything reads it,
    showing only the URI's scheme."""
    env = _env(tmp_path)
    commands = [(*args, "--tracking-uri", uri) for args in COMMANDS.values()]
    for args, code, output in _rkrepro_each(env, commands):
        line = _one_error_line(args, code, output)
        assert "holds a control character" in line, (args, line)
        assert PASSWORD not in output
    assert not (tmp_path / "runs").exists()


@pytest.mark.bad_input
@pytest.mark.parametrize("uri", ["databricks", "databricks://research"])
def test_a_databricks_uri_without_credentials_is_one_line(tmp_path: Path, uri: str) -> None:
    """MLflow logged a warning and then raised a paragraph of advice: two lines, one of them
    several hundred characters long."""
    env = _env(tmp_path)
    commands = [(*args, "--tracking-uri", uri) for args in COMMANDS.values()]
    for args, code, output in _rkrepro_each(env, commands):
        line = _one_error_line(args, code, output)
        assert f"tracking store {uri}: no Databricks credentials" in line, (args, line)
        assert len(line) < 300, line


@pytest.fixture
def health_only_server() -> Iterator[str]:
    """An HTTP server on 127.0.0.1 that answers ``/health`` and drops every other request:
    rkrepro's first request gets through, MLflow's API calls then fail."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            if self.path.rstrip("/").endswith("/health"):
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")
            else:
                self.close_connection = True

        do_GET = do_POST = _answer

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.mark.bad_input
def test_a_password_in_the_tracking_uri_is_never_shown(
    tmp_path: Path, health_only_server: str
) -> None:
    """``user:password@`` was taken for part of the host by the first request (every command:
    "unreachable (Name or service not known)"), and ``ui`` printed the URI whole. Now the
    request sends them as HTTP Basic credentials and every message shows ``user:***@``."""
    env = _env(tmp_path)
    uri = health_only_server.replace("http://", f"http://user:{PASSWORD}@")
    commands = [(*args, "--tracking-uri", uri) for args in (*COMMANDS.values(), ("ui",))]
    for args, code, output in _rkrepro_each(env, commands):
        line = _one_error_line(args, code, output)
        assert PASSWORD not in output, (args, output[-3000:])
        assert "user:***@127.0.0.1" in line, (args, line)
        assert "Name or service not known" not in line, (args, line)  # the server was reached


@pytest.mark.slow
def test_a_password_is_never_shown_against_a_real_server(tmp_path: Path) -> None:
    """Against a real ``mlflow server``, with ``user:password@`` in the URI: a run trains and
    every command answers, and neither their output nor the reports hold the password (the
    dry run's ``tracking:`` line shows ``***``; the HTML page's run links carry no
    credentials)."""
    sys.path.insert(0, str(REPO / "tests" / "integration"))
    import services

    (tmp_path / "server").mkdir()
    server = services.start_mlflow(f"sqlite:///{tmp_path / 'server' / 'mlflow.db'}")
    try:
        env = _env(tmp_path)
        uri = server.uri.replace("http://", f"http://user:{PASSWORD}@") + "/"
        page, markdown = tmp_path / "report.html", tmp_path / "report.md"
        first = _rkrepro_each(env, [(*COMMANDS["run"], "--tracking-uri", uri)], timeout=300)
        commands = [
            (*COMMANDS["run --dry-run"], "--tracking-uri", uri),
            (*COMMANDS["status"], "--include-shortened", "--tracking-uri", uri),
            (*COMMANDS["list"], "--tracking-uri", uri),
            (*COMMANDS["report"], "--include-shortened", "--tracking-uri", uri, "--out", str(page)),
            (*COMMANDS["report"], "--tracking-uri", uri, "--out", str(markdown)),
        ]
        for args, code, output in [*first, *_rkrepro_each(env, commands, timeout=300)]:
            assert code == 0, (args, output[-3000:])
            assert PASSWORD not in output, (args, output[-3000:])
            if "--dry-run" in args:
                assert "tracking: http://user:***@127.0.0.1" in output, output[-3000:]
            if args[0] == "status":
                assert "done" in output, output[-3000:]
        for report in (page, markdown):
            assert PASSWORD not in report.read_text(encoding="utf-8"), report
        assert f"{server.uri}/#/experiments/" in page.read_text(encoding="utf-8")
    finally:
        server.stop()
