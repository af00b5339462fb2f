"""LaTeX with booktabs: one ``table`` float per table, in the paper's layout. The paper's claims
have no LaTeX form.

Every text is escaped by :func:`_tex`: TeX's special characters become their text forms (so no
``\\input``, ``\\write18`` or ``^^`` escape survives), a line break a space (a blank line would end
the cell), and brackets are braced (a ``[`` after ``\\\\`` would be read as its argument)."""

from __future__ import annotations

from rkrepro.report.build import DATASET_NAMES, Report
from rkrepro.report.render.content import Item, layout, tolerance_text
from rkrepro.textsafe import one_line

_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "[": "{[}",
    "]": "{]}",
}


def _tex(text: str) -> str:
    escaped = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in one_line(text))
    return escaped.replace("±", r"$\pm$").replace("\u00d7", r"$\times$")


def to_latex(report: Report) -> str:
    out = ["% rkrepro report: needs \\usepackage{booktabs}", ""]
    for table_report in report.tables:
        table = table_report.table
        grid = layout(table_report)
        caption = (
            f"{table.title} reproduced ({DATASET_NAMES[table.dataset]}): {report.metric_label}"
        )
        caption += f"; tolerance {tolerance_text(report, table_report)}."
        out += [r"\begin{table}[ht]", r"\centering", r"\scriptsize"]
        out += [rf"\caption{{{_tex(caption)}}}", rf"\label{{tab:rkrepro-{table.id}}}"]
        out.append(r"\begin{tabular}{" + "l" * len(grid.headers) + "}")
        out += [r"\toprule", " & ".join(_tex(h) for h in grid.headers) + r" \\", r"\midrule"]
        for index, line in enumerate(grid.lines):
            if index in grid.group_starts and index:
                out.append(r"\addlinespace")
            out.append(" & ".join(_tex_item(item) for item in line) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(out)


def _tex_item(item: Item) -> str:
    if item is None:
        return ""
    if isinstance(item, str):
        return _tex(item)
    reported = _tex(item.reported)
    if item.bold:
        reported = rf"\textbf{{{reported}}}"
    parts = [reported, _tex(item.reproduced), *([_tex(item.diff)] if item.diff else [])]
    text = " / ".join(parts)
    if item.verdict is not None:
        text += rf" \textit{{{item.verdict}}}"
    return "; ".join([text, *(_tex(note) for note in item.notes)])
