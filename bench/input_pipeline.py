"""ImageNet input pipeline: rkrepro's fb.resnet.torch transforms against torchvision's standard
training pipeline, per core, and the batched ``gpu_decode`` augmentation against a per-image loop.

    python bench/input_pipeline.py [--device cpu|cuda] [--rounds R] [--images N] [--batch B]

The images are JPEGs of ImageNet's typical sizes (500x375, 375x500, 500x333, 333x500, 500x500,
400x300) cut and rescaled from the real photographs scikit-learn ships
(``sklearn.datasets.load_sample_images``), written to a temporary folder in ImageFolder's layout.
Every arm runs in this one process on one thread (``torch.set_num_threads(1)``), in interleaved
rounds (A, B, C, ..., A, B, C, ...) so that a change in the machine's speed hits all alike;
images/s is the median over the rounds. Arms:

- **torchvision**: ``pil_loader`` + RandomResizedCrop(224), RandomHorizontalFlip, ColorJitter(0.4,
  0.4, 0.4), ToTensor, Normalize: the standard training pipeline, decoding included.
- **fb-cpu**: what a DataLoader worker of ``rkrepro run`` does per training image
  (``SeededSamples`` over ``ImageFiles`` with ``ImageNetTrain``: the checked read, PIL decoding,
  the per-sample seed, the planned crop/resize/colour).
- **decode-pil** / **decode-tv**: decoding alone, PIL (what the loaders use) against
  ``torchvision.io.decode_jpeg``; also whether their pixels are equal.
- **per-image** / **batched**: a batch decoded with ``decode_jpeg`` on ``--device``, then
  augmented either one image at a time with fb.resnet.torch's steps (``random_sized_crop``,
  ``color_jitter``, ``lighting``, ``color_normalize``, ``horizontal_flip``: the loop
  ``gpu_decode`` ran before it was batched) or by :func:`rkrepro.data.gpu_augment.augment_batch`
  with plans drawn from the same per-sample seeds. Both include decoding and drawing.

It ends with the two ratios ``fb-cpu / torchvision per core`` and ``batched / per-image``.
Imports nothing that imports mlflow.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Width x height of ImageNet's most common image sizes (its median image is about 500x375).
SIZES = ((500, 375), (375, 500), (500, 333), (333, 500), (500, 500), (400, 300))


def write_photos(root: Path, count: int) -> list[Path]:
    """``count`` JPEGs (quality 90) in ``root/n0``, ``root/n1``: crops of scikit-learn's two
    sample photographs at each size's aspect ratio, at varying offsets and scales, resized."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(a) for a in load_sample_images().images]
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        photo = photos[i % len(photos)]
        width, height = SIZES[i % len(SIZES)]
        scale = min(photo.width / width, photo.height / height) * rng.uniform(0.6, 1.0)
        w, h = int(width * scale), int(height * scale)
        x, y = rng.integers(0, photo.width - w + 1), rng.integers(0, photo.height - h + 1)
        image = photo.crop((x, y, x + w, y + h)).resize((width, height), Image.LANCZOS)
        folder = root / f"n{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"img_{i:04d}.JPEG"
        image.save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def arms(root: Path, paths: list[Path], device: Any, batch: int) -> dict[str, Callable[[], int]]:
    """name -> a function that processes its images once and returns how many."""
    import torch
    from torchvision import transforms as T
    from torchvision.datasets.folder import pil_loader
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    from rkrepro.data import fb_transforms as fb
    from rkrepro.data import gpu_augment, imagenet
    from rkrepro.data.sampling import seeded

    standard = T.Compose(
        [
            T.RandomResizedCrop(224),
            T.RandomHorizontalFlip(),
            T.ColorJitter(0.4, 0.4, 0.4),
            T.ToTensor(),
            T.Normalize(fb.IMAGENET_MEAN, fb.IMAGENET_STD),
        ]
    )
    ours = imagenet.SeededSamples(imagenet.ImageFiles(root, fb.ImageNetTrain()))
    names = [str(p) for p in paths]
    encoded = [read_file(n) for n in names]
    while len(encoded) < batch:
        encoded = encoded + encoded
    encoded = encoded[:batch]
    seeds = [1_000_003 * i for i in range(batch)]
    train = fb.ImageNetTrain()
    steps = fb.compose(
        [
            fb.random_sized_crop(224),
            fb.color_jitter(0.4, 0.4, 0.4),
            fb.lighting(0.1),
            fb.color_normalize(),
            fb.horizontal_flip(0.5),
        ]
    )

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def torchvision_arm() -> int:
        for name in names:
            standard(pil_loader(name))
        return len(names)

    def fb_arm() -> int:
        for i in range(len(ours)):
            ours[(i, seeds[i % len(seeds)])]
        return len(ours)

    def decode_pil() -> int:
        for name in names:
            imagenet.load_image(name)
        return len(names)

    def decode_tv() -> int:
        for name in names:
            decode_jpeg(read_file(name), mode=ImageReadMode.RGB)
        return len(names)

    def per_image() -> int:
        decoded = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
        out = []
        for image, seed in zip(decoded, seeds, strict=True):
            with seeded(seed):
                out.append(steps(fb.to_float(image)))
        torch.stack(out)
        sync()
        return len(decoded)

    def batched() -> int:
        decoded = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
        plans = []
        for image, seed in zip(decoded, seeds, strict=True):
            with seeded(seed):
                plans.append(train.plan(*image.shape[1:]).pack())
        packed = torch.stack(plans)
        if device.type == "cuda":
            packed = packed.pin_memory()
        gpu_augment.augment_batch(decoded, packed)
        sync()
        return len(decoded)

    return {
        "torchvision": torchvision_arm,
        "fb-cpu": fb_arm,
        "decode-pil": decode_pil,
        "decode-tv": decode_tv,
        "per-image": per_image,
        "batched": batched,
    }


def pixels_agree(paths: list[Path]) -> bool:
    """Whether ``decode_jpeg`` gives PIL's pixels for every benchmark image."""
    import numpy as np
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    from rkrepro.data import imagenet

    for path in paths:
        pil = np.asarray(imagenet.load_image(str(path)))
        tv = decode_jpeg(read_file(str(path)), mode=ImageReadMode.RGB).permute(1, 2, 0).numpy()
        if not np.array_equal(pil, tv):
            return False
    return True


def run(args: argparse.Namespace) -> int:
    import os

    import torch

    torch.set_num_threads(1)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but CUDA is not available here")
    batch = args.batch or (256 if device.type == "cuda" else 32)
    with tempfile.TemporaryDirectory(prefix="rkrepro-input-") as tmp:
        paths = write_photos(Path(tmp), args.images)
        sizes = sorted({f"{w}x{h}" for w, h in SIZES})
        kib = sum(p.stat().st_size for p in paths) / len(paths) / 1024
        print(
            f"{len(paths)} JPEGs from scikit-learn's sample photographs ({', '.join(sizes)}; "
            f"{kib:.0f} KiB on average); one thread; device {device}"
            + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
            + f", batch {batch}; load average {os.getloadavg()[0]:.1f}"
        )
        timed = arms(Path(tmp), paths, device, batch)
        rates: dict[str, list[float]] = {name: [] for name in timed}
        for fn in timed.values():  # warm-up: caches, allocator, cuDNN/nvJPEG handles
            fn()
        started = time.perf_counter()
        for _ in range(args.rounds):
            for name, fn in timed.items():
                t0 = time.perf_counter()
                n = fn()
                rates[name].append(n / (time.perf_counter() - t0))
            if args.seconds and time.perf_counter() - started > args.seconds:
                break
        agree = pixels_agree(paths)
    rounds = len(rates["torchvision"])
    median = {name: statistics.median(r) for name, r in rates.items()}
    print(f"\n{rounds} interleaved rounds; images/s per core: median (min-max)")
    for name, r in rates.items():
        print(f"  {name:<12}{median[name]:>9.1f}  ({min(r):.1f}-{max(r):.1f})")
    print(
        f"decode_jpeg / PIL decoding: {median['decode-tv'] / median['decode-pil']:.2f} "
        f"(pixels {'equal' if agree else 'DIFFER'})"
    )
    print(f"batched / fb-cpu per image: {median['batched'] / median['fb-cpu']:.2f}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    print(f"fb-cpu / torchvision per core: {median['fb-cpu'] / median['torchvision']:.2f}")
    print(f"batched / per-image: {median['batched'] / median['per-image']:.2f}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="where per-image and batched run")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--images", type=int, default=24, help="JPEGs per round for the CPU arms")
    p.add_argument("--batch", type=int, default=None, help="default 32 on CPU, 256 on CUDA")
    p.add_argument("--seconds", type=float, default=None, help="stop starting rounds after this")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
