"""rkrepro.paper.schema: a malformed table gives one clear error naming file, place and
field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rkrepro.errors import TableError
from rkrepro.paper.loader import load_tables

SHIPPED = Path(__file__).resolve().parents[2] / "tables"


def _write_variant_of_table1(tmp_path: Path, mutate) -> Path:
    data = yaml.safe_load((SHIPPED / "table1.yaml").read_text(encoding="utf-8"))
    mutate(data)
    (tmp_path / "table1.yaml").write_text(yaml.safe_dump(data, allow_unicode=True), "utf-8")
    return tmp_path


def _row(data, row_id="densenet-bc-k12"):
    return next(r for r in data["rows"] if r["id"] == row_id)


MALFORMED = {
    "unknown key": (
        lambda d: _row(d).update(grwoth_rate=12),
        r"row 'densenet-bc-k12': unknown field 'grwoth_rate' \(did you mean 'growth_rate'\?\)",
    ),
    "wrong type": (
        lambda d: _row(d).update(depth="hundred"),
        r"row 'densenet-bc-k12': field 'depth' must be an integer, got str 'hundred'",
    ),
    "bool as number": (
        lambda d: _row(d)["original"].update(error=True),
        r"original: field 'error' must be a number, got a boolean",
    ),
    "parts vs periods": (
        lambda d: _row(d)["variants"][0].update(name="RKNet-8x1_2x1"),
        r"variant 'RKNet-8x1_2x1': has 2 s×r parts but a cifar10 model has 3 periods",
    ),
    "m length": (
        lambda d: _row(d).update(m=[2, 9]),
        r"row 'densenet-bc-k12': 'm' has 2 entries but a cifar10 model has 3 periods",
    ),
    "m zero": (
        lambda d: _row(d).update(m=[2, 0, 12]),
        r"field 'm' must hold positive integers, got 0",
    ),
    "duplicate row": (
        lambda d: _row(d, "densenet-bc-k40").update(id="densenet-bc-k12"),
        r"duplicate row id 'densenet-bc-k12'",
    ),
    "duplicate variant": (
        lambda d: _row(d)["variants"][1].update(name="RKNet-8×1_2×1_2×1"),
        r"duplicate variant",
    ),
    "unknown family": (
        lambda d: _row(d).update(family="densenett"),
        r"unknown family 'densenett'",
    ),
    "zero stages": (
        lambda d: _row(d)["variants"][0].update(name="RKNet-0x1_2x1_2x1"),
        r"stages s and time-steps r must be >= 1",
    ),
    "negative batch": (
        lambda d: d["protocol"].update(batch_size=-64),
        r"protocol: field 'batch_size' must be >= 1",
    ),
    "missing field": (
        lambda d: _row(d).pop("depth"),
        r"missing required field 'depth'",
    ),
    "top1 on cifar": (
        lambda d: _row(d)["original"].update(top1=4.5),
        r"field 'top1' does not apply to cifar10",
    ),
    "star without protocol": (
        lambda d: _row(d)["original"].update(star=True),
        r"star: true but no star_protocol",
    ),
}


@pytest.mark.bad_input
@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_tables_give_one_clear_error(tmp_path, case):
    mutate, expected = MALFORMED[case]
    directory = _write_variant_of_table1(tmp_path, mutate)
    with pytest.raises(TableError, match=expected) as caught:
        load_tables(directory)
    message = str(caught.value)
    assert message.startswith(str(directory / "table1.yaml"))
    assert "\n" not in message
