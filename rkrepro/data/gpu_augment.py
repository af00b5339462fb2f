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
    """uint8 [B, h, w * 3]: each image's crop ``(first row, rows, first column, columns)`` at
    the top left (zeros elsewhere), as lines of PIL's pixel layout, which the resize gathers
    whole. ``crops`` is host data: slicing reads no device value."""
    height = max(c[1] for c in crops)
    width = max(c[3] for c in crops)
    batch = images[0].new_zeros(len(images), height, width, 3)
    for i, (x, (y0, h, x0, w)) in enumerate(zip(images, crops, strict=True)):
        batch[i, :h, :w] = x[:, y0 : y0 + h, x0 : x0 + w].permute(1, 2, 0)  # on the device
    return batch.view(len(images), height, width * 3)


def crop_lines(image: Tensor, crop: list[int]) -> Tensor:
    """uint8 [1, h, w * 3]: one image's crop as lines of PIL's pixel layout, a view (no copy)
    of a ``decode_jpeg`` image, whose memory is already [H, W, 3]."""
    y0, h, x0, w = crop
    pixels = image.permute(1, 2, 0)[y0 : y0 + h, x0 : x0 + w]
    return pixels.reshape(1, h, w * 3)  # a view unless the image was not decoded as [H, W, 3]


def augment_batch(
    images: list[Tensor], packed: Tensor, size: int = 224, padded: bool | None = None
) -> Tensor:
    """float32 [B, 3, size, size] on the images' device: row ``i`` of ``packed`` (on the host;
    :meth:`~rkrepro.data.fb_transforms.Plan.pack`) applied to ``images[i]`` (uint8 [3, h, w],
    on the device).

    The same steps as :func:`rkrepro.data.fb_transforms.apply_plan`: rows resized by gathering
    whole pixel lines, the planes transposed so that columns are rows too, the colour affine
    last. On an accelerator (``padded``, the default there) the crops are first copied into one
    zero-padded batch, so that each step is one kernel for the whole batch; on a CPU, where a
    kernel costs no launch, each image is read in place, one after another, which spares the
    padding's copy and its wasted work and keeps an image's intermediates in cache.
    """
    device = images[0].device
    crops = packed[:, -4:].long().tolist()  # host data
    params = packed.to(device, non_blocking=True)  # the batch's one host->device transfer
    if padded is None:
        padded = device.type != "cpu"
    if padded:
        return _augment(pad_batch(images, crops), params, size).contiguous()
    out = torch.empty(len(images), 3, size, size, device=device)
    for i, (image, crop) in enumerate(zip(images, crops, strict=True)):
        out[i] = _augment(crop_lines(image, crop), params[i : i + 1], size)[0]
    return out


def _augment(lines: Tensor, params: Tensor, size: int) -> Tensor:
    """:func:`augment_batch` for ``lines`` (uint8 [n, height, width * 3], each image's crop at
    the top left): a [n, 3, size, size] view (transposed memory)."""
    device = lines.device
    s4 = 4 * size
    n, height, width = lines.shape[0], lines.shape[1], lines.shape[2] // 3
    ix = params[:, :s4].long().view(n, 4, size)
    wx = params[:, s4 : 2 * s4].view(n, 4, size)
    iy = params[:, 2 * s4 : 3 * s4].long().view(n, 4, size)
    wy = params[:, 3 * s4 : 4 * s4].view(n, 4, size)
    colour = params[:, 4 * s4 : 4 * s4 + PACKED_COLOUR]
    first = torch.arange(n, device=device)[:, None, None]  # each image's first line

    rows = iy + first * height
    g = lines.reshape(n * height, width * 3).index_select(0, rows.view(-1))
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

    matrix = colour[:, :9].view(n, 3, 3, 1)
    offset, gain, weights, bias = colour[:, 9:12], colour[:, 12:15], colour[:, 15:18], colour[:, 18]
    mean = out.mean((2, 3))  # [n, 3]: what contrast blends with, through ``weights``
    offset = offset + gain * ((weights * mean).sum(1) + bias)[:, None]
    planes = out.view(n, 1, 3, -1)
    # Three products with a 3x3 matrix per image: cheaper, as elementwise passes, than a
    # matrix product with an inner dimension of 3.
    coloured = (matrix[:, :, 0] * planes[:, :, 0]).add_(offset[:, :, None])
    for c in range(1, 3):
        coloured.addcmul_(matrix[:, :, c], planes[:, :, c])
    return coloured.view(n, 3, size, size).transpose(2, 3)
