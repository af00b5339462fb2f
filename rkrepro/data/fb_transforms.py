"""ImageNet preprocessing exactly as fb.resnet.torch's ``datasets/transforms.lua`` (which
liuzhuang13/DenseNet copies unchanged): each step as the Lua code writes it, on float CHW tensors
in [0, 1] (what ``image.load(path, 3, 'float')`` gives the Lua code), and the two pipelines
(:class:`ImageNetTrain`, :class:`ImageNetEval`) planned per image and run fused on the uint8
pixels, equal to the steps in turn up to float rounding.

Where torchvision differs and this module follows the Torch code:

* ``RandomSizedCrop``: area uniform in 8-100 %, aspect ratio *uniform* in [3/4, 4/3] (not
  log-uniform), w and h rounded, swapped with probability 1/2, up to 10 tries, then the
  fallback ``CenterCrop(Scale(input))``; the crop is resized with ``image.scale``'s bicubic.
* Resizing (:func:`scale_bicubic`) is the ``image`` package's ``scaleBicubic``: separable
  Catmull-Rom cubic (a = -1/2) on an align-corners grid, linear extrapolation beyond the
  edges, last pixel copied, no antialiasing (4 taps per output, :mod:`rkrepro.data.bicubic`);
  ``Scale(256)`` for evaluation uses it too.
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
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from rkrepro.data.bicubic import Window, scale_line, scale_window

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
    """The Lua calls on torch's global generator (or on ``generator``): ``torch.uniform(a, b)``,
    ``torch.random(lo, hi)`` (both ends included), ``torch.randperm(n)`` (0-based here) and
    ``torch.randn(n)``."""

    def __init__(self, generator: torch.Generator | None = None) -> None:
        self.generator = generator

    def uniform(self, a: float = 0.0, b: float = 1.0) -> float:
        return a + (b - a) * float(torch.rand((), generator=self.generator))

    def random(self, lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (), generator=self.generator))

    def randperm(self, n: int) -> list[int]:
        return torch.randperm(n, generator=self.generator).tolist()

    def normal(self, n: int) -> Tensor:
        return torch.randn(n, generator=self.generator)


def lua_round(x: float) -> int:
    """``torch.round`` of a positive number: half away from zero."""
    return math.floor(x + 0.5)


# --------------------------------------------------------------------------- resizing


def scale_bicubic(img: Tensor, width: int, height: int) -> Tensor:
    """``image.scale(img, width, height, 'bicubic')`` of a [C, H, W] float tensor: rows first
    (to the new width), then columns, as ``Main_scaleBicubic``."""
    width, height = max(int(width), 1), max(int(height), 1)
    return scale_line(scale_line(img, -1, width), -2, height)


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


def draw_crop(height: int, width: int, rng: Rng) -> tuple[int, int, int, int] | None:
    """``M.RandomSizedCrop``'s draws: (y1, x1, h, w) of the crop, or None after 10 tries (the
    fallback). Area uniform in [0.08, 1], aspect uniform in [3/4, 4/3], swapped with p = 1/2."""
    for _ in range(10):
        area = height * width
        target_area = rng.uniform(0.08, 1.0) * area
        aspect = rng.uniform(3 / 4, 4 / 3)
        w = lua_round(math.sqrt(target_area * aspect))
        h = lua_round(math.sqrt(target_area / aspect))
        if rng.uniform() < 0.5:
            w, h = h, w
        if h <= height and w <= width:
            y1 = rng.random(0, height - h)
            x1 = rng.random(0, width - w)
            return y1, x1, h, w
    return None


def random_sized_crop(size: int, rng: Rng | None = None) -> Callable[[Tensor], Tensor]:
    """``M.RandomSizedCrop(size)`` (Inception-style), with its 10 tries and fallback."""
    fallback_scale, fallback_crop = scale(size), center_crop(size)

    def apply(img: Tensor) -> Tensor:
        box = draw_crop(*img.shape[-2:], rng or TorchRng())
        if box is None:
            return fallback_crop(fallback_scale(img))
        y1, x1, h, w = box
        return scale_bicubic(img[..., y1 : y1 + h, x1 : x1 + w], size, size)

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


@functools.lru_cache(maxsize=8)
def _pca(eigval: tuple[float, ...], eigvec: tuple[tuple[float, ...], ...]) -> tuple[Tensor, Tensor]:
    return torch.tensor(eigval), torch.tensor(eigvec)


def lighting_offset(
    alpha: Tensor,
    eigval: Sequence[float] = PCA_EIGVAL,
    eigvec: Sequence[Sequence[float]] = PCA_EIGVEC,
) -> Tensor:
    """``M.Lighting``'s RGB offset for the noise ``alpha`` [3]: sum_j eigvec[i][j] alpha_j
    eigval_j (float32, as the Lua code's FloatTensor)."""
    val, vec = _pca(tuple(eigval), tuple(map(tuple, eigvec)))
    return (vec * alpha.view(1, 3) * val.view(1, 3)).sum(1)


def lighting(
    alphastd: float = 0.1,
    eigval: Sequence[float] = PCA_EIGVAL,
    eigvec: Sequence[Sequence[float]] = PCA_EIGVEC,
) -> Callable[[Tensor], Tensor]:
    """``M.Lighting``: rgb_i = sum_j eigvec[i][j] * alpha_j * eigval_j, alpha ~ N(0, alphastd)
    (one draw of three per image), added to every pixel."""

    def apply(img: Tensor) -> Tensor:
        if alphastd == 0:
            return img
        alpha = torch.randn(3) * alphastd
        rgb = lighting_offset(alpha, eigval, eigvec)
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


# ------------------------------------------------------- the pipelines, planned per image
#
# Each image's pipeline is planned before any pixel is touched: which source window is resized
# to which output window along each axis (4 taps per output), and one 3x3 colour affine that
# folds /255, ColorJitter, Lighting and ColorNormalize together (contrast's gray mean enters as
# ``u . mean + s``). All of them are linear per pixel, so applying the composed affine to the
# resized image equals applying the steps in turn, up to float rounding. The flip reverses the
# output columns. Only the crop is read, and as uint8; :mod:`rkrepro.data.gpu_augment` runs the
# same plans a batch at a time.


@dataclass(frozen=True)
class Colour:
    """``out = matrix @ x + offset + gain * (weights . mean(x) + bias)`` per pixel of the
    resized image ``x`` (0..255): the colour steps of one image composed (float64)."""

    matrix: np.ndarray
    offset: np.ndarray
    gain: np.ndarray
    weights: np.ndarray
    bias: float

    @classmethod
    def normalise_only(cls) -> Colour:
        return cls(np.eye(3) / 255.0, np.zeros(3), np.zeros(3), np.zeros(3), 0.0).normalised()

    def normalised(self, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Colour:
        """Followed by ColorNormalize."""
        m, s = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
        return replace(
            self,
            matrix=self.matrix / s[:, None],
            offset=(self.offset - m) / s,
            gain=self.gain / s,
        )

    def pack(self) -> np.ndarray:
        return np.concatenate(
            [self.matrix.ravel(), self.offset, self.gain, self.weights, [self.bias]]
        )


PACKED_COLOUR = 9 + 3 + 3 + 3 + 1


@dataclass(frozen=True)
class TrainDraw:
    """One image's random choices, drawn in the Lua code's order: crop box (None: the
    fallback), ColorJitter's order and factors (brightness, contrast, saturation), Lighting's
    RGB offset, flip."""

    box: tuple[int, int, int, int] | None
    order: tuple[int, ...]
    factors: tuple[float, float, float]
    rgb: tuple[float, float, float]
    flip: bool

    @classmethod
    def draw(cls, height: int, width: int, rng: TorchRng, jitter: float = 0.4) -> TrainDraw:
        box = draw_crop(height, width, rng)
        order = tuple(rng.randperm(3))
        factors = [1.0, 1.0, 1.0]
        for i in order:
            factors[i] = 1.0 + rng.uniform(-jitter, jitter)
        rgb = lighting_offset(rng.normal(3) * 0.1)
        flip = rng.uniform() < 0.5
        return cls(box, order, tuple(factors), tuple(rgb.tolist()), flip)  # type: ignore[arg-type]

    def colour(self) -> Colour:
        """ColorJitter in the drawn order (contrast blends with the gray mean of the image as it
        is then: ``weights . mean(x) + bias``), Lighting, ColorNormalize."""
        g, ones = np.asarray(GRAY_WEIGHTS), np.ones(3)
        matrix, offset, gain = np.eye(3) / 255.0, np.zeros(3), np.zeros(3)
        weights, bias = np.zeros(3), 0.0
        for i in self.order:
            a = self.factors[i]
            if i == 1:  # contrast (at most once, so ``gain`` is still zero here)
                weights, bias = g @ matrix, float(g @ offset)
                matrix, offset, gain = a * matrix, a * offset, (1 - a) * ones
                continue
            blend = a * np.eye(3) + (0.0 if i == 0 else (1 - a) * np.outer(ones, g))
            matrix, offset, gain = blend @ matrix, blend @ offset, blend @ gain
        offset = offset + np.asarray(self.rgb)
        return Colour(matrix, offset, gain, weights, bias).normalised()


@dataclass(frozen=True)
class Plan:
    """Everything one image's pipeline does, decided before its pixels are read."""

    rows: Window
    cols: Window
    colour: Colour

    def pack(self) -> Tensor:
        """float32 [packed_size(size)]: one row of a batch's parameters for
        :func:`rkrepro.data.gpu_augment.augment_batch`: the column taps (index into the crop,
        weight; 4 x size each), the row taps, the colour terms, and the crop (first row, rows,
        first column, columns). Indices below 2**24 are exact in float32."""
        ix, wx = self.cols.taps()
        iy, wy = self.rows.taps()
        colour = torch.from_numpy(self.colour.pack().astype(np.float32))
        crop = [self.rows.start, self.rows.length, self.cols.start, self.cols.length]
        return torch.cat(
            [
                (ix - self.cols.start).float().reshape(-1),
                wx.reshape(-1),
                (iy - self.rows.start).float().reshape(-1),
                wy.reshape(-1),
                colour,
                torch.tensor(crop, dtype=torch.float32),
            ]
        )


def packed_size(size: int) -> int:
    return 16 * size + PACKED_COLOUR + 4


def apply_plan(pixels: Tensor, plan: Plan) -> Tensor:
    """uint8 [H, W, 3] pixels (PIL's layout) -> float32 [3, size, size]: the plan's crop resized
    and coloured.

    Both passes combine whole lines, which the CPU copies fast: first the rows of the uint8
    pixels (converted as the products read them), then, after one transpose to planes of
    columns, the columns; the colour affine comes last, on the small image. (``image.scale``
    resizes along rows first; the other order differs only in float rounding.)
    """
    rows, cols = plan.rows, plan.cols
    iy, wy = rows.taps()
    ix, wx = cols.taps()
    height, width = pixels.shape[:2]
    lines = pixels.reshape(height, width * 3).index_select(0, iy.reshape(-1))
    x0 = 3 * cols.start
    g = lines[:, x0 : x0 + 3 * cols.length].view(4, rows.size, cols.length, 3)  # uint8
    tall = g[0] * wy[0, :, None, None]
    for k in range(1, 4):
        tall.addcmul_(g[k], wy[k, :, None, None])
    planes = tall.permute(2, 1, 0).contiguous()  # [3, crop width, rows.size]
    g = planes.index_select(1, ix.reshape(-1) - cols.start).view(3, 4, cols.size, rows.size)
    out = g[:, 0] * wx[0, :, None]
    for k in range(1, 4):
        out.addcmul_(g[:, k], wx[k, :, None])
    c = plan.colour
    mean = out.mean((1, 2)).double().numpy()
    offset = c.offset + c.gain * (c.weights @ mean + c.bias)
    matrix = torch.from_numpy(c.matrix.astype(np.float32))
    offset_t = torch.from_numpy(offset.astype(np.float32))[:, None]
    out = torch.addmm(offset_t, matrix, out.view(3, -1)).view(3, cols.size, rows.size)
    return out.transpose(1, 2).contiguous()


def as_pixels(image: object) -> Tensor:
    """uint8 [H, W, 3] pixels of a PIL RGB image (a copy) or of a uint8 [3, H, W] tensor (a
    view: ``torchvision.io.decode_jpeg`` gives one whose memory is already [H, W, 3])."""
    if isinstance(image, Tensor):
        return image.permute(1, 2, 0)
    return torch.from_numpy(np.array(image, dtype=np.uint8))


class ImageNetTrain:
    """imagenet.lua's train ``preprocess``: RandomSizedCrop(224), ColorJitter(0.4, 0.4, 0.4),
    Lighting(0.1), ColorNormalize, HorizontalFlip(0.5). Picklable for DataLoader workers."""

    def __init__(self, size: int = 224) -> None:
        self.size = size

    def plan(self, height: int, width: int, rng: TorchRng | None = None) -> Plan:
        """The random draws for one image (torch's global generator unless ``rng``)."""
        draw = TrainDraw.draw(height, width, rng or TorchRng())
        size = self.size
        if draw.box is not None:
            y1, x1, h, w = draw.box
            rows, cols = Window(y1, h, size, 0, size), Window(x1, w, size, 0, size, draw.flip)
        else:  # CenterCrop(Scale(size)) of the whole image
            full_h, same = scale_window(height, width, size)
            full_w, _ = scale_window(width, height, size)
            if same:
                full_h, full_w = height, width
            y1, x1 = math.ceil((full_h - size) / 2), math.ceil((full_w - size) / 2)
            rows = Window(0, height, full_h, y1, size)
            cols = Window(0, width, full_w, x1, size, draw.flip)
        return Plan(rows, cols, draw.colour())

    def __call__(self, image: object) -> Tensor:
        pixels = as_pixels(image)
        return apply_plan(pixels, self.plan(*pixels.shape[:2]))


class ImageNetEval:
    """imagenet.lua's val ``preprocess``: Scale(256) (bicubic), ColorNormalize, CenterCrop(224)."""

    def __init__(self, resize: int = 256, size: int = 224) -> None:
        self.resize, self.size = resize, size

    def plan(self, height: int, width: int, rng: TorchRng | None = None) -> Plan:
        full_h, same = scale_window(height, width, self.resize)
        full_w, _ = scale_window(width, height, self.resize)
        if same:
            full_h, full_w = height, width
        y1, x1 = math.ceil((full_h - self.size) / 2), math.ceil((full_w - self.size) / 2)
        rows = Window(0, height, full_h, y1, self.size)
        cols = Window(0, width, full_w, x1, self.size)
        return Plan(rows, cols, Colour.normalise_only())

    def __call__(self, image: object) -> Tensor:
        pixels = as_pixels(image)
        return apply_plan(pixels, self.plan(*pixels.shape[:2]))
