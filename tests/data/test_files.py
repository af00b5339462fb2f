"""Files from a data folder someone else wrote: ImageFolder's listing without following folder
links, and every reader (the CPU path's loaders, the batched path's worker reader) refusing a
hostile image with one line that names it, within seconds, in bounded memory."""

from __future__ import annotations

import os
from pathlib import Path

import helpers_images as hi
import pytest
import torch
from helpers_bounded import run_bounded

from rkrepro.data import files, gpu_augment, imagenet
from rkrepro.data.fb_transforms import ImageNetTrain
from rkrepro.errors import DataError


def test_listing_is_torchvisions_image_folder(tmp_path: Path) -> None:
    """Same classes, samples and order as torchvision's ImageFolder on a tree with nested
    folders, a linked image, a linked class folder, other files and mixed-case extensions."""
    from torchvision import datasets
    from torchvision.datasets.folder import IMG_EXTENSIONS

    hi.write_folder(tmp_path / "real", per_class=2, classes=3)
    root = tmp_path / "root"
    root.mkdir()
    for name in ("n00", "n01"):
        os.symlink(tmp_path / "real" / name, root / name)  # class folders may be links
    (root / "n02").mkdir()
    nested = root / "n02" / "b" / "c"
    nested.mkdir(parents=True)
    (nested / "x.jpeg").write_bytes(hi.photo_jpeg(1))
    (root / "n02" / "a.JPG").write_bytes(hi.photo_jpeg(2))
    (root / "n02" / "notes.txt").write_text("not an image")
    os.symlink(tmp_path / "real" / "n02" / "img_0.JPEG", root / "n02" / "linked.JPEG")
    ours = imagenet.ImageFiles(root, transform=None)
    theirs = datasets.ImageFolder(str(root))
    assert ours.classes == theirs.classes
    assert ours.samples == theirs.samples and len(ours.samples) == 7
    assert files.list_images(root, theirs.classes, IMG_EXTENSIONS) == theirs.samples


@pytest.mark.bad_input
def test_a_class_folder_holding_a_link_loop_is_one_line(tmp_path: Path) -> None:
    """``loop -> ..`` in a class folder: torchvision followed it until memory ran out."""
    hi.write_folder(tmp_path, per_class=2)
    loop = tmp_path / "n01" / "loop"
    os.symlink("..", loop)
    outcome = run_bounded(lambda: imagenet.ImageFiles(tmp_path, ImageNetTrain()), 60)
    assert outcome.error == "DataError", outcome
    assert "\n" not in outcome.message and str(loop) in outcome.message
    assert "link to a folder" in outcome.message
    assert outcome.seconds < 10 and outcome.peak_mib < 100, outcome


def _read_cpu(path: Path) -> None:
    imagenet.load_image(str(path)).load()


def _read_cpu_fast(path: Path) -> None:
    imagenet.load_pixels(str(path))


def _read_batched(path: Path) -> None:
    """What a ``gpu_decode`` worker and then the device do with one image (the device: the CPU
    here)."""
    reader = gpu_augment.EncodedImages([(str(path), 0)], ImageNetTrain())
    batch = gpu_augment.encoded_collate([reader[0]])
    gpu_augment.device_batch(batch, torch.device("cpu"), 224)


@pytest.mark.bad_input
@pytest.mark.parametrize("kind", hi.HOSTILE)
@pytest.mark.parametrize(
    "reader", [_read_cpu, _read_cpu_fast, _read_batched], ids=["pil", "cpu", "batched"]
)
def test_a_hostile_image_is_one_line_naming_it(tmp_path: Path, kind: str, reader) -> None:
    """Each reader, given the file directly (as after the listing, or if the file was swapped
    since): one ``unreadable image PATH (...)`` line, in seconds, in bounded memory. Before,
    a FIFO hung, the 30000x30000 PNG ended in a traceback, the 10000x10000 one took 2.7 GB,
    and the batched path gave no file name."""
    path = hi.make_hostile(kind, tmp_path)
    outcome = run_bounded(lambda: reader(path), 60)
    assert outcome.error == "DataError", outcome
    assert outcome.message.startswith(f"unreadable image {path} (") and "\n" not in outcome.message
    assert "resume" in outcome.message
    assert outcome.seconds < 10 and outcome.peak_mib < 200, outcome


@pytest.mark.bad_input
@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_fifo_or_device_named_like_an_image_stops_the_listing(tmp_path: Path, kind: str) -> None:
    """Refused while the folder is listed, before any training (both paths list alike)."""
    hi.write_folder(tmp_path, per_class=2)
    path = hi.make_hostile(kind, tmp_path / "n01")
    with pytest.raises(DataError) as caught:
        imagenet.ImageFiles(tmp_path, ImageNetTrain())
    message = str(caught.value)
    assert message.startswith(f"unreadable image {path} (") and "not a regular file" in message


def test_a_file_name_with_a_newline_stays_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad\nname\x1b[2J.JPEG"
    path.write_bytes(b"")
    with pytest.raises(DataError) as caught:
        imagenet.load_image(str(path))
    assert "\n" not in str(caught.value) and "\x1b" not in str(caught.value)
    assert "bad\\x0aname\\x1b[2J.JPEG" in str(caught.value)


def test_the_pixel_limit_is_checked_from_the_header(tmp_path: Path) -> None:
    """An image at the limit still loads; one pixel row over it does not."""
    from PIL import Image

    width = 10_000
    rows = files.MAX_IMAGE_PIXELS // width
    ok, over = tmp_path / "ok.png", tmp_path / "over.png"
    Image.new("1", (width, rows)).save(ok)
    Image.new("1", (width, rows + 1)).save(over)
    _, image = files.read_image(ok)
    assert image.size == (width, rows)
    with pytest.raises(DataError, match=r"10000x5001 pixels, over the limit of 50,000,000"):
        files.read_image(over)


@pytest.mark.bad_input
def test_a_truncated_jpeg_with_a_whole_thumbnail_is_refused_by_the_batched_reader(
    tmp_path: Path,
) -> None:
    """An EXIF-like segment holding a whole small JPEG (its own scan and end marker) does not
    make a truncated main image look whole."""
    import struct

    thumbnail = hi.photo_jpeg(1, (40, 30))
    main = hi.photo_jpeg(0)
    segment = b"\xff\xe1" + struct.pack(">H", len(thumbnail) + 8) + b"Exif\x00\x00" + thumbnail
    whole = main[:2] + segment + main[2:]
    assert files.jpeg_is_whole(whole)
    path = tmp_path / "thumb.JPEG"
    path.write_bytes(whole[: len(whole) - len(main) // 2])
    assert not files.jpeg_is_whole(path.read_bytes())
    with pytest.raises(DataError) as caught:
        _read_batched(path)
    assert str(caught.value).startswith(f"unreadable image {path} (")
