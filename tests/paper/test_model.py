"""rkrepro.paper.model: variant names in either spelling, and the one rounding rule of
printed numbers."""

from __future__ import annotations

import pytest

from rkrepro.errors import TableError
from rkrepro.paper.model import Printed, format_variant_name, normalise_name, parse_variant_name


def matches_printed(count: int, printed: str) -> bool:
    return Printed.parse(printed).matches_count(count)


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("RKNet-1×8_1×2_1×2", ((1, 8), (1, 2), (1, 2))),
        ("RKNet-1x8_1x2_1x2", ((1, 8), (1, 2), (1, 2))),
        ("rknet-3X2_4x1", ((3, 2), (4, 1))),
        ("1x18_1x17_1x17", ((1, 18), (1, 17), (1, 17))),
    ],
)
def test_variant_names_parse_both_spellings(text, parts):
    assert parse_variant_name(text) == parts
    assert parse_variant_name(format_variant_name(parts, ascii_x=False)) == parts
    assert normalise_name(text) == format_variant_name(parts)


@pytest.mark.bad_input
@pytest.mark.parametrize("bad", ["RKNet-", "RKNet-1x", "RKNet-0x2_1x1_1x1", "DenseNet-121", "1-8"])
def test_bad_variant_names_are_rejected(bad):
    with pytest.raises(TableError):
        parse_variant_name(bad)


def test_rounding_helper() -> None:
    assert matches_printed(745_174, "0.75")
    assert matches_printed(754_999, "0.75") and not matches_printed(755_000, "0.75")
    assert matches_printed(749_999, "0.75") and matches_printed(745_000, "0.75")
    assert not matches_printed(744_999, "0.75")
    assert matches_printed(1_650_000, "1.7") and not matches_printed(1_750_000, "1.7")
