"""What was run is always visible, and text from table files reaches the terminal as text.

A real shortened run (``--epochs 1 --train-subset 64``) in a tiny workspace; then ``list`` and
``report`` (``status`` in tests/test_status.py) must each say that it exists when they leave it
out, and mark it with how short it was when asked to show it. A table whose title and labels
carry terminal escapes and rich markup is printed by ``list``, ``show`` and ``report`` without
either taking effect.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import helpers_workspace as wsh
import pytest
from typer.testing import CliRunner

from rkrepro.cli.app import app

pytest.importorskip("torch")
HIDDEN, MARK = wsh.HIDDEN, wsh.MARK


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, str]:
    """One shortened run of the tiny table's original, trained for real on CPU."""
    return wsh.shortened_run_workspace(tmp_path_factory)


def _invoke(env: dict[str, str], *args: str):
    return wsh.invoke(env, *args)


def test_list_says_a_shortened_run_exists(workspace):
    result = _invoke(workspace, "list", "tiny")
    assert result.exit_code == 0, result.output
    flat = " ".join(result.stdout.split())  # the caption wraps at the table's width
    assert "(+1 shortened)" in result.stdout and HIDDEN in flat
    as_json = _invoke(workspace, "list", "tiny", "--format", "json")
    original = next(r for r in json.loads(as_json.stdout) if r["model"] == "original")
    assert original["status"] == "not started" and original["shortened_runs"] == 1


def test_report_hides_and_marks_shortened_numbers_in_every_format(workspace):
    rich = _invoke(workspace, "report", "tiny")
    assert rich.exit_code == 0, rich.output
    assert HIDDEN in rich.stdout
    shown = _invoke(workspace, "report", "tiny", "--include-shortened")
    assert MARK in shown.stdout  # rich would eat an unescaped "[shortened...]"
    assert "[shortened] lines are shortened-protocol runs" in shown.stdout
    markdown = _invoke(workspace, "report", "tiny", "--include-shortened", "-f", "markdown")
    assert MARK in markdown.stdout
    html = _invoke(workspace, "report", "tiny", "--include-shortened", "-f", "html")
    assert MARK in html.stdout
    table = _invoke(workspace, "report", "tiny", "--include-shortened", "-f", "csv")
    rows = list(csv.DictReader(io.StringIO(table.stdout)))
    short = [r for r in rows if r["protocol"] == "shortened"]
    assert [r["trained_as"] for r in short] == ["1 epochs, 64 images"]


HOSTILE_TITLE = "\x1b]0;pwned\x07Tiny \x1b[2J[bold red]loud[/bold red] \x9b31m"


@pytest.mark.bad_input
def test_table_text_reaches_the_terminal_as_text(tmp_path):
    title = f"id: tiny\ntitle: {_yaml_string(HOSTILE_TITLE)}\n"
    table = wsh.TINY_TABLE.replace("id: tiny\n", title, 1)
    table = table.replace("id: bc-k4\n", "id: bc-k4\n    label: '[link=file:///etc]x[/link]'\n")
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "tiny.yaml").write_text(table, encoding="utf-8")
    env = {
        "RKREPRO_TABLES_DIR": str(tmp_path / "tables"),
        "RKREPRO_RUNS_DIR": str(tmp_path / "runs"),
    }
    for args in (["list", "tiny"], ["show", "tiny", "--row", "bc-k4"], ["report", "tiny"]):
        result = _invoke(env, *args)
        assert result.exit_code == 0, (args, result.output)
        out = result.stdout
        assert "\x1b" not in out and "\x9b" not in out and "\x07" not in out, args
        if args[0] != "show":
            assert "[bold red]loud[/bold red]" in out, args  # printed, not applied
    shown = _invoke(env, "show", "tiny", "--row", "bc-k4")
    assert "[link=file:///etc]x[/link]" in shown.stdout
    assert not (tmp_path / "runs").exists()  # reading a missing store creates nothing


def _yaml_string(text: str) -> str:
    """A double-quoted YAML scalar with \\x escapes for the control characters."""
    out = []
    for ch in text:
        if ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F:
            out.append(f"\\x{ord(ch):02x}")
        elif ch in '"\\':
            out.append("\\" + ch)
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def test_the_escape_helpers(tmp_path: Path):
    from rkrepro.textsafe import clean, escape

    assert clean("a\x1b[2Jb\tc\nd\x9b") == "a[2Jb\tc\nd"
    assert escape("[bold]x") == "\\[bold]x"


# --------------------------------------------------------------------------------------------
# Small things: --version, --no-flops, 80 columns.


def test_version_flag():
    from rkrepro import __version__

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"rkrepro {__version__}"


def test_params_at_80_columns_cuts_no_name_and_no_flops_has_no_column():
    result = CliRunner().invoke(
        app, ["params", "table1", "--row", "densenet-bc-k12", "--no-flops"], env={"COLUMNS": "80"}
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in result.stdout  # nothing truncated
    assert "RKNet-1×8_1×2_1×2" in result.stdout and "MFLOPs" not in result.stdout
