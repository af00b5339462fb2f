"""Files from a data folder that someone else may have written (a cluster's shared disk): only
regular files are read, each of bounded size; an image's pixel count is checked from its header
before it is decoded; class folders are listed without following links below them.

Every refusal is one :class:`DataError` line naming the file. Nothing here imports torch.
"""

from __future__ import annotations

import io
import os
import re
import stat
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from rkrepro.errors import DataError

if TYPE_CHECKING:
    from PIL import Image

# ImageNet's largest images are a few thousand pixels a side (under 20 megapixels; the typical
# one is about 500x375): 50 megapixels is 2.5 times that, decodes into at most 150 MB of RGB,
# and stays below PIL's own warning (89 megapixels), which only warns.
MAX_IMAGE_PIXELS = 50_000_000
# The largest ImageNet JPEG is a few MB; a decompression bomb is small, a huge file is not an
# image anyone trains on.
MAX_IMAGE_BYTES = 64 * 2**20
# The largest CIFAR file is CIFAR-100's ``train`` (about 155 MB; its data array is 153.6 MB).
MAX_CIFAR_BYTES = 200 * 2**20

RESUME_HINT = "fix or remove it and rerun the same command to resume from the last checkpoint"
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def shown(path: object) -> str:
    """A path as one printable line: control characters (a newline in a file name) escaped."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(path))


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a folder"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def read_regular_file(path: str | Path, limit: int, what: str) -> bytes:
    """The bytes of ``path`` if it is a regular file (links to one are fine) of at most
    ``limit`` bytes. A FIFO or device is refused before it is opened, and the file is opened
    non-blocking and checked again, so a FIFO swapped in between cannot hang the read."""
    try:
        if not stat.S_ISREG(mode := os.stat(path).st_mode):
            raise DataError(f"{what} {shown(path)} is {_kind(mode)}, not a regular file")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise DataError(f"cannot read {what} {shown(path)}: {error.strerror or error}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise DataError(f"{what} {shown(path)} is {_kind(info.st_mode)}, not a regular file")
        if info.st_size > limit:
            raise DataError(
                f"{what} {shown(path)} is {info.st_size:,} bytes, over the limit of {limit:,}"
            )
        try:
            data = handle.read(info.st_size + 1)  # +1: a file that grew since is refused
        except OSError as error:
            raise DataError(
                f"cannot read {what} {shown(path)}: {error.strerror or error}"
            ) from None
    if len(data) > limit:
        raise DataError(f"{what} {shown(path)} grew past the limit of {limit:,} bytes while read")
    return data


def unreadable(path: str | Path, reason: str) -> DataError:
    """The one line for an image a run cannot use."""
    return DataError(f"unreadable image {shown(path)} ({shown(reason)}); {RESUME_HINT}")


def open_image(data: bytes, path: str | Path) -> Image.Image:
    """A PIL image of ``data``, header read, pixels not yet decoded: refused when it is not an
    image or has more than :data:`MAX_IMAGE_PIXELS` pixels."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError:
            raise unreadable(path, f"more than {MAX_IMAGE_PIXELS:,} pixels") from None
        except (OSError, ValueError, SyntaxError, EOFError) as error:
            raise unreadable(path, f"{type(error).__name__}: {error}") from None
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise unreadable(path, f"{width}x{height} pixels, over the limit of {MAX_IMAGE_PIXELS:,}")
    return image


def read_image(path: str | Path) -> tuple[bytes, Image.Image]:
    """(file bytes, PIL image with only its header read) of an image file, checked."""
    try:
        data = read_regular_file(path, MAX_IMAGE_BYTES, "image")
    except DataError as error:
        raise unreadable(path, str(error).replace(f" {shown(path)}", "", 1)) from None
    return data, open_image(data, path)


def decode_rgb(image: Image.Image, path: str | Path) -> Image.Image:
    """The RGB pixels of a checked image; a truncated or corrupt one is one line."""
    try:
        return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise unreadable(path, f"{type(error).__name__}: {error}") from None


def decoder_takes(image: Image.Image, data: bytes) -> bool:
    """Whether ``torchvision.io.decode_jpeg`` gives this image's RGB pixels exactly as PIL
    does: a whole JPEG in YCbCr or grayscale (both use libjpeg-turbo's default decoding); PIL
    decodes the rest (PNGs named ``.JPEG``, CMYK, truncated files) with its own messages."""
    return image.format == "JPEG" and image.mode in ("RGB", "L") and jpeg_is_whole(data)


def jpeg_is_whole(data: bytes) -> bool:
    """Whether a JPEG has an end-of-image marker after its last scan (a truncated file does not;
    entropy-coded data never holds 0xFFD9 or 0xFFDA; a thumbnail in the EXIF data, a whole JPEG
    of its own, comes before the main image's scans)."""
    scan = data.rfind(b"\xff\xda")
    return scan >= 0 and data.rfind(b"\xff\xd9") > scan


def list_images(
    root: Path, classes: list[str], extensions: tuple[str, ...]
) -> list[tuple[str, int]]:
    """(path, class index) of every image under ``root/<class>``, in torchvision
    ``ImageFolder``'s order (classes sorted, folders by path, names sorted).

    A class folder may be a link; below it, real subfolders are listed and a link to a folder
    is refused (``loop -> ..`` made torchvision list the tree again and again until memory ran
    out), as is a name with an image extension that is not a regular file (a FIFO, a device, a
    dangling link): one line naming it, before any training. Links to image files are fine.
    """
    samples: list[tuple[str, int]] = []
    for label, name in enumerate(classes):
        folders: list[tuple[str, list[str]]] = []
        pending = [os.path.join(root, name)]
        while pending:
            folder = pending.pop()
            names = []
            try:
                entries = list(os.scandir(folder))
            except OSError as error:
                reason = error.strerror or error
                raise DataError(f"cannot list {shown(folder)}: {reason}") from None
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                elif entry.is_symlink() and entry.is_dir():
                    target = os.readlink(entry.path)
                    raise DataError(
                        f"{shown(entry.path)} is a link to a folder ({shown(target)}); below a "
                        "class folder only real folders are listed: replace the link by the "
                        "folder or remove it"
                    )
                elif entry.name.lower().endswith(extensions):
                    if not entry.is_file():
                        try:
                            kind = _kind(os.stat(entry.path).st_mode)
                        except OSError:
                            kind = "a dangling link"
                        raise unreadable(entry.path, f"{kind}, not a regular file")
                    names.append(entry.name)
            folders.append((folder, names))
        found = [(os.path.join(f, n), label) for f, names in sorted(folders) for n in sorted(names)]
        if not found:
            raise DataError(f"class folder {shown(os.path.join(root, name))} holds no images")
        samples.extend(found)
    return samples
