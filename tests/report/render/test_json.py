"""JSON (:mod:`rkrepro.report.render.json`)."""

from __future__ import annotations

import json

from rkrepro.report.render.json import to_json
from rkrepro.tracking import keys as mlflow_keys

from ..helpers_report import report_of


def test_json_keeps_full_precision(store):
    result = report_of(store[0], "table4", include_shortened=True)
    document = json.loads(to_json(result))
    cells = document["tables"][0]["cells"]
    original = next(c for c in cells if c["model"] == "original" and c["row"] == "resnet-20")
    assert original["error_mean"] == sum([7.20, 7.30, 7.40]) / 3
    assert original["seeds"] == ["0", "1", "2"] and len(original["run_ids"]) == 4
    assert document["tables"][0]["summary"]["worse"] == 1
    assert document["metric"] == mlflow_keys.M_FINAL_TEST_ERROR
