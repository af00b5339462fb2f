"""The terminal format (:mod:`rkrepro.report.render.terminal`): rich tables and claims, and the
plain text they become in an ``--out`` file."""

from __future__ import annotations

from rkrepro.report.claims import evaluate_claims
from rkrepro.report.render.terminal import print_claims, print_tables

from ..helpers_report import report_of


def test_tables_in_a_file_are_plain_text_with_whole_numbers(store, tmp_path):
    out = tmp_path / "report.txt"
    print_tables(report_of(store[0], "table4"), out)
    text = out.read_text(encoding="utf-8")
    assert "\x1b" not in text  # no colour codes in a file
    assert max(len(line) for line in text.splitlines()) <= 220
    assert "Table 4 (CIFAR-10) - reported / reproduced / diff" in text
    assert "7.30 ± 0.10 (n=3)" in text  # a seed mean is never folded
    assert "Verdicts: within 1, better 1, worse 1" in text


def test_claims_in_a_file_show_every_claim_whole_in_160_columns(store, tmp_path):
    results = evaluate_claims(report_of(store[0], None))
    out = tmp_path / "claims.txt"
    print_claims(results, out)
    text = out.read_text(encoding="utf-8")
    assert "\x1b" not in text
    assert max(len(line) for line in text.splitlines()) <= 160
    assert results and all(result.claim.id in text for result in results)
