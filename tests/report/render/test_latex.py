"""LaTeX (:mod:`rkrepro.report.render.latex`)."""

from __future__ import annotations

from rkrepro.report.render.latex import to_latex

from ..helpers_report import report_of


def test_latex_uses_booktabs(store):
    text = to_latex(report_of(store[0], "table1"))
    for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}"):
        assert rule in text
    assert text.count("{") == text.count("}")
    body = text.split(r"\midrule")[1].split(r"\bottomrule")[0]
    columns = text.split(r"\begin{tabular}{")[1].split("}")[0]
    for line in body.strip().splitlines():
        if line != r"\addlinespace":
            assert line.replace(r"\&", "").count("&") == len(columns) - 1
    assert r"\textbf{3.60}" in text  # the paper's bold cell
