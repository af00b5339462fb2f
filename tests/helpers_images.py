"""Images for the ImageNet tests: JPEGs cut from real photographs (scikit-learn's sample
images), tiny ImageNet folders in the real layout, and hostile files made for real."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# Width x height: ImageNet's typical sizes, a small one, and one so thin that RandomSizedCrop
# falls back to CenterCrop(Scale(224)).
SIZES = ((500, 375), (375, 500), (500, 333), (120, 90), (640, 60))


def photos() -> list[Image.Image]:
    from sklearn.datasets import load_sample_images

    return [Image.fromarray(a) for a in load_sample_images().images]


def photo_jpeg(index: int, size: tuple[int, int] | None = None, mode: str = "RGB") -> bytes:
    """A JPEG (quality 90) of a crop of a sample photograph, resized to ``size``."""
    photo = photos()[index % 2]
    width, height = size or SIZES[index % len(SIZES)]
    x0 = (index * 37) % max(photo.width - 200, 1)
    image = photo.crop((x0, 0, x0 + 200, 150)).resize((width, height), Image.BICUBIC)
    buffer = io.BytesIO()
    image.convert(mode).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def write_folder(root: Path, per_class: int = 3, classes: int = 2) -> list[Path]:
    """``root/n0i/img_j.JPEG``: ImageFolder's layout."""
    paths = []
    for c in range(classes):
        folder = root / f"n{c:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            path = folder / f"img_{j}.JPEG"
            path.write_bytes(photo_jpeg(c * per_class + j))
            paths.append(path)
    return paths


def write_imagenet(root: Path, per_class: int = 3) -> tuple[Path, Path]:
    """``root/train`` and ``root/val`` with 2 classes each (tests lower the expected counts)."""
    write_folder(root / "train", per_class)
    write_folder(root / "val", 2)
    return root / "train", root / "val"


def write_png_bomb(path: Path, width: int, height: int) -> None:
    """A valid 1-bit grayscale PNG of ``width`` x ``height`` zeros, written row by row (PIL
    would hold the whole image in memory to write it): 30000 x 30000 is about 100 KB."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    row = b"\x00" * (1 + (width + 7) // 8)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


HOSTILE = ("garbage", "truncated", "zero-byte", "bomb", "big", "fifo", "device", "huge")


def make_hostile(kind: str, folder: Path) -> Path:
    """One hostile file named like an ImageNet image, made for real."""
    path = folder / f"zz_{kind}.JPEG"
    if kind == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(3000))
    elif kind == "truncated":
        whole = photo_jpeg(0)
        path.write_bytes(whole[: len(whole) // 2])
    elif kind == "zero-byte":
        path.write_bytes(b"")
    elif kind == "bomb":  # 900 megapixels in about 110 KB
        write_png_bomb(path, 30_000, 30_000)
    elif kind == "big":  # 100 megapixels: PIL only warns, and decoding took 2.7 GB
        Image.new("1", (10_000, 10_000)).save(path, "PNG")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        os.symlink("/dev/zero", path)
    elif kind == "huge":  # a sparse 100 MB file
        with open(path, "wb") as handle:
            handle.truncate(100 * 2**20)
    else:
        raise ValueError(kind)
    return path
