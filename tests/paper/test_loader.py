"""rkrepro.paper.loader: the shipped tables, loaded, against the paper (printed precision,
dashes, protocols, learning-rate rules, m columns), and files the YAML loader refuses."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import yaml

from rkrepro.errors import TableError
from rkrepro.paper.loader import load_tables, parse_table
from rkrepro.paper.lookup import all_cells, find_row, resolve_cells
from rkrepro.paper.model import Printed
from rkrepro.spec import IMAGENET_DENSENET_BLOCKS

SHIPPED = Path(__file__).resolve().parents[2] / "tables"


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
        with pytest.raises(TableError, match=message):
            parse_table(data, tmp_path / "t.yaml")
    data = {**base, "protocol": {**base["protocol"]}}
    del data["protocol"]["lr_schedule"], data["protocol"]["lr_milestones"]
    with pytest.raises(TableError, match="missing required field 'lr_milestones'"):
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


@pytest.mark.bad_input
def test_yaml_syntax_error_names_the_line(tmp_path):
    (tmp_path / "t.yaml").write_text("id: t\nrows: [\n  - id: a\n", encoding="utf-8")
    with pytest.raises(TableError, match=r"t\.yaml: line \d+, column \d+: YAML syntax error"):
        load_tables(tmp_path)


@pytest.mark.bad_input
def test_duplicate_yaml_keys_are_errors(tmp_path):
    text = (
        (SHIPPED / "table1.yaml")
        .read_text(encoding="utf-8")
        .replace("dataset: cifar10\nprotocol:", "dataset: cifar10\ndataset: cifar100\nprotocol:")
    )
    (tmp_path / "table1.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(TableError, match="duplicate key 'dataset'"):
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
