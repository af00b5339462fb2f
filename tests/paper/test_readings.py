"""rkrepro.paper.readings: each table names its readings, rows override them, cells and
model specs carry them, and runs without reading tags resolve to what they were trained as."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rkrepro.errors import TableError
from rkrepro.paper.loader import load_tables, parse_table
from rkrepro.paper.lookup import all_cells
from rkrepro.paper.model import with_readings

SHIPPED = Path(__file__).resolve().parents[2] / "tables"


@pytest.fixture(scope="module")
def tables():
    return load_tables(SHIPPED)


def test_tables_name_their_readings(tables):
    """Every shipped table names its readings; cells carry them, and the ResNet stage wiring
    reaches the model spec, where it applies to multi-stage variants only."""
    from rkrepro.paper import readings

    for table in tables.values():
        assert set(dict(table.readings)) == set(readings.READINGS)
    cells = {c.key: c for c in all_cells(tables, "table4")}
    multi = cells["table4/resnet-20/RKNet-3x1_2x1_2x1/noshare"]
    one = cells["table4/resnet-20/RKNet-1x3_1x2_1x2/noshare"]
    assert multi.reading == dict(readings.DEFAULTS)
    assert readings.DEFAULTS["resnet_stages"] == "concat"
    assert multi.spec.resnet_stages == "concat" and "resnet_stages" in multi.applicable_readings()
    assert "resnet_stages" not in one.applicable_readings()  # s = 1: every wiring is the same
    dense = all_cells(tables, "table1")[0]
    assert "resnet_stages" not in dense.applicable_readings()
    lincomb = with_readings(multi, readings.parse_overrides(["resnet_stages=lincomb"]))
    assert lincomb.spec.resnet_stages == "lincomb" and lincomb.reading["resnet_stages"] == "lincomb"
    assert lincomb.key == multi.key and lincomb != multi  # same cell, another reading


def test_row_readings_override_the_tables(tmp_path):
    data = yaml.safe_load((SHIPPED / "table4.yaml").read_text())
    data["rows"][0]["readings"] = {"resnet_stages": "euler", "reported_error": "best"}
    table = parse_table(data, tmp_path / "t.yaml")
    cells = {c.key: c for c in all_cells({"table4": table})}
    row0 = cells["table4/resnet-20/RKNet-3x1_2x1_2x1/noshare"]
    row1 = cells["table4/resnet-32/RKNet-5x1_4x1_4x1/noshare"]
    assert row0.spec.resnet_stages == "euler" and row0.reading["reported_error"] == "best"
    assert row1.spec.resnet_stages == "concat" and row1.reading["reported_error"] == "final"


@pytest.mark.bad_input
def test_bad_readings_are_one_line_errors(tmp_path):
    from rkrepro.paper import readings

    data = yaml.safe_load((SHIPPED / "table4.yaml").read_text())
    for bad, message in [
        ({"resnet_stage": "concat"}, "unknown reading 'resnet_stage'"),
        ({"resnet_stages": "rk4"}, "resnet_stages must be one of concat|lincomb|euler"),
    ]:
        with pytest.raises(TableError, match=message) as caught:
            parse_table({**data, "readings": bad}, tmp_path / "t.yaml")
        assert "\n" not in str(caught.value)
    rows = [{**data["rows"][0], "readings": {"precision": "fp8"}}]
    with pytest.raises(TableError, match=r"row 'resnet-20': readings: reading precision"):
        parse_table({**data, "rows": rows}, tmp_path / "t.yaml")
    for text, message in [
        ("resnet_stages", "expected NAME=VALUE"),
        ("stages=concat", "unknown reading 'stages'"),
        ("reported_error=median", "must be one of final|best"),
    ]:
        with pytest.raises(TableError, match=message):
            readings.parse_overrides([text])


def test_runs_without_reading_tags_resolve_to_what_they_were_trained_as():
    from rkrepro.paper import readings
    from rkrepro.spec import ModelSpec

    spec = ModelSpec("resnet", "cifar10", 20, periods=((3, 1), (2, 1), (2, 1)))
    legacy = readings.from_tags({"rkrepro.table": "table4"}, spec)
    assert legacy == {"resnet_stages": "euler", "reported_error": "final", "precision": "fp32"}
    assert readings.from_tags({"rkrepro.precision": "bf16-autocast"}, spec)["precision"] == (
        "bf16-autocast"
    )
    new = readings.tags(dict(readings.DEFAULTS), spec)
    assert readings.from_tags(new, spec)["resnet_stages"] == "concat"
    one_stage = ModelSpec("resnet", "cifar10", 20, periods=((1, 3), (1, 2), (1, 2)))
    assert "rkrepro.reading.resnet_stages" not in readings.tags(dict(readings.DEFAULTS), one_stage)
    assert readings.identity(dict(readings.DEFAULTS), spec) == {"resnet_stages": "concat"}
    assert readings.identity(dict(readings.DEFAULTS), one_stage) == {}
