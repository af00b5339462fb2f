"""``gpu_decode``: DataLoader workers read the JPEG files and plan each image's augmentation;
the device decodes a whole batch and applies fb.resnet.torch's ImageNet transforms to all of it.

Each image's random choices are drawn on the host, by the DataLoader worker that read it, from
that sample's own seed: the same draws, in the same order, as the per-image CPU path
(:meth:`rkrepro.data.fb_transforms.ImageNetTrain.plan`). A plan is packed into one row of
float32 (:meth:`~rkrepro.data.fb_transforms.Plan.pack`: the 4 taps of every kept row and
column, the colour affine), the batch's rows travel to the device in one transfer, and the
crop, resize, colour and flip of all images run as a handful of batched gathers and products.
Nothing here reads a device value back, so nothing waits for the device.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from rkrepro.data import files
from rkrepro.data.fb_transforms import PACKED_COLOUR, ImageNetEval, ImageNetTrain
from rkrepro.errors import DataError

# --------------------------------------------------------------------- in the workers


class EncodedImages(torch.utils.data.Dataset):
    """(payload, label, packed plan, path) of each image of ``samples``: the payload is the
    JPEG's bytes (uint8 [n]) for the device to decode, or, for the rare file nvJPEG does not
    take (a PNG or CMYK JPEG named ``.JPEG``, as ImageNet has a few), the pixels decoded here
    (uint8 [3, h, w]). The plan is drawn with torch's global generator, which
    :class:`~rkrepro.data.imagenet.SeededSamples` seeds per sample, as for the CPU path."""

    def __init__(self, samples: list[tuple[str, int]], transform: ImageNetTrain | ImageNetEval):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int, Tensor, str]:
        path, label = self.samples[index]
        data, image = files.read_image(path)
        width, height = image.size
        if files.decoder_takes(image, data):
            payload = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        else:  # decoded here, with the CPU path's checks and messages
            rgb = np.asarray(files.decode_rgb(image, path))
            payload = torch.from_numpy(rgb.copy()).permute(2, 0, 1)
        return payload, label, self.transform.plan(height, width).pack(), path


def encoded_collate(
    batch: list[tuple[Tensor, int, Tensor, str]],
) -> tuple[list[Tensor], Tensor, Tensor, list[str]]:
    payloads, labels, plans, paths = zip(*batch, strict=True)
    return list(payloads), torch.tensor(labels, dtype=torch.int64), torch.stack(plans), list(paths)


# ------------------------------------------------------------------ in the main process


def decode(payloads: list[Tensor], paths: list[str], device: torch.device) -> list[Tensor]:
    """uint8 [3, h, w] images on ``device``: the JPEGs decoded there in one call (nvJPEG on a
    GPU), the few pixel payloads moved there. A JPEG the decoder refuses is named."""
    from torchvision.io import ImageReadMode, decode_jpeg

    jpegs = [i for i, p in enumerate(payloads) if p.dim() == 1]
    images = list(payloads)
    if jpegs:
        try:
            decoded = decode_jpeg(
                [payloads[i] for i in jpegs], mode=ImageReadMode.RGB, device=device
            )
        except RuntimeError as error:
            raise _name_bad_jpeg([(paths[i], payloads[i]) for i in jpegs], device, error) from None
        for i, image in zip(jpegs, decoded, strict=True):
            images[i] = image
    return [x if x.device == device else x.to(device) for x in images]


def _name_bad_jpeg(
    items: list[tuple[str, Tensor]], device: torch.device, error: RuntimeError
) -> DataError:
    """The batch's decode failed: decode each image alone to say which one."""
    from torchvision.io import ImageReadMode, decode_jpeg

    for path, data in items:
        try:
            decode_jpeg([data], mode=ImageReadMode.RGB, device=device)
        except RuntimeError as bad:
            return files.unreadable(path, _last_line(bad))
    return DataError(f"decoding a batch of JPEGs on {device} failed: {_last_line(error)}")


def _last_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[-1] if lines else type(error).__name__


def device_batch(
    batch: tuple[list[Tensor], Tensor, Tensor, list[str]], device: torch.device, size: int
) -> tuple[Tensor, Tensor]:
    """One collated batch of :class:`EncodedImages` -> (images float32 [B, 3, size, size],
    labels), both on ``device``: what the main process does per batch."""
    payloads, labels, plans, paths = batch
    images = augment_batch(decode(payloads, paths, device), plans, size)
    return images, labels.to(device, non_blocking=True)


def pad_batch(images: list[Tensor], crops: list[list[int]]) -> Tensor:
    """uint8 [B, h, w, 3]: each image's crop ``(first row, rows, first column, columns)`` at
    the top left (zeros elsewhere), in PIL's pixel layout, whose rows the resize gathers
    whole. ``crops`` is host data: slicing reads no device value."""
    height = max(c[1] for c in crops)
    width = max(c[3] for c in crops)
    batch = images[0].new_zeros(len(images), height, width, 3)
    for i, (x, (y0, h, x0, w)) in enumerate(zip(images, crops, strict=True)):
        batch[i, :h, :w] = x[:, y0 : y0 + h, x0 : x0 + w].permute(1, 2, 0)  # on the device
    return batch


# Images per group on a CPU, where a group's intermediates (about 5 MB an image) should stay in
# cache; a GPU takes the whole batch at once.
CPU_GROUP = 2


def augment_batch(images: list[Tensor], packed: Tensor, size: int = 224) -> Tensor:
    """float32 [B, 3, size, size] on the images' device: row ``i`` of ``packed`` (on the host;
    :meth:`~rkrepro.data.fb_transforms.Plan.pack`) applied to ``images[i]`` (uint8 [3, h, w],
    on the device).

    The same steps as :func:`rkrepro.data.fb_transforms.apply_plan`, for all images at once:
    the crops gathered into one padded batch, rows resized by gathering whole pixel rows, the
    planes transposed so that columns are rows too, the colour affine last, as one batched
    matrix product.
    """
    device = images[0].device
    crops = packed[:, -4:].long().tolist()  # host data
    params = packed.to(device, non_blocking=True)  # the batch's one host->device transfer
    group = CPU_GROUP if device.type == "cpu" else len(images)
    out = torch.empty(len(images), 3, size, size, device=device)
    for i in range(0, len(images), group):
        j = i + group
        out[i:j] = _augment(images[i:j], crops[i:j], params[i:j], size)
    return out


def _augment(images: list[Tensor], crops: list[list[int]], params: Tensor, size: int) -> Tensor:
    """:func:`augment_batch` for one group: a [n, 3, size, size] view (transposed memory)."""
    device = images[0].device
    s4 = 4 * size
    pixels = pad_batch(images, crops)
    n, height, width, _ = pixels.shape
    ix = params[:, :s4].long().view(n, 4, size)
    wx = params[:, s4 : 2 * s4].view(n, 4, size)
    iy = params[:, 2 * s4 : 3 * s4].long().view(n, 4, size)
    wy = params[:, 3 * s4 : 4 * s4].view(n, 4, size)
    colour = params[:, 4 * s4 : 4 * s4 + PACKED_COLOUR]
    first = torch.arange(n, device=device)[:, None, None]  # each image's first line

    rows = iy + first * height
    g = pixels.view(n * height, width * 3).index_select(0, rows.view(-1))
    g = g.view(n, 4, size, width, 3)  # uint8: each product below converts as it reads
    tall = g[:, 0] * wy[:, 0, :, None, None]
    for k in range(1, 4):
        tall.addcmul_(g[:, k], wy[:, k, :, None, None])
    planes = tall.permute(0, 3, 2, 1).contiguous()  # [n, 3, width, size]: columns as rows
    channel = first[:, None] * 3 + torch.arange(3, device=device)[:, None, None]
    cols = ix[:, None] + channel * width
    g = planes.view(n * 3 * width, size).index_select(0, cols.view(-1)).view(n, 3, 4, size, size)
    out = g[:, :, 0] * wx[:, None, 0, :, None]
    for k in range(1, 4):
        out.addcmul_(g[:, :, k], wx[:, None, k, :, None])

    matrix = colour[:, :9].view(n, 3, 3)
    offset, gain, weights, bias = colour[:, 9:12], colour[:, 12:15], colour[:, 15:18], colour[:, 18]
    mean = out.mean((2, 3))  # [n, 3]: what contrast blends with, through ``weights``
    offset = offset + gain * ((weights * mean).sum(1) + bias)[:, None]
    out = torch.baddbmm(offset[:, :, None], matrix, out.view(n, 3, -1))
    return out.view(n, 3, size, size).transpose(2, 3)
