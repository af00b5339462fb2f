"""fb.resnet.torch's ImageNet transforms (rkrepro.data.fb_transforms), each against a reference
computation written from the Lua/C source line by line (scalar loops, no shared code)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rkrepro.data import fb_transforms as fb
from rkrepro.data import imagenet


class Scripted:
    """An ``Rng`` that replays fixed draws and records what was asked."""

    def __init__(self, uniforms=(), randoms=(), perms=()) -> None:
        self.uniforms, self.randoms, self.perms = list(uniforms), list(randoms), list(perms)
        self.calls: list[tuple] = []

    def uniform(self, a: float = 0.0, b: float = 1.0) -> float:
        self.calls.append(("uniform", a, b))
        return a + (b - a) * self.uniforms.pop(0)  # scripted as the unit draw

    def random(self, lo: int, hi: int) -> int:
        self.calls.append(("random", lo, hi))
        return self.randoms.pop(0)

    def randperm(self, n: int) -> list[int]:
        self.calls.append(("randperm", n))
        return self.perms.pop(0)


def _ref_cubic(p0, p1, p2, p3, x):
    """Main_cubicInterpolate, in float32 like the C code's temp_t for FloatTensors."""
    f = np.float32
    a0, a1 = p1, p2 - p0
    a2 = f(2) * p0 - f(5) * p1 + f(4) * p2 - p3
    a3 = f(3) * (p1 - p2) + p3 - p0
    return a0 + f(0.5) * x * (a1 + x * (a2 + x * a3))


def _ref_rowcol(src: np.ndarray, dst_len: int) -> np.ndarray:
    """Main_scaleCubic_rowcol on one line, scalar."""
    src_len = len(src)
    dst = np.zeros(dst_len, dtype=np.float32)
    if dst_len == src_len:
        return src.copy()
    scale = np.float32((src_len - 1) / (dst_len - 1)) if dst_len > 1 else np.float32(src_len - 1)
    for di in range(dst_len - 1):
        si_f = np.float32(di) * scale
        si_i = int(si_f)
        si_f = np.float32(si_f - si_i)
        p1, p2 = src[si_i], src[si_i + 1]
        p0 = src[si_i - 1] if si_i > 0 else np.float32(2) * p1 - p2
        p3 = src[si_i + 2] if si_i + 2 < src_len else np.float32(2) * p2 - p1
        dst[di] = _ref_cubic(p0, p1, p2, p3, si_f)
    dst[dst_len - 1] = src[src_len - 1]
    return dst


def _ref_scale(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Main_scaleBicubic: every row to ``width``, then every column to ``height``."""
    c, h, _ = img.shape
    tmp = np.stack([[_ref_rowcol(img[k, j], width) for j in range(h)] for k in range(c)])
    out = np.stack(
        [np.stack([_ref_rowcol(tmp[k, :, i], height) for i in range(width)], 1) for k in range(c)]
    )
    return out


@pytest.mark.parametrize("size", [(13, 9, 7, 5), (6, 10, 17, 23), (5, 8, 5, 3), (7, 7, 1, 7)])
def test_scale_bicubic_is_image_scale(size: tuple[int, int, int, int]) -> None:
    """Down- and upscaling, both directions, one output pixel: the C code's numbers."""
    h, w, out_w, out_h = size
    img = torch.rand(3, h, w, generator=torch.Generator().manual_seed(h * w))
    ours = fb.scale_bicubic(img, out_w, out_h)
    ref = _ref_scale(img.numpy(), out_w, out_h)
    assert ours.shape == (3, out_h, out_w)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=0, atol=2e-6)


def test_bicubic_is_not_torchs_and_keeps_ramps() -> None:
    """Catmull-Rom with linear extrapolation reproduces a linear ramp on the align-corners
    grid exactly, and does not clamp; torch's own bicubic (a = -0.75) differs."""
    ramp = torch.linspace(0, 1, 11).expand(3, 4, 11).contiguous()
    out = fb.scale_bicubic(ramp, 21, 4)
    torch.testing.assert_close(out[0, 0], torch.linspace(0, 1, 21), atol=1e-6, rtol=0)
    step = torch.zeros(1, 1, 8)
    step[..., 4:] = 1.0
    ours = fb.scale_bicubic(step, 15, 1)
    assert ours.min() < 0 and ours.max() > 1  # ringing kept: no clamping
    theirs = torch.nn.functional.interpolate(
        step[None], size=(1, 15), mode="bicubic", align_corners=True
    )[0]
    assert not torch.allclose(ours, theirs, atol=1e-3)


def test_scale_and_center_crop_follow_the_lua_arithmetic() -> None:
    assert fb.scale(256)(torch.rand(3, 375, 500)).shape == (3, 256, 341)  # floor(341.33)
    img = torch.rand(3, 75, 100)
    out = fb.scale(64)(img)
    assert out.shape == (3, 64, 85)  # floor(100/75 * 64) = floor(85.33)
    np.testing.assert_allclose(out.numpy(), _ref_scale(img.numpy(), 85, 64), atol=2e-6)
    tall = torch.rand(3, 300, 256)
    assert fb.scale(256)(tall) is tall  # the shorter side is 256 already
    crop = fb.center_crop(224)(torch.arange(3 * 255 * 257.0).view(3, 255, 257))
    # x1 = ceil((257 - 224) / 2) = 17, y1 = ceil((255 - 224) / 2) = 16
    assert crop.shape == (3, 224, 224) and crop[0, 0, 0].item() == 16 * 257 + 17


def test_random_sized_crop_draws_retries_and_crops() -> None:
    """Area uniform in [0.08, 1], aspect uniform in [3/4, 4/3], rounding, the swap, and the
    crop at (x1, y1) resized bicubically to size x size."""
    img = torch.rand(3, 40, 60)
    # Try 1: the whole area at aspect 4/3 is too wide (w = round(sqrt(2400 * 4/3)) = 57 <= 60,
    # h = round(sqrt(2400 * 3/4)) = 42 > 40): rejected. Try 2: area 0.5 (=1200), aspect 1,
    # swap draw 0.7 (no swap): w = h = round(sqrt(1200)) = 35; y1 = 3, x1 = 20.
    rng = Scripted(uniforms=[1.0, 1.0, 0.9, (0.5 - 0.08) / 0.92, 3 / 7, 0.7], randoms=[3, 20])
    out = fb.random_sized_crop(16, rng)(img)
    assert rng.calls[:3] == [("uniform", 0.08, 1.0), ("uniform", 3 / 4, 4 / 3), ("uniform", 0, 1)]
    assert rng.calls[-2:] == [("random", 0, 40 - 35), ("random", 0, 60 - 35)]
    ref = _ref_scale(img[:, 3:38, 20:55].numpy(), 16, 16)
    np.testing.assert_allclose(out.numpy(), ref, atol=2e-6)
    # A swap draw < 0.5 exchanges w and h.
    rng = Scripted(uniforms=[0.0, 0.0, 0.2], randoms=[0, 0])
    w, h = fb.lua_round(math.sqrt(0.08 * 2400 * 0.75)), fb.lua_round(math.sqrt(0.08 * 2400 / 0.75))
    fb.random_sized_crop(8, rng)(img)
    assert rng.calls[-2:] == [("random", 0, 40 - w), ("random", 0, 60 - h)]


def test_random_sized_crop_falls_back_after_ten_tries() -> None:
    img = torch.rand(3, 30, 100)  # the full area at aspect 3/4 (no swap) never fits 30 rows
    rng = Scripted(uniforms=[1.0, 0.0, 0.9] * 10)
    out = fb.random_sized_crop(24, rng)(img)
    assert len(rng.calls) == 30 and not rng.uniforms
    scaled = _ref_scale(img.numpy(), math.floor(100 / 30 * 24), 24)  # Scale(24): 80 x 24
    x1 = math.ceil((80 - 24) / 2)
    np.testing.assert_allclose(out.numpy(), scaled[:, :, x1 : x1 + 24], atol=2e-6)


def _ref_gray(img: np.ndarray) -> np.ndarray:
    return 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]


def test_color_jitter_random_order_blends_without_clamping() -> None:
    img = torch.rand(3, 5, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    # Order: saturation, brightness, contrast (randperm gives 0-based indices into
    # [brightness, contrast, saturation]); unit draws 1.0, 0.0, 0.75 -> factors 1.4, 0.6, 1.2.
    rng = Scripted(uniforms=[1.0, 0.0, 0.75], perms=[[2, 0, 1]])
    out = fb.color_jitter(0.4, 0.4, 0.4, rng)(img).numpy()
    x = img.numpy()
    x = x * 1.4 + (1 - 1.4) * _ref_gray(x)[None]  # Saturation: blend with grayscale
    x = x * 0.6  # Brightness: blend with zeros
    x = x * 1.2 + (1 - 1.2) * _ref_gray(x).mean()  # Contrast: blend with the gray mean
    np.testing.assert_allclose(out, x, rtol=1e-12)
    assert [c[0] for c in rng.calls] == ["randperm", "uniform", "uniform", "uniform"]
    bright = fb.brightness(0.4, Scripted(uniforms=[1.0]))(torch.full((3, 2, 2), 0.9))
    assert bright.max() > 1.0  # 1.26: no clamping


def test_lighting_is_the_lua_formula() -> None:
    torch.manual_seed(5)
    img = torch.rand(3, 4, 4, dtype=torch.float64)
    out = fb.lighting(0.1)(img)
    torch.manual_seed(5)
    torch.rand(3, 4, 4, dtype=torch.float64)
    alpha = (torch.randn(3) * 0.1).tolist()
    rgb = [
        sum(fb.PCA_EIGVEC[i][j] * alpha[j] * fb.PCA_EIGVAL[j] for j in range(3)) for i in range(3)
    ]
    ref = img.numpy() + np.array(rgb)[:, None, None]
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-6)


def test_pipelines_on_pil_images() -> None:
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, size=(300, 400, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    train_tf, val_tf = imagenet.imagenet_transforms()
    assert isinstance(train_tf, fb.ImageNetTrain) and isinstance(val_tf, fb.ImageNetEval)
    torch.manual_seed(0)
    assert train_tf(image).shape == (3, 224, 224)
    assert val_tf(image).shape == (3, 224, 224)
    small = Image.fromarray(pixels[:60, :80])
    out = fb.ImageNetEval(resize=64, size=56)(small)
    x = pixels[:60, :80].transpose(2, 0, 1).astype(np.float32) / 255
    scaled = _ref_scale(x, math.floor(80 / 60 * 64), 64)  # 85 x 64
    mean = np.array(fb.IMAGENET_MEAN, dtype=np.float32)[:, None, None]
    std = np.array(fb.IMAGENET_STD, dtype=np.float32)[:, None, None]
    x1 = math.ceil((85 - 56) / 2)
    ref = ((scaled - mean) / std)[:, 4:60, x1 : x1 + 56]
    np.testing.assert_allclose(out.numpy(), ref, atol=2e-5)
    torch.manual_seed(0)
    again = train_tf(image)
    torch.manual_seed(0)
    assert torch.equal(again, train_tf(image))  # reproducible under one seed (SeededSamples)


def test_lighting_shifts_colour_per_image() -> None:
    torch.manual_seed(0)
    img = torch.zeros(3, 4, 4)
    out = fb.lighting(0.1)(img)
    assert out.shape == img.shape and not torch.equal(out, img)
    assert torch.allclose(out[:, 0, 0], out[:, 3, 3])  # one RGB offset for the whole image


def _steps_train(image) -> torch.Tensor:
    """imagenet.lua's train preprocess as the steps above, one after the other."""
    return fb.compose(
        [
            fb.random_sized_crop(224),
            fb.color_jitter(0.4, 0.4, 0.4),
            fb.lighting(0.1),
            fb.color_normalize(),
            fb.horizontal_flip(0.5),
        ]
    )(fb.to_float(image))


@pytest.mark.parametrize("size", [(375, 500), (500, 333), (224, 224), (60, 80), (30, 400), (3, 5)])
def test_the_fused_pipelines_are_the_steps_in_turn(size: tuple[int, int]) -> None:
    """ImageNetTrain (crop box, jitter order and factors, lighting, flip drawn in the Lua order
    from the same generator; crop, resize and the composed colour affine on uint8 pixels) and
    ImageNetEval equal the steps applied one by one, to float rounding; thin and tiny images
    take RandomSizedCrop's fallback."""
    from PIL import Image

    h, w = size
    pixels = np.random.default_rng(h * w).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    for image in (Image.fromarray(pixels), torch.from_numpy(pixels).permute(2, 0, 1)):
        for seed in range(12):
            torch.manual_seed(seed)
            expected = _steps_train(image)
            torch.manual_seed(seed)
            got = fb.ImageNetTrain()(image)
            torch.testing.assert_close(got, expected, rtol=0, atol=2e-5)
        steps_eval = fb.compose([fb.scale(256), fb.color_normalize(), fb.center_crop(224)])
        torch.testing.assert_close(
            fb.ImageNetEval()(image), steps_eval(fb.to_float(image)), rtol=0, atol=2e-5
        )


def test_the_fused_pipeline_draws_exactly_what_the_steps_draw() -> None:
    """After one image, the global generator is where the steps leave it."""
    image = torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8)
    torch.manual_seed(3)
    _steps_train(image)
    after_steps = torch.rand(4)
    torch.manual_seed(3)
    fb.ImageNetTrain()(image)
    assert torch.equal(torch.rand(4), after_steps)
