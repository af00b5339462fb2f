"""The shipped tables against the paper, the schema's errors, and name parsing."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import yaml

from rkrepro.errors import TargetError
from rkrepro.spec import IMAGENET_DENSENET_BLOCKS
from rkrepro.targets import (
    Printed,
    all_cells,
    find_row,
    find_table,
    format_variant_name,
    load_tables,
    normalise_name,
    parse_table,
    parse_variant_name,
    resolve_cells,
    with_readings,
)

SHIPPED = Path(__file__).resolve().parent.parent / "tables"


@pytest.fixture(scope="module")
def tables():
    return load_tables(SHIPPED)


# (rows, variants, "with share" cells) as printed in Tables 1-4.
PAPER_SHAPE = {"table1": (7, 17, 7), "table2": (4, 4, 4), "table3": (4, 5, 4), "table4": (5, 14, 5)}


@pytest.mark.parametrize("table_id", sorted(PAPER_SHAPE))
def test_cell_counts_equal_the_paper(tables, table_id):
    table = tables[table_id]
    rows, variants, shared = PAPER_SHAPE[table_id]
    assert len(table.rows) == rows
    assert sum(len(r.variants) for r in table.rows) == variants
    assert sum(1 for r in table.rows for v in r.variants if v.share is not None) == shared
    assert len(all_cells(tables, table_id)) == rows + variants + shared


def test_printed_parameter_cells_are_66(tables):
    printed = [c for c in all_cells(tables) if c.reported_params_m is not None]
    assert len(printed) == 66


def test_reported_numbers_keep_printed_precision(tables):
    row = find_row(tables["table1"], "densenet-bc-k12")
    assert row.original.params_m == 0.75 and row.original.params_m.decimals == 2
    assert repr(row.original.params_m) == "0.75"
    d40 = find_row(tables["table1"], "densenet-k12-d40")
    assert repr(d40.original.params_m) == "1.0"
    assert repr(d40.variants[0].reported.error) == "5.00"
    assert Printed(0.75, 2).interval() == pytest.approx((0.745, 0.755))


def test_dashes_are_null_not_zero(tables):
    row = find_row(tables["table1"], "densenet-k24-d100")
    assert row.variants[0].reported.error is None
    assert row.variants[1].share.params_m == 44.0 and row.variants[1].share.error is None
    d292 = find_row(tables["table2"], "densenet-bc-k24-d292")
    assert d292.original.error is None and d292.original.params_m == 20.3


def test_star_cells_use_the_batch_128_protocol(tables):
    cells = {c.key: c for c in all_cells(tables, "table3")}
    starred = {k for k, c in cells.items() if c.star}
    assert starred == {
        "table3/densenet-161/original/noshare",
        "table3/densenet-201/RKNet-1x3_1x3_1x6_1x2/share",
    }
    star = cells["table3/densenet-161/original/noshare"].protocol
    plain = cells["table3/densenet-121/original/noshare"].protocol
    assert (star.batch_size, star.epochs, star.lr_milestones) == (128, 100, (30, 60, 90))
    assert (plain.batch_size, plain.epochs, plain.lr_milestones) == (256, 90, (30, 60))


def test_imagenet_cells_carry_top1_and_top5(tables):
    cell = all_cells(tables, "table3")[0]
    assert (cell.reported_error, cell.reported_top5) == (25.02, 7.71)


def test_cifar_protocol_is_the_papers(tables):
    for table_id in ("table1", "table2", "table4"):
        p = tables[table_id].protocol
        # 0-based MultiStepLR milestones: the Torch code's 150th epoch already trains at 0.01.
        assert (p.batch_size, p.epochs, p.lr_milestones) == (64, 300, (149, 224))
        assert (p.lr, p.momentum, p.weight_decay) == (0.1, 0.9, 1e-4)


def _lr_per_epoch(milestones: tuple[int, ...], epochs: int) -> list[float]:
    """What MultiStepLR gives each 1-based epoch: 0.1 * 0.1^(milestones <= epoch - 1)."""
    return [0.1 * 0.1 ** sum(m <= e - 1 for m in milestones) for e in range(1, epochs + 1)]


def _torch_cifar_lr(epoch: int, n_epochs: int) -> float:
    """liuzhuang13/DenseNet train.lua, Trainer:learningRate for cifar10/cifar100, verbatim."""
    decay = 2 if epoch >= 0.75 * n_epochs else 1 if epoch >= 0.5 * n_epochs else 0
    return 0.1 * 0.1**decay


def _torch_imagenet_lr(epoch: int) -> float:
    """train.lua for imagenet: decay = math.floor((epoch - 1) / 30)."""
    return 0.1 * 0.1 ** ((epoch - 1) // 30)


def test_lr_rule_is_the_torch_codes(tables):
    """Every epoch's learning rate against the Lua formula: full runs, and shortened CIFAR
    runs of every length (the rule is relative to nEpochs)."""
    cifar = tables["table1"].protocol
    lrs = _lr_per_epoch(cifar.lr_milestones, 300)
    assert [lrs.count(v) for v in sorted(set(lrs), reverse=True)] == [149, 75, 76]
    for n in range(1, 301):
        got = _lr_per_epoch(cifar.milestones_for(n), n)
        assert got == [_torch_cifar_lr(e, n) for e in range(1, n + 1)], n
    plain, star = tables["table3"].protocol, tables["table3"].star_protocol
    for p in (plain, star):
        got = _lr_per_epoch(p.milestones_for(p.epochs), p.epochs)
        assert got == [_torch_imagenet_lr(e) for e in range(1, p.epochs + 1)]
    # Shortened ImageNet runs keep the period's share of the run (3 of 9 epochs).
    assert plain.milestones_for(9) == (3, 6) and star.milestones_for(10) == (3, 6, 9)


@pytest.mark.bad_input
def test_lr_schedule_errors(tmp_path):
    base = yaml.safe_load((SHIPPED / "table4.yaml").read_text())
    cases = [
        ({"drop_at": [0.5, 0.75]}, [150, 225], "disagree with lr_schedule"),
        ({"drop_at": [0.75, 0.5]}, None, "must increase"),
        ({"drop_at": [0.5], "drop_every": 30}, None, "exactly one"),
        ({"drop_at": [1.5]}, None, r"fractions in \(0, 1\]"),
        ({"drop_every": 0}, None, "must be >= 1"),
        ({"drop_evry": 30}, None, "did you mean 'drop_every'"),
    ]
    for schedule, milestones, message in cases:
        data = {**base, "protocol": {**base["protocol"], "lr_schedule": schedule}}
        data["protocol"].pop("lr_milestones")
        if milestones is not None:
            data["protocol"]["lr_milestones"] = milestones
        with pytest.raises(TargetError, match=message):
            parse_table(data, tmp_path / "t.yaml")
    data = {**base, "protocol": {**base["protocol"]}}
    del data["protocol"]["lr_schedule"], data["protocol"]["lr_milestones"]
    with pytest.raises(TargetError, match="missing required field 'lr_milestones'"):
        parse_table(data, tmp_path / "t.yaml")


def _dense_block_layers(row) -> list[int]:
    if row.m is not None and len(row.m) == 4:
        return list(IMAGENET_DENSENET_BLOCKS[row.depth])
    n = (row.depth - 4) // 3
    return [n // 2 if row.bottleneck else n] * 3


def _derived_m(row) -> list[int]:
    """Section 3.1: m_p = floor(original transition output / k); m0 = 2."""
    k = row.growth_rate
    width, ms = 2 * k, [2]
    for layers in _dense_block_layers(row)[:-1]:
        width = math.floor((width + layers * k) * row.compression)
        ms.append(width // k)
    return ms


def test_m_columns_follow_section_3_1(tables):
    rows = [r for t in tables.values() for r in t.rows if r.family != "resnet"]
    assert len(rows) == 15
    for row in rows:
        assert list(row.m) == _derived_m(row), row.id


def test_every_variant_keeps_the_growth_count_per_period(tables):
    """s·r = ceil(growth layers / m) for DenseNet variants; = period blocks for ResNets."""
    for table in tables.values():
        for row in table.rows:
            if row.family == "resnet":
                n = (row.depth - 2) // 6
                expected = [n, n - 1, n - 1]
            else:
                expected = [
                    math.ceil(g / m) for g, m in zip(_dense_block_layers(row), row.m, strict=True)
                ]
            for variant in row.variants:
                assert [s * r for s, r in variant.periods] == expected, (row.id, variant.name)


def test_one_step_variants_have_the_derived_stage_count(tables):
    row = find_row(tables["table1"], "densenet-bc-k12")
    assert row.variants[0].periods == ((8, 1), (2, 1), (2, 1))


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
    with pytest.raises(TargetError):
        parse_variant_name(bad)


def test_row_ids_resolve(tables):
    row = find_row(tables["table1"], "densenet-bc-k12")
    assert (row.family, row.growth_rate, row.depth) == ("densenet-bc", 12, 100)
    assert find_row(tables["table1"], "densenet-bc-k12-d100") is row
    assert find_row(tables["table1"], "densenet-bc-k24-d250").depth == 250
    assert find_row(tables["table4"], "resnet-56").depth == 56
    assert find_row(tables["table3"], "densenet-121").growth_rate == 32
    assert find_table(tables, "1") is tables["table1"]


def test_unknown_names_suggest_close_matches(tables):
    with pytest.raises(TargetError, match="did you mean densenet-bc-k12"):
        find_row(tables["table1"], "densenet-bc-k21")
    with pytest.raises(TargetError, match="did you mean table1"):
        find_table(tables, "tabel1")
    with pytest.raises(TargetError, match="RKNet-1x8_1x2_1x2"):
        resolve_cells(tables, "table1", "densenet-bc-k12", ["RKNet-1x8_1x2_1x3"])


def test_resolve_cells_selects_variants_and_sharing(tables):
    everything = resolve_cells(tables, "table1", "densenet-bc-k12")
    assert [c.key.split("/", 2)[2] for c in everything] == [
        "original/noshare",
        "RKNet-8x1_2x1_2x1/noshare",
        "RKNet-1x8_1x2_1x2/noshare",
        "RKNet-1x8_1x2_1x2/share",
        "RKNet-2x4_2x1_2x1/noshare",
    ]
    one = resolve_cells(tables, "table1", "densenet-bc-k12", ["RKNet-1×8_1×2_1×2"], "share")
    assert [(c.model, c.share, c.reported_params_m) for c in one] == [
        ("RKNet-1x8_1x2_1x2", True, 0.33)
    ]
    unprinted = resolve_cells(tables, "table1", "densenet-bc-k12", ["RKNet-2x4_2x1_2x1"], "share")
    assert unprinted[0].share and unprinted[0].reported_params_m is None
    assert unprinted[0].spec.share and unprinted[0].spec.periods == ((2, 4), (2, 1), (2, 1))


# --------------------------------------------------------------------------------------------
# Malformed tables: each gives one clear error naming file, place and field.


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
    with pytest.raises(TargetError, match=expected) as caught:
        load_tables(directory)
    message = str(caught.value)
    assert message.startswith(str(directory / "table1.yaml"))
    assert "\n" not in message


@pytest.mark.bad_input
def test_yaml_syntax_error_names_the_line(tmp_path):
    (tmp_path / "t.yaml").write_text("id: t\nrows: [\n  - id: a\n", encoding="utf-8")
    with pytest.raises(TargetError, match=r"t\.yaml: line \d+, column \d+: YAML syntax error"):
        load_tables(tmp_path)


@pytest.mark.bad_input
def test_duplicate_yaml_keys_are_errors(tmp_path):
    text = (
        (SHIPPED / "table1.yaml")
        .read_text(encoding="utf-8")
        .replace("dataset: cifar10\nprotocol:", "dataset: cifar10\ndataset: cifar100\nprotocol:")
    )
    (tmp_path / "table1.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(TargetError, match="duplicate key 'dataset'"):
        load_tables(tmp_path)


def test_a_user_table_with_any_variant_loads(tmp_path):
    shutil.copy(SHIPPED / "table1.yaml", tmp_path / "table1.yaml")
    mine = {
        "id": "mine",
        "dataset": "cifar100",
        "protocol": {**yaml.safe_load((SHIPPED / "table2.yaml").read_text())["protocol"]},
        "rows": [
            {
                "id": "tiny-bc",
                "family": "densenet-bc",
                "depth": 16,
                "growth_rate": 6,
                "bottleneck": True,
                "compression": 0.5,
                "m": [2, 3, 4],
                "original": {"params_m": None, "error": None},
                "variants": [{"name": "RKNet-3x2_1x3_2x2", "share": {}}],
            }
        ],
    }
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(mine), encoding="utf-8")
    tables = load_tables(tmp_path)
    assert list(tables) == ["mine", "table1"]
    cells = resolve_cells(tables, "mine", "tiny-bc")
    assert [c.model for c in cells] == ["original", "RKNet-3x2_1x3_2x2", "RKNet-3x2_1x3_2x2"]
    assert cells[-1].spec.num_classes == 100


# ------------------------------------------------------------------------------- readings


def test_tables_name_their_readings(tables):
    """Every shipped table names its readings; cells carry them, and the ResNet stage wiring
    reaches the model spec, where it applies to multi-stage variants only."""
    from rkrepro import readings

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
    from rkrepro import readings

    data = yaml.safe_load((SHIPPED / "table4.yaml").read_text())
    for bad, message in [
        ({"resnet_stage": "concat"}, "unknown reading 'resnet_stage'"),
        ({"resnet_stages": "rk4"}, "resnet_stages must be one of concat|lincomb|euler"),
    ]:
        with pytest.raises(TargetError, match=message) as caught:
            parse_table({**data, "readings": bad}, tmp_path / "t.yaml")
        assert "\n" not in str(caught.value)
    rows = [{**data["rows"][0], "readings": {"precision": "fp8"}}]
    with pytest.raises(TargetError, match=r"row 'resnet-20': readings: reading precision"):
        parse_table({**data, "rows": rows}, tmp_path / "t.yaml")
    for text, message in [
        ("resnet_stages", "expected NAME=VALUE"),
        ("stages=concat", "unknown reading 'stages'"),
        ("reported_error=median", "must be one of final|best"),
    ]:
        with pytest.raises(TargetError, match=message):
            readings.parse_overrides([text])


def test_runs_without_reading_tags_resolve_to_what_they_were_trained_as():
    from rkrepro import readings
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
