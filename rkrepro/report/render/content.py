"""What every format of the report shows, whatever its syntax: the flat records (one per cell, at
full precision), the paper's layout (:func:`layout`: one line per variant, :class:`Entry` per
number), the notes around each table, the text of numbers and verdicts, and the rows of the bold
claims and of the paper's claims. Each format module only writes these in its own syntax.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rkrepro.report.build import (
    DATASET_NAMES,
    SHORTENED,
    VERDICTS,
    CellResult,
    Report,
    Reproduced,
    Stat,
    TableReport,
    difference,
    verdict_of,
)
from rkrepro.report.claims import ClaimResult, pair_text, verdict_texts
from rkrepro.status import (
    ACTIVE,
    FAILED,
    KILLED,
)
from rkrepro.tracking import keys as mlflow_keys

if TYPE_CHECKING:
    from rkrepro.paper import Row, Table


# --------------------------------------------------------------------------------------------
# Flat records: CSV and JSON, full precision.


def records(report: Report) -> list[dict[str, Any]]:
    """One record per cell, plus one per cell with shortened runs when asked; paper order."""
    out = []
    for table_report in report.tables:
        labels = {row.id: row.label for row in table_report.table.rows}
        for result in table_report.results:
            shortened = result.shortened
            for reproduced in (result.paper, shortened if shortened and shortened.runs else None):
                if reproduced is not None:
                    out.append(_record(report, result, reproduced, labels[result.cell.row]))
    return out


RECORD_FIELDS = (
    "table",
    "row",
    "row_label",
    "model",
    "printed_model",
    "share",
    "protocol",
    "metric",
    "reported_params_m",
    "params_paper",
    "params_total",
    "reported_error",
    "error_mean",
    "error_std",
    "n",
    "seeds",
    "precision",
    "readings",
    "legacy_runs",
    "other_reading_runs",
    "compare_readings",
    "compare_error_mean",
    "compare_error_std",
    "compare_n",
    "trained_as",
    "diff",
    "tolerance_pp",
    "verdict",
    "reported_top5",
    "top5_mean",
    "top5_std",
    "top5_n",
    "top5_diff",
    "bold",
    "star",
    "running",
    "failed",
    "killed",
    "run_ids",
)


def _record(report: Report, result: CellResult, rep: Reproduced, label: str) -> dict[str, Any]:
    cell = result.cell
    paper = rep.protocol == mlflow_keys.PROTOCOL_PAPER
    error, top5 = rep.error, rep.top5
    compare = result.compare if paper else None
    return {
        "table": cell.table,
        "row": cell.row,
        "row_label": label,
        "model": cell.model,
        "printed_model": cell.printed_model,
        "share": cell.share,
        "protocol": rep.protocol,
        "metric": report.metric,
        "reported_params_m": _float(cell.reported_params_m),
        "params_paper": result.params_paper,
        "params_total": result.params_total,
        "reported_error": _float(cell.reported_error),
        "error_mean": error.mean if error else None,
        "error_std": error.std if error else None,
        "n": error.n if error else 0,
        "seeds": list(error.seeds) if error else [],
        "precision": ",".join(rep.precisions),
        "readings": rep.reading_text,
        "legacy_runs": rep.legacy,
        "other_reading_runs": len(result.other_readings) if paper else 0,
        "compare_readings": compare.reading_text if compare else "",
        "compare_error_mean": compare.error.mean if compare and compare.error else None,
        "compare_error_std": compare.error.std if compare and compare.error else None,
        "compare_n": compare.error.n if compare and compare.error else 0,
        "trained_as": shortened_size(rep),
        "diff": difference(error, cell.reported_error),
        "tolerance_pp": result.tolerance,
        "verdict": verdict_of(rep, cell.reported_error, result.tolerance) if paper else SHORTENED,
        "reported_top5": _float(cell.reported_top5),
        "top5_mean": top5.mean if top5 else None,
        "top5_std": top5.std if top5 else None,
        "top5_n": top5.n if top5 else 0,
        "top5_diff": difference(top5, cell.reported_top5),
        "bold": cell.bold,
        "star": cell.star,
        "running": rep.count(*ACTIVE),
        "failed": rep.count(FAILED),
        "killed": rep.count(KILLED),
        "run_ids": [r.run_id for r in rep.runs],
    }


def shortened_size(reproduced: Reproduced) -> str:
    """``2 epochs, 512 images`` for shortened runs (their epochs and subset), else ``""``."""
    if reproduced.protocol != mlflow_keys.PROTOCOL_SHORTENED:
        return ""
    return "; ".join(sorted({r.size_text for r in reproduced.runs if r.size_text}))


def _float(value: float | None) -> float | None:
    return None if value is None else float(value)


# --------------------------------------------------------------------------------------------
# The paper's layout: one line per variant, the row's original on its first line.


@dataclass(frozen=True)
class Entry:
    """One numeric cell of the layout: reported / reproduced / difference, and a verdict."""

    reported: str
    reproduced: str
    diff: str
    verdict: str | None = None  # None: not judged (parameters, top-5)
    bold: bool = False
    notes: tuple[str, ...] = ()  # extra lines, e.g. shortened-protocol numbers


Item = str | Entry | None


@dataclass(frozen=True)
class Layout:
    headers: tuple[str, ...]
    lines: tuple[tuple[Item, ...], ...]
    group_starts: frozenset[int] = field(default_factory=frozenset)


def layout(table_report: TableReport) -> Layout:
    """The grid of :func:`to_markdown` & co, in the column order the paper prints."""
    table = table_report.table
    imagenet = table.dataset == "imagenet"
    metrics = ("Top-1 (%)", "Top-5 (%)") if imagenet else ("Error (%)",)
    show_depth = any(str(row.depth) not in row.label for row in table.rows)
    m_columns = _m_columns(table)
    headers = ["Original model", *(["Depth"] if show_depth else []), "Params (M)", *metrics]
    headers += ["Variant", *(f"m{i} (k)" for i in m_columns), "Params (M)", *metrics]
    headers += ["Params with share (M)", *(f"{m[:-4]} with share (%)" for m in metrics)]
    results = {(r.cell.row, r.cell.model, r.cell.share): r for r in table_report.results}
    lines: list[tuple[Item, ...]] = []
    starts = set()
    for row in table.rows:
        starts.add(len(lines))
        original = results[(row.id, "original", False)]
        variants = list(dict.fromkeys(v.name for v in row.variants)) or [None]
        for index, name in enumerate(variants):
            first = index == 0
            line: list[Item] = [row.label if first else ""]
            if show_depth:
                line.append(str(row.depth) if first else "")
            line += _model_items(original, imagenet) if first else [None] * (1 + len(metrics))
            plain = results.get((row.id, name, False)) if name else None
            shared = results.get((row.id, name, True)) if name else None
            line.append(plain.cell.printed_model if plain else "")
            # m is a property of the row: printed once, on its first line, as in the paper.
            line += [_m_value(row, i) if first and plain else "" for i in m_columns]
            line += _model_items(plain, imagenet) if plain else [None] * (1 + len(metrics))
            line += _model_items(shared, imagenet) if shared else [None] * (1 + len(metrics))
            lines.append(tuple(line))
    return Layout(tuple(headers), tuple(lines), frozenset(starts))


def _m_columns(table: Table) -> list[int]:
    """Widths m1.. that vary across the table's rows; constant ones (m1 = 4k on ImageNet) are
    stated in the caption and, as in the paper, not listed."""
    widths = [row.m for row in table.rows if row.m is not None and row.variants]
    if not widths:
        return []
    count = min(len(m) for m in widths)
    return [i for i in range(1, count) if len({m[i] for m in widths}) > 1]


def _m_value(row: Row, index: int) -> str:
    return str(row.m[index]) if row.m is not None and index < len(row.m) else ""


def _model_items(result: CellResult, imagenet: bool) -> list[Item]:
    """Params, then error (or top-1 and top-5) entries of one cell."""
    cell = result.cell
    params = Entry(
        _printed(cell.reported_params_m),
        f"{result.params_m:.2f}",
        _signed(result.params_m - float(cell.reported_params_m))
        if cell.reported_params_m is not None
        else "",
    )
    items: list[Item] = [params, _error_entry(result)]
    if imagenet:
        items.append(
            Entry(
                _printed(cell.reported_top5) + ("*" if cell.star else ""),
                _stat_text(result.paper.top5),
                _signed(result.top5_diff),
            )
        )
    return items


def _error_entry(result: CellResult) -> Entry:
    cell = result.cell
    notes = ()
    if result.shortened is not None and result.shortened.runs:
        short = result.shortened
        text = _stat_text(short.error) if short.error else _state_text(short)
        diff = _signed(difference(short.error, cell.reported_error))
        size = shortened_size(short)
        mark = f"[shortened: {size}]" if size else "[shortened]"
        notes = (f"{mark} {text}" + (f" / {diff}" if diff else ""),)
    if result.paper.not_fp32:  # the paper trained in fp32: say when a number did not
        notes = (*notes, f"[{', '.join(result.paper.not_fp32)}]")
    if "resnet_stages" in dict(result.paper.readings):  # the reading this number is under
        notes = (*notes, f"[resnet_stages={dict(result.paper.readings)['resnet_stages']}]")
    if result.paper.legacy:
        notes = (*notes, f"[{result.paper.legacy} run(s) before the Torch-exact protocol]")
    if result.compare is not None:
        alt = result.compare
        text = _stat_text(alt.error) if alt.error else _state_text(alt)
        diff = _signed(difference(alt.error, cell.reported_error))
        notes = (*notes, f"[{alt.reading_text}] {text}" + (f" / {diff}" if diff else ""))
    verdict = result.verdict
    reproduced = _stat_text(result.paper.error) if result.paper.error else "-"
    return Entry(
        _printed(cell.reported_error) + ("*" if cell.star else ""),
        reproduced,
        _signed(result.diff),
        verdict,
        cell.bold,
        notes,
    )


def _printed(value: float | None) -> str:
    if value is None:
        return "-"
    decimals = getattr(value, "decimals", 2)
    return f"{float(value):.{decimals}f}"


def _signed(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:+.2f}" if round(value, 2) != 0 else "+0.00"  # never "-0.00"


def _stat_text(stat: Stat | None) -> str:
    if stat is None:
        return "-"
    if stat.std is None:
        return f"{stat.mean:.2f} (n=1)"
    return f"{stat.mean:.2f} ± {stat.std:.2f} (n={stat.n})"


def _state_text(reproduced: Reproduced) -> str:
    return verdict_of(reproduced, None, 0.0) if reproduced.error is None else "-"


def entry_text(entry: Entry, separator: str = " / ") -> str:
    """``4.51 / 4.60 ± 0.12 (n=3) / +0.09 within``; parameters omit the verdict."""
    parts = [entry.reported, entry.reproduced]
    if entry.diff:
        parts.append(entry.diff)
    text = separator.join(parts)
    if entry.verdict is not None:
        text += f" {entry.verdict}"
    return text


# --------------------------------------------------------------------------------------------
# Text around the tables.


def tolerance_text(report: Report, table_report: TableReport) -> str:
    dataset = DATASET_NAMES[table_report.table.dataset]
    source = "--tolerance" if report.tolerance_override is not None else f"{dataset} default"
    judged = "top-1" if table_report.table.dataset == "imagenet" else "error"
    return f"±{table_report.tolerance:.2f} pp on {judged} ({source})"


def table_notes(report: Report, table_report: TableReport) -> list[str]:
    table = table_report.table
    notes = [
        f"Error: {report.metric_label}, in %, mean ± sample std over seeds (n = seeds).",
        "Each cell: reported / reproduced / difference (reproduced - reported), then the verdict "
        f"for errors; tolerance {tolerance_text(report, table_report)}.",
        "Params: reported / counted from the model (millions; conv and FC weights and biases).",
        "Only paper-protocol runs count"
        + (
            "; [shortened] lines are shortened-protocol runs, never judged."
            if report.include_shortened
            else "."
        ),
    ]
    if table_report.hidden_shortened:
        n = table_report.hidden_shortened
        notes.append(f"{n} shortened run{'s' * (n != 1)} hidden (--include-shortened).")
    if table.dataset == "imagenet":
        notes.append("Top-5 is the final-epoch value in every mode and is not judged.")
    chosen = {**dict(table.readings), **dict(report.readings)}
    if report.best:
        chosen["reported_error"] = "best"
    from rkrepro.paper.readings import READINGS  # only those that apply to a model of the table

    used = {n for r in table_report.results for n in READINGS if READINGS[n].applies(r.cell.spec)}
    chosen = {k: v for k, v in chosen.items() if k in used}
    notes.append(
        "Readings: "
        + ", ".join(f"{k}={v}" for k, v in chosen.items())
        + (" (--reading)" if report.readings else " (the table's)")
        + "; only runs trained under them count, [name=value] notes say which."
    )
    if report.compare:
        compare = ", ".join(f"{k}={v}" for k, v in report.compare)
        notes.append(f"[{compare}] lines: the same cell under --compare {compare}, not judged.")
    if table.star_note:
        notes.append(table.star_note)
    return notes


def summary_text(table_report: TableReport) -> str:
    counts = table_report.summary()
    return ", ".join(f"{name} {counts[name]}" for name in VERDICTS if counts[name])


def bold_claim_rows(table_report: TableReport) -> list[tuple[str, str, str, str, str, str]]:
    labels = {row.id: row.label for row in table_report.table.rows}
    rows = []
    for claim in table_report.claims:
        cell = claim.result.cell
        rows.append(
            (
                labels[cell.row],
                cell.printed_model,
                "yes" if cell.share else "no",
                "bold" if claim.paper_bold else "-",
                _yes_no(claim.on_paper),
                _yes_no(claim.on_reproduced),
            )
        )
    return rows


BOLD_CLAIMS_TITLE = (
    "Bold claims: fewer parameters and lower error than the row's original "
    "(reproduced: counted parameters and seed means)"
)
BOLD_CLAIMS_HEADERS = ("Row", "Variant", "Share", "Paper", "Rule on paper numbers", "On reproduced")


def _yes_no(value: bool | None) -> str:
    return {True: "holds", False: "fails", None: "undecided"}[value]


# --------------------------------------------------------------------------------------------
# The paper's claims (``report --claims``): what every format shows of one claim.

PAPER_CLAIMS_COLUMNS = (
    "Claim",
    "Section",
    "Statement",
    "On the paper's numbers",
    "On the reproduction",
)


def paper_claim_texts(result: ClaimResult) -> tuple[str, str, str, str, str]:
    paper, reproduced = verdict_texts(result)
    return (result.claim.id, result.claim.section, result.claim.text, paper, reproduced)


def paper_claim_failures(result: ClaimResult) -> list[str]:
    lines = [f"paper: {pair_text(p, False)}" for p in result.failing(False)[:3]]
    return lines + [f"reproduction: {pair_text(p, True)}" for p in result.failing(True)[:3]]


PAPER_CLAIMS_NOTE = (
    "Each claim is a predicate over pairs of cells, judged by the same rule on the paper's printed "
    "numbers and on the reproduction (counted parameters; seed means of paper-protocol runs). "
    "Pairs the paper printed no number for are left out."
)
