"""The ``image`` package's bicubic ``image.scale`` (``Main_scaleCubic_rowcol``) as 4 taps per
output sample, and the windows of a crop-and-resize that fb.resnet.torch's pipelines cut out of
an image (:mod:`rkrepro.data.fb_transforms`).

Catmull-Rom cubic (a = -1/2) on an align-corners grid, with linear extrapolation beyond the
edges folded into the edge taps and the last output a copy of the last input: each output reads
4 consecutive input samples, about 1/60 of the work of the dense [dst, src] matrix that
represents the same filter.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor


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


@functools.lru_cache(maxsize=1024)
def cubic_taps(src_len: int, dst_len: int) -> tuple[Tensor, Tensor]:
    """``Main_scaleCubic_rowcol`` as 4 taps per output: (index [dst_len, 4] int64 into the line,
    weight [dst_len, 4] float32), output ``i = sum_k weight[i, k] * line[index[i, k]]``.

    The extrapolated samples ``2*p1 - p2`` are folded into the edge taps, so every output reads
    4 consecutive samples (fewer lines than 4 pad with weight 0); the last output copies the last
    input. Weights are summed in float64 and stored as float32, as the dense matrix was.
    """
    import numpy as np

    n, last = src_len, max(src_len - 4, 0)
    weight = np.zeros((dst_len, 4))
    base = np.full(dst_len, last)
    if dst_len > 1:
        padded, w = _cubic_weights(src_len, dst_len, torch.device("cpu"))
        si = padded[:, 0].numpy()
        base[:-1] = np.clip(si - 1, 0, last)
        rows, b = np.arange(dst_len - 1), base[:-1]
        for k in range(4):
            j, wk = si + k, w[:, k].double().numpy()  # j: index into the padded line
            left, right = j == 0, j == n + 1  # the extrapolated samples 2*p1 - p2
            inner = ~(left | right)
            for at, src, value in (
                (inner, j - 1, wk),
                (left, 0, 2 * wk),
                (left, 1, -wk),
                (right, n - 1, 2 * wk),
                (right, n - 2, -wk),
            ):
                src = np.broadcast_to(src, j.shape)
                np.add.at(weight, (rows[at], src[at] - b[at]), value[at])
    weight[-1, n - 1 - last] = 1.0
    index = np.minimum(base[:, None] + np.arange(4), n - 1)
    return torch.from_numpy(index), torch.from_numpy(weight.astype(np.float32))


def scale_line(img: Tensor, dim: int, dst_len: int) -> Tensor:
    """Resize ``img`` along ``dim`` (-1 or -2) as ``Main_scaleCubic_rowcol`` does every line."""
    src_len = img.shape[dim]
    if dst_len == src_len:
        return img
    if src_len == 1:
        shape = list(img.shape)
        shape[dim] = dst_len
        return img.expand(shape).contiguous()
    index, weight = cubic_taps(src_len, dst_len)
    index, weight = index.to(img.device), weight.to(img.device, img.dtype)
    view = (-1, 1) if dim == -2 else (-1,)
    out = img.index_select(dim, index[:, 0]) * weight[:, 0].view(view)
    for k in range(1, 4):
        out += img.index_select(dim, index[:, k]) * weight[:, k].view(view)
    return out


@dataclass(frozen=True)
class Window:
    """One axis: source samples ``[start, start + length)`` resized to ``full`` samples, of which
    ``[offset, offset + size)`` are kept, in reverse order when ``flip``."""

    start: int
    length: int
    full: int
    offset: int
    size: int
    flip: bool = False

    def taps(self) -> tuple[Tensor, Tensor]:
        """(index [4, size] into the source line, weight [4, size] float32): output ``i`` is
        ``sum_k weight[k, i] * line[index[k, i]]``."""
        if self.full == self.length or self.length == 1:  # no resize (or one sample repeated)
            first = self.start + self.offset if self.length > 1 else self.start
            step = 1 if self.length > 1 else 0
            index = torch.arange(first, first + step * self.size, step or 1)[: self.size]
            index = (index if step else torch.full((self.size,), first)).expand(4, -1)
            weight = torch.zeros(4, self.size)
            weight[0] = 1.0
        else:
            index, weight = _taps_by_k(self.length, self.full)
            index = index[:, self.offset : self.offset + self.size] + self.start
            weight = weight[:, self.offset : self.offset + self.size]
        if self.flip:
            index, weight = index.flip(1), weight.flip(1)
        return index, weight


@functools.lru_cache(maxsize=1024)
def _taps_by_k(src_len: int, dst_len: int) -> tuple[Tensor, Tensor]:
    index, weight = cubic_taps(src_len, dst_len)
    return index.T.contiguous(), weight.T.contiguous()


def scale_window(src: int, other: int, size: int) -> tuple[int, bool]:
    """``M.Scale(size)`` along one axis of length ``src`` (``other``: the other axis): the new
    length, and whether Scale leaves the image unchanged."""
    if (src <= other and src == size) or (other <= src and other == size):
        return src, True
    return (size if src <= other else math.floor(src / other * size)), False
