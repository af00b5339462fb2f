"""ImageNet folders and loaders: validation, ImageFolder batches, persistent workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rkrepro.data import imagenet
from rkrepro.errors import DataError


@pytest.mark.bad_input
def test_imagenet_validation_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="train folder"):
        imagenet.validate_imagenet(tmp_path)
    for split in ("train", "val"):
        for i in range(3):
            (tmp_path / split / f"n{i:08d}").mkdir(parents=True)
    with pytest.raises(DataError, match="3 class folders, expected 1000"):
        imagenet.validate_imagenet(tmp_path)


def test_imagenet_pipeline_on_a_tiny_image_folder(tmp_path: Path) -> None:
    from PIL import Image
    from torchvision import datasets

    rng = np.random.default_rng(0)
    for cls in ("n01", "n02"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            pixels = rng.integers(0, 255, size=(60, 80, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / cls / f"{i}.JPEG")
    train_tf, val_tf = imagenet.imagenet_transforms()
    for tf, train in ((train_tf, True), (val_tf, False)):
        folder = datasets.ImageFolder(str(tmp_path), tf)
        source = imagenet.LoaderBatches(folder, 4, torch.device("cpu"), train, seed=0, workers=0)
        batches = list(source.batches(1))
        assert [tuple(b[0].shape) for b in batches] == [(4, 3, 224, 224), (2, 3, 224, 224)]
        assert sorted(torch.cat([b[1] for b in batches]).tolist()) == [0, 0, 0, 1, 1, 1]
        resumed = list(source.batches(1, start=1))
        assert torch.equal(resumed[0][1], batches[1][1])


def test_persistent_workers_give_reproducible_resumable_batches(tmp_path: Path) -> None:
    from PIL import Image
    from torchvision import datasets

    rng = np.random.default_rng(0)
    for cls in ("n01", "n02"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            pixels = rng.integers(0, 255, size=(40, 50, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / cls / f"{i}.JPEG")
    train_tf, _ = imagenet.imagenet_transforms()
    folder = datasets.ImageFolder(str(tmp_path), train_tf)
    source = imagenet.LoaderBatches(folder, 4, torch.device("cpu"), True, seed=0, workers=1)
    assert source.persistent
    first = list(source.batches(1))
    again = list(source.batches(1))  # the same worker process, the same epoch
    resumed = list(source.batches(1, start=1))
    other = list(source.batches(2))
    assert [tuple(b[0].shape) for b in first] == [(4, 3, 224, 224), (2, 3, 224, 224)]
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(resumed[0][0], first[1][0])
    assert not torch.equal(other[0][0], first[0][0])
    with pytest.raises(DataError, match="CUDA"):
        imagenet.LoaderBatches(folder, 4, torch.device("cpu"), True, 0, 0, gpu_decode=True)
