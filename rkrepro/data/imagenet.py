"""ImageNet (Table 3): the folders checked before training, and batches from DataLoader workers
with fb.resnet.torch's own transforms (:mod:`rkrepro.data.fb_transforms`), not torchvision's.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from rkrepro.data.sampling import epoch_seed, shard_bounds, sharded_len, subset_indices
from rkrepro.errors import DataError
from rkrepro.paths import DATA_DIR_ENV

IMAGENET_TRAIN_IMAGES = 1_281_167
IMAGENET_VAL_IMAGES = 50_000
IMAGENET_CLASSES = 1000


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
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


class EncodedImages(torch.utils.data.Dataset):
    """(JPEG bytes as a uint8 tensor, label) of an ImageFolder: workers only read files and
    the GPU decodes (``torchvision.io.decode_jpeg(device="cuda")``)."""

    def __init__(self, folder: object) -> None:
        self.samples = folder.samples  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        from torchvision.io import read_file

        path, label = self.samples[index]
        return read_file(path), label


def _encoded_collate(batch: list[tuple[Tensor, int]]) -> tuple[list[Tensor], Tensor]:
    return [b[0] for b in batch], torch.tensor([b[1] for b in batch], dtype=torch.int64)


def gpu_imagenet_transform(train: bool, device: torch.device):
    """Per-image transforms of decoded uint8 CUDA images: the same fb.resnet.torch steps as
    :func:`imagenet_transforms` (:mod:`rkrepro.data.fb_transforms` works on any device)."""
    from rkrepro.data import fb_transforms as fb

    return fb.ImageNetTrain() if train else fb.ImageNetEval()


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
        self._gpu_tf = gpu_imagenet_transform(train, device) if gpu_decode else None

    def _persistent_loader(self, size: int) -> torch.utils.data.DataLoader:
        if self._loader is None or self._loader.batch_size != size:
            self._loader = torch.utils.data.DataLoader(
                SeededSamples(self.dataset),
                batch_size=size,
                sampler=self._sampler,
                num_workers=self.workers,
                pin_memory=self.device.type == "cuda" and not self.gpu_decode,
                persistent_workers=True,
                prefetch_factor=4,
                collate_fn=_encoded_collate if self.gpu_decode else None,
            )
        return self._loader

    def _decode(self, images: list[Tensor], epoch: int, batch: int) -> Tensor:
        """Decode a batch of JPEGs on the GPU and augment each image there."""
        from torchvision.io import ImageReadMode, decode_jpeg

        assert self._gpu_tf is not None
        decoded = decode_jpeg(images, mode=ImageReadMode.RGB, device=self.device)
        with torch.random.fork_rng(devices=[self.device]):
            torch.manual_seed(epoch_seed(self.seed, epoch, f"gpu:{batch}"))
            return torch.stack([self._gpu_tf(img) for img in decoded])

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
            yield from self._batches_persistent(order, epoch, start, size // world)
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
        self, order: list[int], epoch: int, start: int, size: int
    ) -> Iterator[tuple[Tensor, Tensor]]:
        self._sampler.indices = order
        self._sampler.epoch_seed = epoch_seed(self.seed, epoch, "samples")
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        try:
            for i, (x, y) in enumerate(self._persistent_loader(size), start=start):
                if self.gpu_decode:
                    x = self._decode(x, epoch, i)
                x = x.to(self.device, non_blocking=True, memory_format=memory_format)
                yield x, y.to(self.device, non_blocking=True)
        except DataError as error:
            raise DataError(str(error).strip().splitlines()[-1].split("DataError: ")[-1]) from None


def load_image(path: str):
    """PIL loader for ImageFolder that names the file it cannot read.

    An unreadable image stops the run (the last checkpoint stays, so fixing or removing the file
    and rerunning resumes it) rather than being skipped: a silently smaller training set is not
    the paper's protocol.
    """
    from PIL import Image

    try:
        with open(path, "rb") as handle:
            image = Image.open(handle)
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as error:
        raise DataError(
            f"unreadable image {path} ({type(error).__name__}: {error}); fix or remove it and "
            "rerun the same command to resume from the last checkpoint"
        ) from None


def imagenet_transforms() -> tuple[object, object]:
    """(train, eval) transforms of fb.resnet.torch's ``datasets/imagenet.lua``, on float images
    (:mod:`rkrepro.data.fb_transforms`): RandomSizedCrop 224 (bicubic), ColorJitter 0.4 in random
    order without clamping, PCA Lighting 0.1, normalise, flip; eval: bicubic Scale 256,
    normalise, centre 224 crop."""
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
    from torchvision import datasets

    train_dir, val_dir = validate_imagenet(root)
    train_tf, val_tf = imagenet_transforms()
    try:
        train_ds = datasets.ImageFolder(str(train_dir), train_tf, loader=load_image)
        val_ds = datasets.ImageFolder(str(val_dir), val_tf, loader=load_image)
    except (FileNotFoundError, OSError) as error:
        raise DataError(f"ImageNet under {root} is unreadable: {error}") from None
    _count_images(train_ds, train_dir, IMAGENET_TRAIN_IMAGES)
    _count_images(val_ds, val_dir, IMAGENET_VAL_IMAGES)
    subset = subset_indices(len(train_ds), train_subset)
    train_source: torch.utils.data.Dataset = EncodedImages(train_ds) if gpu_decode else train_ds
    val_source: torch.utils.data.Dataset = EncodedImages(val_ds) if gpu_decode else val_ds
    if subset is not None:
        train_source = torch.utils.data.Subset(train_source, subset.tolist())
    common = (batch_size, device)
    opts = (seed, workers, channels_last, persistent_workers, gpu_decode)
    return (
        LoaderBatches(train_source, *common, True, *opts),
        LoaderBatches(val_source, *common, False, *opts),
    )
