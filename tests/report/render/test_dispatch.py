"""The choice of a renderer by format name (:mod:`rkrepro.report.render`): every format of
``rkrepro report`` writes its file."""

from __future__ import annotations

import csv
import io
import json

import pytest

from ..helpers_report import invoke


@pytest.mark.parametrize("fmt", ["rich", "markdown", "csv", "json", "latex", "html"])
def test_cli_every_format(store, fmt, tmp_path):
    uri, _ = store
    out = tmp_path / "report.out"
    result = invoke("report", "table4", "--format", fmt, "--tracking-uri", uri, "--out", str(out))
    assert result.exit_code == 0, result.output
    text = out.read_text(encoding="utf-8")
    assert "ResNet-20" in text
    if fmt == "json":
        assert json.loads(text)["tables"][0]["id"] == "table4"
    if fmt == "csv":
        assert len(list(csv.DictReader(io.StringIO(text)))) == 24
