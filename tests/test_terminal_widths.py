"""Every table command read at 80 columns (a normal terminal, a pipe, a file) and at 200,
through the real app: no line wider than the terminal, and every row id, model name and number
whole on one line (never ``densenet-bc-k24-d25`` / ``0`` or ``1,040,`` / ``578``).

The rich layouts are chosen by :mod:`rkrepro.screen`: the widest one whose cells fit whole.
"""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import helpers_workspace as wsh
import pytest
from helpers_store import filled_store
from rich.cells import cell_len
from typer.testing import CliRunner

from rkrepro import paper
from rkrepro.cli.app import app

REPO = Path(__file__).resolve().parent.parent
WIDTHS = (80, 200)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return filled_store(tmp_path_factory)[0]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path_factory):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RKREPRO_TABLES_DIR", raising=False)


def _invoke(width: int, *args: str) -> str:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": str(width)})
    assert result.exit_code in (0, 1), result.output  # params exits 1 on a mismatch
    return result.stdout


def assert_readable(output: str, width: int, whole: list[str]) -> None:
    """No line wider than ``width``; each of ``whole`` on one line somewhere."""
    lines = output.splitlines()
    wide = [line for line in lines if cell_len(line) > width]
    assert not wide, f"{len(wide)} lines wider than {width}: {wide[:3]}"
    broken = [token for token in whole if not any(token in line for line in lines)]
    assert not broken, f"broken or missing at {width} columns: {broken[:10]}\n{output}"


def _cells(table_id: str) -> list[paper.Cell]:
    return paper.all_cells(paper.load_tables(), table_id)


def _names(table_id: str) -> list[str]:
    cells = _cells(table_id)
    return sorted({c.row for c in cells} | {c.printed_model for c in cells})


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("table_id", ["table1", "table3", "table4"])
def test_list_is_readable(width, table_id, store):
    output = _invoke(width, "list", table_id, "--tracking-uri", store)
    numbers = [repr(c.reported_params_m) for c in _cells(table_id) if c.reported_params_m]
    assert_readable(
        output, width, _names(table_id) + numbers + ["done (3 seeds)"] * (table_id == "table4")
    )
    if width == 200:  # the whole table on one line per model: the row id beside its original
        first = _cells(table_id)[0]
        assert any(first.row in line and "original" in line for line in output.splitlines())


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize(
    ("table_id", "row"), [("table1", "densenet-bc-k24-d250"), ("table3", "densenet-161")]
)
def test_show_is_readable(width, table_id, row):
    output = _invoke(width, "show", table_id, "--row", row)
    cells = [c for c in _cells(table_id) if c.row == row]
    assert_readable(
        output, width, sorted({c.printed_model for c in cells}) + ["1056"] * (row == "densenet-161")
    )


@pytest.mark.parametrize("width", WIDTHS)
def test_status_is_readable(width, store):
    from mlflow import MlflowClient

    output = _invoke(width, "status", "table4", "--tracking-uri", store)
    runs = MlflowClient(store).search_runs(["1"])
    run_ids = [r.info.run_id for r in runs if r.data.tags.get("rkrepro.protocol") == "paper"]
    assert run_ids
    assert_readable(output, width, _names("table4") + run_ids + ["done (3 seeds)"])


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("table_id", ["table1", "table3", "table4"])
def test_report_is_readable(width, table_id, store):
    output = _invoke(width, "report", table_id, "--tracking-uri", store)
    cells = _cells(table_id)
    numbers = {  # reproduced numbers of the store, whole
        "table1": ["4.60 (n=1)", "3.70 ± 0.07 (n=2)"],
        "table3": ["25.30 (n=1)", "+0.28 within", "7.80 (n=1)"],
        "table4": ["7.30 ± 0.10 (n=3)", "+0.03 within", "[resnet_stages=concat]"],
    }[table_id]
    labels = sorted({c.printed_model for c in cells} - {"original"})
    assert_readable(output, width, labels + numbers + ["Verdicts: "])
    if width == 200:  # the paper's layout: a variant and its shared twin on one line
        assert any(
            line.count("RKNet-") == 1 and "Params" not in line for line in output.splitlines()
        )
        assert "Original" in output


@pytest.mark.parametrize("width", WIDTHS)
def test_report_claims_are_readable(width, store):
    output = _invoke(width, "report", "--claims", "--tracking-uri", store)
    assert_readable(output, width, ["share-halves-densenet-bc", "one-stage-fewest-params"])


@pytest.mark.parametrize("width", WIDTHS)
def test_params_is_readable(width):
    output = _invoke(width, "params", "table3", "--row", "densenet-161")
    assert_readable(
        output,
        width,
        ["densenet-161", "RKNet-1×3_1×3_1×5_1×2", "28,461,064", "12,240,904", "15,455.8"],
    )


@pytest.mark.parametrize("width", WIDTHS)
def test_plan_is_readable(width):
    output = _invoke(width, "plan", "table4", "--row", "resnet-110", "--no-probe")
    assert_readable(output, width, ["resnet-110", "RKNet-1×18_1×17_1×17 share", "total resnet-110"])


def test_a_pipe_gets_the_80_column_layouts(store):
    """Without a terminal rich writes 80 columns: the narrow layouts, nothing broken."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("COLUMNS", None)
    for args, whole in (
        (["list", "table1"], _names("table1")),
        (["report", "table4"], ["7.30 ± 0.10 (n=3)", "RKNet-1×3_1×2_1×2 share"]),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "rkrepro", *args, "--tracking-uri", store],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        assert_readable(done.stdout, 80, whole)


def _in_terminal(args: list[str], env: dict[str, str], cwd: Path, width: int) -> str:
    """``python -m rkrepro ARGS`` on a real pseudo-terminal of ``width`` x 50."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, width, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "rkrepro", *args],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=env,
        cwd=cwd,
        close_fds=True,
    )
    os.close(follower)
    chunks = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    process.wait(timeout=60)
    os.close(leader)
    text = b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")
    import re

    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)  # colours and cursor codes


@pytest.mark.parametrize("width", WIDTHS)
def test_run_dry_run_on_a_terminal_is_readable(width, tmp_path):
    env = {**os.environ, **wsh.make_workspace(tmp_path), "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("COLUMNS", None)
    env["TERM"] = "xterm"
    args = ["run", "tiny", "--row", "bc-k4", "--seeds", "2", "--device", "cpu", "--dry-run"]
    output = _in_terminal(args, env, tmp_path, width)
    assert "rkrepro run --dry-run" in output, output
    assert_readable(output, width, ["tiny/bc-k4", "RKNet-1x2_1x1_1x1 share", "[0, 1]"])
