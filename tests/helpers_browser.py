"""Real headless Chromium for tests: dump a page's DOM after its scripts ran, take a screenshot.

Debian's ``chromium`` runs headless without a display. ``--virtual-time-budget`` lets a
JavaScript app (the MLflow UI) settle before the DOM is dumped. Every run gets a fresh profile
and no network besides what the page itself asks for (tests only point it at files or at a
server on 127.0.0.1 they started).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
ARTIFACTS_ENV = "RKREPRO_TEST_ARTIFACTS"


def chromium() -> str:
    """The browser's path, or skip the test saying why."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and Path("/usr/bin/chromium").exists():
        found = "/usr/bin/chromium"
    if found is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    return found


def artifacts_dir(tmp_path_factory) -> Path:
    """Where screenshots are kept: ``$RKREPRO_TEST_ARTIFACTS``, else ``<pytest basetemp>/
    artifacts``; printed at the end of the session (tests/conftest.py)."""
    chosen = os.environ.get(ARTIFACTS_ENV)
    folder = Path(chosen) if chosen else tmp_path_factory.getbasetemp() / "artifacts"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def run(url: str, *, dump_dom: bool = False, screenshot: Path | None = None,
        budget_ms: int = 5000, size: str = "1400,1000", timeout: float = 180) -> str:  # fmt: skip
    """One Chromium run on ``url``; returns the DOM when ``dump_dom``."""
    browser = chromium()
    with tempfile.TemporaryDirectory(prefix="rkrepro-chromium-") as profile:
        argv = [browser, *FLAGS, f"--user-data-dir={profile}", f"--window-size={size}"]
        argv.append(f"--virtual-time-budget={budget_ms}")
        if dump_dom:
            argv.append("--dump-dom")
        if screenshot is not None:
            argv.append(f"--screenshot={screenshot}")
        argv.append(url)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"chromium exited {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout
