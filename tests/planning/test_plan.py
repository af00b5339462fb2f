"""Plans (:mod:`rkrepro.planning.plan`): what is run identity (config hash) and what is not."""

from __future__ import annotations

from dataclasses import replace

import pytest
from helpers_training import (
    PAPER,
    TINY,
)

from rkrepro.errors import RkreproError
from rkrepro.planning.options import RunOptions
from rkrepro.planning.plan import make_plans, scale_milestones
from rkrepro.spec import ModelSpec


def test_milestones_scale_with_shortened_runs() -> None:
    assert scale_milestones((150, 225), 300, 300) == (150, 225)
    assert scale_milestones((150, 225), 300, 30) == (15, 23)  # 22.5 rounds half up
    assert scale_milestones((30, 60), 90, 9) == (3, 6)
    assert scale_milestones((150, 225), 300, 1) == (1,)


def test_config_hash_separates_configurations() -> None:
    from rkrepro.paper import Cell

    cell = Cell("t", "r", "original", False, TINY, PAPER, None, None, None)
    base = make_plans([cell], [0, 1], RunOptions())
    assert base[0].config_hash != base[1].config_hash  # seed
    assert base[0].config_hash == make_plans([cell], [0], RunOptions())[0].config_hash
    short = make_plans([cell], [0], RunOptions(epochs=30))[0]
    subset = make_plans([cell], [0], RunOptions(train_subset=100))[0]
    mem = make_plans([cell], [0], RunOptions(memory_efficient=True))[0]
    hashes = {base[0].config_hash, short.config_hash, subset.config_hash, mem.config_hash}
    assert len(hashes) == 4
    assert short.shortened and subset.shortened and not base[0].shortened
    assert short.protocol.lr_milestones == (15, 23)


def test_gpu_decode_is_identity_for_imagenet_on_cuda_only() -> None:
    from rkrepro.paper import Cell

    imagenet = ModelSpec(family="densenet", dataset="imagenet", depth=121, growth_rate=32)
    protocol = replace(PAPER, dataset="imagenet", batch_size=256, epochs=90)
    cells = [
        Cell("t", "r", "original", False, imagenet, protocol, None, None, None),
        Cell("t", "c", "original", False, TINY, PAPER, None, None, None),
    ]

    def plans(device_type: str, fast_path: str | None = None):
        return make_plans(cells, [0], RunOptions(fast_path=fast_path), device_type)

    base, decoded = plans("cuda"), plans("cuda", "+gpu_decode")
    assert not base[0].gpu_decode and "gpu_decode" not in base[0].fast_path  # off by default
    assert decoded[0].gpu_decode and "gpu_decode" in decoded[0].fast_path
    assert decoded[0].config_hash != base[0].config_hash  # other pixels: another run
    assert not decoded[1].gpu_decode and decoded[1].config_hash == base[1].config_hash  # CIFAR
    on_cpu = plans("cpu", "+gpu_decode")
    assert not on_cpu[0].gpu_decode and on_cpu[0].config_hash == plans("cpu")[0].config_hash


def test_readings_are_run_identity_and_tags() -> None:
    """A multi-stage ResNet cell under concat, lincomb and euler: three runs, each tagged with
    its reading; a one-stage cell or a DenseNet cell hashes the same under every wiring."""
    from rkrepro.paper import all_cells, load_tables
    from rkrepro.paper.readings import TAG_PREFIX

    tables = load_tables()
    cells = {c.key: c for c in all_cells(tables, "table4")}
    multi = cells["table4/resnet-20/RKNet-3x1_2x1_2x1/noshare"]
    one = cells["table4/resnet-20/RKNet-1x3_1x2_1x2/noshare"]
    dense = all_cells(tables, "table1")[0]

    def plan(cell, *reading: str):
        return make_plans([cell], [0], RunOptions(reading=reading), "cpu")[0]

    wirings = {w: plan(multi, f"resnet_stages={w}") for w in ("concat", "lincomb", "euler")}
    assert len({p.config_hash for p in wirings.values()}) == 3
    assert plan(multi).config_hash == wirings["concat"].config_hash  # the table's default
    for wiring, p in wirings.items():
        assert p.cell.spec.resnet_stages == wiring
        assert p.tags()[TAG_PREFIX + "resnet_stages"] == wiring
        assert p.identity()["readings"] == {"resnet_stages": wiring}
        assert p.config()["reading"]["resnet_stages"] == wiring
    for cell in (one, dense):
        base = plan(cell)
        assert "readings" not in base.identity() and "resnet_stages" not in base.identity()["spec"]
        assert plan(cell, "resnet_stages=lincomb").config_hash == base.config_hash
        assert TAG_PREFIX + "resnet_stages" not in base.tags()
    # Reporting readings label a run without changing what it trains.
    best = plan(multi, "reported_error=best")
    assert best.config_hash == wirings["concat"].config_hash
    assert best.tags()[TAG_PREFIX + "reported_error"] == "best"
    assert plan(dense).tags()[TAG_PREFIX + "precision"] == "fp32"
    cuda = make_plans([dense], [0], RunOptions(precision="bf16"), "cuda")[0]
    assert cuda.tags()[TAG_PREFIX + "precision"] == "bf16-autocast"  # what it trains in
    with pytest.raises(RkreproError, match="use --precision fp32"):
        plan(dense, "precision=fp32")
    with pytest.raises(RkreproError, match="unknown reading 'stages'"):
        plan(dense, "stages=concat")
    args = RunOptions(reading=("resnet_stages=euler", "reported_error=best")).job_args()
    assert args[-4:] == ["--reading", "resnet_stages=euler", "--reading", "reported_error=best"]


def test_protocol_changes_are_run_identity() -> None:
    """The Torch code's LR rule (in the milestones, also for shortened runs), CIFAR-100's own
    normalisation and fb.resnet.torch's ImageNet transforms name new runs; CIFAR-10's pipeline
    did not change."""
    from rkrepro.paper import all_cells, load_tables

    tables = load_tables()

    def identity(table: str, **options):
        cell = all_cells(tables, table)[0]
        return make_plans([cell], [0], RunOptions(**options), "cpu")[0].identity()["protocol"]

    assert identity("table1")["lr_milestones"] == [149, 224]
    assert identity("table1", epochs=30)["lr_milestones"] == [14, 22]  # not (15, 23)
    assert "normalisation" not in identity("table1") and "transforms" not in identity("table1")
    assert identity("table2")["normalisation"] == "densenet-cifar100.lua"
    assert identity("table3")["transforms"] == "fb.resnet.torch"
    assert identity("table3")["lr_milestones"] == [30, 60]
    assert identity("table3", epochs=9)["lr_milestones"] == [3, 6]
