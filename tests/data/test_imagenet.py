"""ImageNet folders and loaders: validation, ImageFolder batches, persistent workers."""

from __future__ import annotations

from pathlib import Path

import helpers_images as hi
import numpy as np
import pytest
import torch
from helpers_bounded import run_bounded

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
    from torchvision import datasets

    hi.write_folder(tmp_path, per_class=3)  # 2 classes of 3 photographs
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
    from torchvision import datasets

    hi.write_folder(tmp_path, per_class=3)  # 2 classes of 3 photographs
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


def _small_imagenet(root: Path, monkeypatch: pytest.MonkeyPatch, per_class: int = 3) -> None:
    """A 2-class ImageNet in the real layout, with the expected counts lowered to match."""
    hi.write_imagenet(root, per_class)
    monkeypatch.setattr(imagenet, "IMAGENET_CLASSES", 2)
    monkeypatch.setattr(imagenet, "IMAGENET_TRAIN_IMAGES", 2 * per_class)
    monkeypatch.setattr(imagenet, "IMAGENET_VAL_IMAGES", 4)


def test_imagenet_batches_from_a_folder_in_the_real_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _small_imagenet(tmp_path, monkeypatch)
    train, val = imagenet.imagenet_batches(tmp_path, 4, torch.device("cpu"), 0, None, 0)
    shapes = [tuple(x.shape) for x, _ in train.batches(1)]
    assert shapes == [(4, 3, 224, 224), (2, 3, 224, 224)]
    assert [len(y) for _, y in val.batches(0)] == [4]


@pytest.mark.bad_input
@pytest.mark.parametrize("kind", hi.HOSTILE)
def test_a_hostile_image_in_the_training_folder_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """Through ``imagenet_batches`` and an epoch of the CPU path: one line naming the file,
    within seconds, in bounded memory (a FIFO, a link to a device: while listing, before any
    training; the rest when its batch is read)."""
    _small_imagenet(tmp_path, monkeypatch, per_class=4)
    path = hi.make_hostile(kind, tmp_path / "train" / "n01")
    (tmp_path / "train" / "n01" / "img_3.JPEG").unlink()  # the counts stay as expected

    def epoch() -> None:
        train, _ = imagenet.imagenet_batches(tmp_path, 2, torch.device("cpu"), 0, None, 0)
        for _ in train.batches(1):
            pass

    outcome = run_bounded(epoch, 90)
    assert outcome.error == "DataError", outcome
    assert outcome.message.startswith(f"unreadable image {path} (") and "\n" not in outcome.message
    assert outcome.seconds < 30 and outcome.peak_mib < 300, outcome


def test_load_pixels_are_pils_pixels(tmp_path: Path) -> None:
    """decode_jpeg for whole YCbCr and grayscale JPEGs (libjpeg-turbo as in PIL: the same
    pixels), PIL for a PNG named .JPEG and a CMYK JPEG, as ImageNet holds a few."""
    from PIL import Image

    cases = {
        "rgb.JPEG": hi.photo_jpeg(0),
        "gray.JPEG": hi.photo_jpeg(1, mode="L"),
        "cmyk.JPEG": hi.photo_jpeg(2, mode="CMYK"),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    Image.open(tmp_path / "rgb.JPEG").save(tmp_path / "png.JPEG", "PNG")
    for name in (*cases, "png.JPEG"):
        path = str(tmp_path / name)
        pixels = imagenet.load_pixels(path)
        expected = np.asarray(imagenet.load_image(path))
        got = pixels.permute(1, 2, 0).numpy() if isinstance(pixels, torch.Tensor) else pixels
        assert np.array_equal(np.asarray(got), expected), name
        assert isinstance(pixels, torch.Tensor) == (name in ("rgb.JPEG", "gray.JPEG")), name
