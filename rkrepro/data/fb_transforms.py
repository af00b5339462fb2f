"""ImageNet preprocessing exactly as fb.resnet.torch's ``datasets/transforms.lua`` (which
liuzhuang13/DenseNet copies unchanged), on float CHW tensors in [0, 1] (what ``image.load(path,
3, 'float')`` gives the Lua code).

Where torchvision differs and this module follows the Torch code:

* ``RandomSizedCrop``: area uniform in 8-100 %, aspect ratio *uniform* in [3/4, 4/3] (not
  log-uniform), w and h rounded, swapped with probability 1/2, up to 10 tries, then the
  fallback ``CenterCrop(Scale(input))``; the crop is resized with ``image.scale``'s bicubic.
* Resizing (:func:`scale_bicubic`) is the ``image`` package's ``scaleBicubic``: separable
  Catmull-Rom cubic (a = -1/2) on an align-corners grid, linear extrapolation beyond the
  edges, last pixel copied, no antialiasing; ``Scale(256)`` for evaluation uses it too.
* ``ColorJitter``: brightness, contrast and saturation 0.4 in a random order each image, as
  blends on float images, *without clamping* to [0, 1].

Random draws come from torch's global generator (``SeededSamples`` seeds it per sample), or
from ``rng`` objects with ``uniform(a, b)``, ``random(lo, hi)`` and ``randperm(n)`` (the Lua
calls), which the tests script.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import Tensor

# fb.resnet.torch datasets/imagenet.lua.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # transforms.lua's grayscale()


class Rng(Protocol):
    def uniform(self, a: float = 0.0, b: float = 1.0) -> float: ...
    def random(self, lo: int, hi: int) -> int: ...
    def randperm(self, n: int) -> list[int]: ...


class TorchRng:
    """The Lua calls on torch's global generator: ``torch.uniform(a, b)``, ``torch.random(lo,
    hi)`` (both ends included), ``torch.randperm(n)`` (0-based here)."""

    def uniform(self, a: float = 0.0, b: float = 1.0) -> float:
        return a + (b - a) * float(torch.rand(()))

    def random(self, lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, ()))

    def randperm(self, n: int) -> list[int]:
        return torch.randperm(n).tolist()


def lua_round(x: float) -> int:
    """``torch.round`` of a positive number: half away from zero."""
    return math.floor(x + 0.5)


# --------------------------------------------------------------------------- resizing


def _cubic_weights(src_len: int, dst_len: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(indices [dst_len-1, 4] into the padded line, weights [dst_len-1, 4]) of
    ``Main_scaleCubic_rowcol`` for the first ``dst_len - 1`` outputs (float32, as the C code)."""
    scale = torch.tensor((src_len - 1) / (dst_len - 1) if dst_len > 1 else src_len - 1.0)
    scale = scale.to(torch.float32)
    di = torch.arange(dst_len - 1, dtype=torch.float32)
    si_f = di * scale
    si_i = si_f.to(torch.int64)  # (long) cast: truncation
    x = si_f - si_i.to(torch.float32)
    # Catmull-Rom as the C code writes it: a0 + 0.5 x (a1 + x (a2 + x a3)), expanded in p0..p3.
    x2, x3 = x * x, x * x * x
    w0 = 0.5 * (-x + 2 * x2 - x3)
    w1 = 1 + 0.5 * (-5 * x2 + 3 * x3)
    w2 = 0.5 * (x + 4 * x2 - 3 * x3)
    w3 = 0.5 * (-x2 + x3)
    # Indices into the line padded by one extrapolated sample each side.
    idx = si_i[:, None] + torch.arange(4)[None, :]
    return idx.to(device), torch.stack([w0, w1, w2, w3], 1).to(device)


@functools.lru_cache(maxsize=256)
def _cubic_matrix(src_len: int, dst_len: int) -> Tensor:
    """The [dst_len, src_len] matrix of ``Main_scaleCubic_rowcol`` (so one line is one matmul):
    4 taps per output, the extrapolated samples 2*p1 - p2 folded into the edge columns, the
    last output a copy of the last input."""
    matrix = torch.zeros(dst_len, src_len + 2, dtype=torch.float64)
    if dst_len > 1:
        idx, w = _cubic_weights(src_len, dst_len, torch.device("cpu"))
        matrix[:-1].scatter_add_(1, idx, w.to(torch.float64))
    matrix[-1, src_len] = 1.0  # padded index of the last input
    folded = matrix[:, 1:-1].clone()
    folded[:, 0] += 2 * matrix[:, 0]
    folded[:, 1] -= matrix[:, 0]
    folded[:, -1] += 2 * matrix[:, -1]
    folded[:, -2] -= matrix[:, -1]
    return folded.to(torch.float32)


def _scale_line(img: Tensor, dim: int, dst_len: int) -> Tensor:
    """Resize ``img`` along ``dim`` (-1 or -2) as ``Main_scaleCubic_rowcol`` does every line."""
    src_len = img.shape[dim]
    if dst_len == src_len:
        return img
    if src_len == 1:
        shape = list(img.shape)
        shape[dim] = dst_len
        return img.expand(shape).contiguous()
    matrix = _cubic_matrix(src_len, dst_len).to(img.device, img.dtype)
    if dim == -1:
        return img @ matrix.T
    return matrix @ img


def scale_bicubic(img: Tensor, width: int, height: int) -> Tensor:
    """``image.scale(img, width, height, 'bicubic')`` of a [C, H, W] float tensor: rows first
    (to the new width), then columns, as ``Main_scaleBicubic``."""
    width, height = max(int(width), 1), max(int(height), 1)
    return _scale_line(_scale_line(img, -1, width), -2, height)


def scale(size: int) -> Callable[[Tensor], Tensor]:
    """``M.Scale(size)``: the shorter edge to ``size`` (the other truncated, as Torch's tensor
    constructor does with ``h/w * size``); unchanged if it already is ``size``."""

    def apply(img: Tensor) -> Tensor:
        h, w = img.shape[-2:]
        if (w <= h and w == size) or (h <= w and h == size):
            return img
        if w < h:
            return scale_bicubic(img, size, math.floor(h / w * size))
        return scale_bicubic(img, math.floor(w / h * size), size)

    return apply


def center_crop(size: int) -> Callable[[Tensor], Tensor]:
    """``M.CenterCrop``: offsets ``ceil((W - size) / 2)``, ``ceil((H - size) / 2)``."""

    def apply(img: Tensor) -> Tensor:
        h, w = img.shape[-2:]
        x1, y1 = math.ceil((w - size) / 2), math.ceil((h - size) / 2)
        return img[..., y1 : y1 + size, x1 : x1 + size]

    return apply


def random_sized_crop(size: int, rng: Rng | None = None) -> Callable[[Tensor], Tensor]:
    """``M.RandomSizedCrop(size)`` (Inception-style), with its 10 tries and fallback."""
    fallback_scale, fallback_crop = scale(size), center_crop(size)

    def apply(img: Tensor) -> Tensor:
        r = rng or TorchRng()
        height, width = img.shape[-2:]
        for _ in range(10):
            area = height * width
            target_area = r.uniform(0.08, 1.0) * area
            aspect = r.uniform(3 / 4, 4 / 3)
            w = lua_round(math.sqrt(target_area * aspect))
            h = lua_round(math.sqrt(target_area / aspect))
            if r.uniform() < 0.5:
                w, h = h, w
            if h <= height and w <= width:
                y1 = r.random(0, height - h)
                x1 = r.random(0, width - w)
                return scale_bicubic(img[..., y1 : y1 + h, x1 : x1 + w], size, size)
        return fallback_crop(fallback_scale(img))

    return apply


# ------------------------------------------------------------------------------ colour


def grayscale(img: Tensor) -> Tensor:
    """transforms.lua's ``grayscale``: 0.299 R + 0.587 G + 0.114 B in all three channels."""
    r, g, b = GRAY_WEIGHTS
    gray = r * img[0] + g * img[1] + b * img[2]
    return gray.expand_as(img)


def _blend(img: Tensor, other: Tensor, alpha: float) -> Tensor:
    """``img:mul(alpha):add(1 - alpha, other)``; no clamping."""
    return img * alpha + (1 - alpha) * other


def brightness(var: float, rng: Rng | None = None) -> Callable[[Tensor], Tensor]:
    def apply(img: Tensor) -> Tensor:
        alpha = 1.0 + (rng or TorchRng()).uniform(-var, var)
        return _blend(img, torch.zeros_like(img), alpha)

    return apply


def contrast(var: float, rng: Rng | None = None) -> Callable[[Tensor], Tensor]:
    def apply(img: Tensor) -> Tensor:
        mean = grayscale(img)[0].mean()
        alpha = 1.0 + (rng or TorchRng()).uniform(-var, var)
        return _blend(img, mean.expand_as(img), alpha)

    return apply


def saturation(var: float, rng: Rng | None = None) -> Callable[[Tensor], Tensor]:
    def apply(img: Tensor) -> Tensor:
        gray = grayscale(img)
        alpha = 1.0 + (rng or TorchRng()).uniform(-var, var)
        return _blend(img, gray, alpha)

    return apply


def color_jitter(
    brightness_var: float = 0.4,
    contrast_var: float = 0.4,
    saturation_var: float = 0.4,
    rng: Rng | None = None,
) -> Callable[[Tensor], Tensor]:
    """``M.ColorJitter{brightness, contrast, saturation}``: the non-zero ones in a random
    order (``M.RandomOrder``), each drawing its own factor."""
    ts = []
    if brightness_var:
        ts.append(brightness(brightness_var, rng))
    if contrast_var:
        ts.append(contrast(contrast_var, rng))
    if saturation_var:
        ts.append(saturation(saturation_var, rng))

    def apply(img: Tensor) -> Tensor:
        if not ts:
            return img
        for i in (rng or TorchRng()).randperm(len(ts)):
            img = ts[i](img)
        return img

    return apply


def lighting(
    alphastd: float = 0.1,
    eigval: Sequence[float] = PCA_EIGVAL,
    eigvec: Sequence[Sequence[float]] = PCA_EIGVEC,
) -> Callable[[Tensor], Tensor]:
    """``M.Lighting``: rgb_i = sum_j eigvec[i][j] * alpha_j * eigval_j, alpha ~ N(0, alphastd)
    (one draw of three per image), added to every pixel."""
    val, vec = torch.tensor(eigval), torch.tensor(eigvec)

    def apply(img: Tensor) -> Tensor:
        if alphastd == 0:
            return img
        alpha = torch.randn(3) * alphastd
        rgb = (vec * alpha.view(1, 3) * val.view(1, 3)).sum(1)
        return img + rgb.to(img.device, img.dtype).view(3, 1, 1)

    return apply


def color_normalize(
    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> Callable[[Tensor], Tensor]:
    def apply(img: Tensor) -> Tensor:
        m = torch.tensor(mean, dtype=img.dtype, device=img.device).view(3, 1, 1)
        s = torch.tensor(std, dtype=img.dtype, device=img.device).view(3, 1, 1)
        return (img - m) / s

    return apply


def horizontal_flip(prob: float = 0.5, rng: Rng | None = None) -> Callable[[Tensor], Tensor]:
    def apply(img: Tensor) -> Tensor:
        return img.flip(-1) if (rng or TorchRng()).uniform() < prob else img

    return apply


# ------------------------------------------------------------------------- pipelines


def compose(transforms: Sequence[Callable[[Tensor], Tensor]]) -> Callable[[Tensor], Tensor]:
    def apply(img: Tensor) -> Tensor:
        for t in transforms:
            img = t(img)
        return img

    return apply


def to_float(image: object) -> Tensor:
    """PIL RGB image (or uint8 CHW tensor) -> float32 [3, H, W] in [0, 1], like
    ``image.load(path, 3, 'float')``."""
    if isinstance(image, Tensor):
        return image.to(torch.float32).div_(255.0)
    import numpy as np

    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).to(torch.float32).div_(255.0)


class ImageNetTrain:
    """imagenet.lua's train ``preprocess``: RandomSizedCrop(224), ColorJitter(0.4, 0.4, 0.4),
    Lighting(0.1), ColorNormalize, HorizontalFlip(0.5). Picklable for DataLoader workers."""

    def __init__(self, size: int = 224) -> None:
        self.size = size

    def __call__(self, image: object) -> Tensor:
        return compose(
            [
                random_sized_crop(self.size),
                color_jitter(0.4, 0.4, 0.4),
                lighting(0.1),
                color_normalize(),
                horizontal_flip(0.5),
            ]
        )(to_float(image))


class ImageNetEval:
    """imagenet.lua's val ``preprocess``: Scale(256) (bicubic), ColorNormalize, CenterCrop(224)."""

    def __init__(self, resize: int = 256, size: int = 224) -> None:
        self.resize, self.size = resize, size

    def __call__(self, image: object) -> Tensor:
        return compose([scale(self.resize), color_normalize(), center_crop(self.size)])(
            to_float(image)
        )
