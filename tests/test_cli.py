"""The real Typer app through its test runner, and the torch-free start-up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from rkrepro.cli.app import app

SHIPPED = Path(__file__).resolve().parent.parent / "tables"


@pytest.fixture
def runner(tmp_path, monkeypatch):
    # An empty, private tracking store: statuses read "not started".
    monkeypatch.setenv("RKREPRO_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RKREPRO_TABLES_DIR", raising=False)
    return CliRunner()


def test_help_lists_the_commands(runner):
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("list", "show", "params", "run", "report", "status"):
        assert command in result.output


def test_list_json_has_one_object_per_model_cell(runner):
    result = runner.invoke(app, ["list", "--format", "json"])
    assert result.exit_code == 0, result.output
    records = json.loads(result.output)
    assert len(records) == 31 + 12 + 13 + 24
    bc12 = [r for r in records if r["table"] == "table1" and r["row"] == "densenet-bc-k12"]
    assert [(r["model"], r["share"], r["params_m"], r["error"]) for r in bc12] == [
        ("original", False, 0.75, 4.51),
        ("RKNet-8x1_2x1_2x1", False, 0.91, 4.67),
        ("RKNet-1x8_1x2_1x2", False, 0.72, 4.75),
        ("RKNet-1x8_1x2_1x2", True, 0.33, 5.56),
        ("RKNet-2x4_2x1_2x1", False, 0.86, 4.62),
    ]
    assert {r["status"] for r in records} == {"not started"}
    imagenet = next(r for r in records if r["table"] == "table3")
    assert (imagenet["top1"], imagenet["top5"]) == (25.02, 7.71) and "error" not in imagenet
    multi = next(r for r in records if r["model"] == "RKNet-3x1_2x1_2x1")
    assert multi["readings"] == {
        "resnet_stages": "concat",
        "reported_error": "final",
        "precision": "fp32",
    }
    assert "resnet_stages" not in bc12[0]["readings"]


@pytest.mark.parametrize("command", ["list", "plan", "status", "report"])
def test_all_means_every_table_as_in_run_all(runner, command):
    """``rkrepro run all`` runs every table; the reading commands take ``all`` the same way."""
    extra = ["--gpu", "h100"] if command == "plan" else []
    every = runner.invoke(app, [command, "--format", "json", *extra])
    named = runner.invoke(app, [command, "ALL", "--format", "json", *extra])
    assert named.exit_code == every.exit_code == 0, named.output
    assert named.output == every.output and "table4" in named.output


def test_list_rich_shows_rows_and_numbers(runner):
    result = runner.invoke(app, ["list", "table1"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "densenet-bc-k12" in result.output
    assert "RKNet-1×8_1×2_1×2" in result.output
    assert "0.75" in result.output and "4.51" in result.output
    assert "table2" not in result.output


def test_show_prints_the_period_structure(runner):
    result = runner.invoke(
        app, ["show", "table1", "--row", "densenet-bc-k12"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert "RKNet-1×8_1×2_1×2" in result.output
    # channels m·k per period: 2·12, 9·12, 12·12
    assert "1×8 · 24" in result.output and "1×2 · 108" in result.output
    assert "1×2 · 144" in result.output


def test_show_prints_each_reading_with_its_justification(runner):
    result = runner.invoke(app, ["show", "table4", "--row", "resnet-20"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = result.output
    assert "resnet_stages = concat: Eq. (7) literally" in out and "1 of the models" in out
    assert "reported_error = final: the last epoch's test error" in out
    assert "precision = fp32: the Torch code trains in fp32" in out
    assert "[149, 224] of 300" in out
    dense = runner.invoke(app, ["show", "table1", "--row", "densenet-bc-k12"])
    assert "resnet_stages" in dense.output and "no model of this row" in dense.output


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["list", "table9"], "unknown table 'table9'"),
        (["show", "table1", "--row", "densenet-bc-k13"], "did you mean densenet-bc-k12"),
        (["show", "tabel1", "--row", "x"], "did you mean table1"),
        (["params", "table4", "--row", "resnet-57"], "did you mean resnet-56"),
    ],
)
@pytest.mark.bad_input
def test_unknown_names_exit_2_with_one_line(runner, args, expected):
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.output
    assert "Traceback" not in result.output


@pytest.mark.bad_input
def test_bad_tables_dir_gives_one_line(runner, tmp_path):
    data = yaml.safe_load((SHIPPED / "table1.yaml").read_text(encoding="utf-8"))
    data["rows"][0]["m"] = [2, 14]
    (tmp_path / "table1.yaml").write_text(yaml.safe_dump(data, allow_unicode=True), "utf-8")
    result = runner.invoke(app, ["list", "--tables-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1
    assert "'m' has 2 entries but a cifar10 model has 3 periods" in result.output
    env_result = runner.invoke(app, ["list"], env={"RKREPRO_TABLES_DIR": str(tmp_path)})
    assert env_result.exit_code == 2 and "'m' has 2 entries" in env_result.output


def test_params_json_for_a_row(runner):
    result = runner.invoke(
        app, ["params", "table1", "--row", "densenet-bc-k12", "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    records = json.loads(result.output)
    required = {"table", "row", "model", "share", "params_paper", "params_total"}
    required |= {"reported_params_m", "match", "flops"}
    assert all(required <= set(r) for r in records)
    original = records[0]
    assert (original["table"], original["model"], original["share"]) == (
        "table1",
        "original",
        False,
    )
    assert 745_000 <= original["params_paper"] < 755_000
    assert original["params_total"] > original["params_paper"]  # BatchNorm counted only here
    assert all(r["match"] is True for r in records)
    assert original["flops"] > 100e6


def test_params_markdown_for_table4_checks_the_caption_claim(runner):
    result = runner.invoke(
        app, ["params", "table4", "--row", "resnet-20", "--format", "markdown", "--no-flops"]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("| table | row | model |")
    assert any(
        "RKNet-1×3_1×2_1×2" in line and "= original" in line and "yes" in line for line in lines
    )


def _imported_modules(*args: str) -> set[str]:
    env = {**os.environ, "RKREPRO_RUNS_DIR": "/nonexistent/rkrepro-runs"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "rkrepro", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    modules = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            modules.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    assert "rkrepro" in modules  # the measurement itself works
    return modules


@pytest.mark.parametrize(
    "args",
    [("--help",), ("list",), ("list", "--format", "json"), ("params", "table1")],
)
def test_help_and_list_import_neither_torch_nor_mlflow(args):
    modules = _imported_modules(*args)
    assert "torch" not in modules
    assert "mlflow" not in modules
    assert "pandas" not in modules


def test_an_html_report_carries_its_plots_unless_told_not_to(runner, tmp_path):
    page = tmp_path / "report.html"
    result = runner.invoke(app, ["report", "table4", "--format", "html", "--out", str(page)])
    assert result.exit_code == 0, result.output
    text = page.read_text(encoding="utf-8")
    assert text.count('src="data:image/png;base64,') >= 1  # the params-vs-error plot, inlined
    assert not (tmp_path / "runs" / "mlflow.db").exists()  # nothing logged for inline plots
    bare = runner.invoke(app, ["report", "table4", "-f", "html", "--no-plots"])
    assert bare.exit_code == 0 and "data:image/png" not in bare.stdout
    both = runner.invoke(app, ["report", "table4", "-f", "html", "--no-plots", "--plots", "p"])
    assert both.exit_code == 2 and "use either --plots DIR or --no-plots" in both.stderr
