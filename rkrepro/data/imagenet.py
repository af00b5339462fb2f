"""ImageNet (Table 3): the folders checked before training, and batches from DataLoader workers
with fb.resnet.torch's own transforms (:mod:`rkrepro.data.fb_transforms`), not torchvision's.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from rkrepro.data import files, gpu_augment
from rkrepro.data.sampling import epoch_seed, seeded, shard_bounds, sharded_len, subset_indices
from rkrepro.errors import DataError
from rkrepro.paths import DATA_DIR_ENV

IMAGENET_TRAIN_IMAGES = 1_281_167
IMAGENET_VAL_IMAGES = 50_000
IMAGENET_CLASSES = 1000
IMAGE_SIZE = 224  # fb.resnet.torch's crop, for training and evaluation


def validate_imagenet(root: Path) -> tuple[Path, Path]:
    """Check ``root/train`` and ``root/val`` before hours of training depend on them."""
    root = Path(root)
    found: dict[str, list[str]] = {}
    for split in ("train", "val"):
        path = root / split
        if not path.is_dir():
            raise DataError(
                f"ImageNet {split} folder {path} is missing: expected {root}/train/<wnid>/*.JPEG "
                f"and {root}/val/<wnid>/*.JPEG (set --data-dir / {DATA_DIR_ENV})"
            )
        found[split] = sorted(e.name for e in os.scandir(path) if e.is_dir())
        if len(found[split]) != IMAGENET_CLASSES:
            raise DataError(
                f"ImageNet {split} folder {path} has {len(found[split])} class folders, "
                f"expected {IMAGENET_CLASSES}"
            )
    if found["train"] != found["val"]:
        raise DataError(f"ImageNet class folders of {root}/train and {root}/val differ")
    return root / "train", root / "val"


class ImageFiles(torch.utils.data.Dataset):
    """(transformed image, class index) of ``root/<class>/**/<image>``: torchvision
    ``ImageFolder``'s classes, samples and order, listed by :func:`rkrepro.data.files.list_images`
    (no links followed below the class folders, non-files refused) and read by
    :func:`load_image`."""

    def __init__(self, root: Path, transform: object) -> None:
        from torchvision.datasets.folder import IMG_EXTENSIONS

        self.root = Path(root)
        try:
            self.classes = sorted(e.name for e in os.scandir(self.root) if e.is_dir())
        except OSError as error:
            raise DataError(f"cannot list {self.root}: {error.strerror or error}") from None
        self.samples = files.list_images(self.root, self.classes, IMG_EXTENSIONS)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.samples[index]
        return self.transform(load_pixels(path)), label  # type: ignore[operator]


def _count_images(dataset: object, path: Path, expected: int) -> None:
    n = len(dataset.samples)  # type: ignore[attr-defined]
    if n != expected:
        raise DataError(f"ImageNet folder {path} holds {n} images, expected {expected}")


class _Order(torch.utils.data.Sampler[int]):
    def __init__(self, indices: list[int]) -> None:
        self.indices = indices

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class _SeededOrder(torch.utils.data.Sampler[tuple[int, int]]):
    """``(index, seed)`` pairs; the epoch's order is set before each pass (persistent workers
    keep one DataLoader, and so one sampler, for the whole run)."""

    def __init__(self) -> None:
        self.indices: list[int] = []
        self.epoch_seed = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((i, (self.epoch_seed + 1_000_003 * i) % 2**63) for i in self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class SeededSamples(torch.utils.data.Dataset):
    """Each sample's random augmentation drawn from its own seed (epoch, index): the same
    batches whichever worker, and however long-lived the worker, loads them."""

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> object:
        index, seed = key
        with seeded(seed):
            return self.dataset[index]


class LoaderBatches:
    """Mini-batches from a map-style dataset through DataLoader workers (ImageNet)."""

    def __init__(
        self,
        dataset: torch.utils.data.Dataset,
        batch_size: int,
        device: torch.device,
        train: bool,
        seed: int,
        workers: int,
        channels_last: bool = False,
        persistent_workers: bool = True,
        gpu_decode: bool = False,
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.device = device
        self.train = train
        self.seed = seed
        self.workers = workers
        self.channels_last = channels_last
        self.shard = (0, 1)  # (rank, world), as for CifarBatches
        # Workers that live for the whole run (no per-epoch fork and import); per-sample seeds
        # keep the augmentation reproducible with them.
        self.persistent = persistent_workers and workers > 0
        self.gpu_decode = gpu_decode
        if gpu_decode and device.type != "cuda":
            raise DataError("GPU JPEG decoding needs a CUDA device")
        self._sampler = _SeededOrder()
        self._loader: torch.utils.data.DataLoader | None = None

    def _persistent_loader(self, size: int) -> torch.utils.data.DataLoader:
        if self._loader is None or self._loader.batch_size != size:
            self._loader = torch.utils.data.DataLoader(
                SeededSamples(self.dataset),
                batch_size=size,
                sampler=self._sampler,
                num_workers=self.workers,
                pin_memory=self.device.type == "cuda",
                persistent_workers=self.workers > 0,
                prefetch_factor=4 if self.workers > 0 else None,
                collate_fn=gpu_augment.encoded_collate if self.gpu_decode else None,
            )
        return self._loader

    @property
    def num_samples(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return sharded_len(self.num_samples, self.batch_size, self.shard[1])

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        n = self.num_samples
        order = torch.randperm(n, generator=gen).tolist() if self.train else list(range(n))
        size, world = self.batch_size, self.shard[1]
        if world > 1:  # this rank's part of each global batch, in order
            bounds = (
                shard_bounds(i * size, min((i + 1) * size, n), self.shard)
                for i in range(start, len(self))
            )
            order = [j for lo, hi in bounds for j in order[lo:hi]]
        else:
            order = order[start * size :]
        if self.persistent or self.gpu_decode:
            yield from self._batches_persistent(order, epoch, size // world)
            return
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_size=size // world,
            sampler=_Order(order),
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            generator=gen,
            persistent_workers=False,
        )
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        try:
            for x, y in loader:
                x = x.to(self.device, non_blocking=True, memory_format=memory_format)
                yield x, y.to(self.device, non_blocking=True)
        except DataError as error:
            # A worker re-raises with its whole traceback in the message: keep the one line.
            raise DataError(str(error).strip().splitlines()[-1].split("DataError: ")[-1]) from None

    def _batches_persistent(
        self, order: list[int], epoch: int, size: int
    ) -> Iterator[tuple[Tensor, Tensor]]:
        self._sampler.indices = order
        self._sampler.epoch_seed = epoch_seed(self.seed, epoch, "samples")
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        try:
            for batch in self._persistent_loader(size):
                if self.gpu_decode:  # decoded and augmented on the device, a batch at a time
                    x, y = gpu_augment.device_batch(batch, self.device, IMAGE_SIZE)
                else:
                    x, y = batch
                x = x.to(self.device, non_blocking=True, memory_format=memory_format)
                yield x, y.to(self.device, non_blocking=True)
        except DataError as error:
            raise DataError(str(error).strip().splitlines()[-1].split("DataError: ")[-1]) from None


def load_image(path: str):
    """PIL loader for ImageFolder that names the file it cannot read, and refuses, before
    decoding, what is not a regular file or has too many pixels (:mod:`rkrepro.data.files`).

    An unreadable image stops the run (the last checkpoint stays, so fixing or removing the file
    and rerunning resumes it) rather than being skipped: a silently smaller training set is not
    the paper's protocol.
    """
    _, image = files.read_image(path)
    return files.decode_rgb(image, path)


def load_pixels(path: str) -> object:
    """:func:`load_image`'s pixels, faster: a whole YCbCr or grayscale JPEG is decoded by
    ``torchvision.io.decode_jpeg`` (the same libjpeg-turbo decoding as PIL's, so the same
    pixels; ``bench/input_pipeline.py`` checks), into a uint8 [3, H, W] tensor; anything else
    by PIL, as :func:`load_image`."""
    data, image = files.read_image(path)
    if files.decoder_takes(image, data):
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            return decode_jpeg(encoded, mode=ImageReadMode.RGB)
        except RuntimeError as error:
            raise files.unreadable(path, str(error).strip().splitlines()[-1]) from None
    return files.decode_rgb(image, path)


def imagenet_transforms() -> tuple[object, object]:
    """(train, eval) transforms of fb.resnet.torch's ``datasets/imagenet.lua``
    (:mod:`rkrepro.data.fb_transforms`): RandomSizedCrop 224 (bicubic), ColorJitter 0.4 in random
    order without clamping, PCA Lighting 0.1, normalise, flip; eval: bicubic Scale 256,
    normalise, centre 224 crop. Each takes a PIL image or a uint8 [3, H, W] tensor."""
    from rkrepro.data import fb_transforms as fb

    return fb.ImageNetTrain(), fb.ImageNetEval()


def imagenet_batches(
    root: Path,
    batch_size: int,
    device: torch.device,
    seed: int,
    train_subset: int | None,
    workers: int,
    channels_last: bool = False,
    persistent_workers: bool = True,
    gpu_decode: bool = False,
) -> tuple[LoaderBatches, LoaderBatches]:
    """fb.resnet.torch's ImageNet pipeline: train and val batch sources.

    ``persistent_workers`` keeps the worker processes for the whole run; ``gpu_decode`` has
    the workers only read the JPEG files and decodes and augments them on the GPU.
    """
    train_dir, val_dir = validate_imagenet(root)
    train_tf, val_tf = imagenet_transforms()
    train_ds, val_ds = ImageFiles(train_dir, train_tf), ImageFiles(val_dir, val_tf)
    _count_images(train_ds, train_dir, IMAGENET_TRAIN_IMAGES)
    _count_images(val_ds, val_dir, IMAGENET_VAL_IMAGES)
    subset = subset_indices(len(train_ds), train_subset)
    train_source: torch.utils.data.Dataset = train_ds
    val_source: torch.utils.data.Dataset = val_ds
    if gpu_decode:  # workers read the files and plan; the device decodes and augments
        train_source = gpu_augment.EncodedImages(train_ds.samples, train_tf)
        val_source = gpu_augment.EncodedImages(val_ds.samples, val_tf)
    if subset is not None:
        train_source = torch.utils.data.Subset(train_source, subset.tolist())
    common = (batch_size, device)
    opts = (seed, workers, channels_last, persistent_workers, gpu_decode)
    return (
        LoaderBatches(train_source, *common, True, *opts),
        LoaderBatches(val_source, *common, False, *opts),
    )
