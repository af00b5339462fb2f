"""Datasets and batch pipelines, faithful to fb.resnet.torch (the code the paper trained with).

CIFAR lives in memory as uint8 (on the GPU when training there) and is augmented a whole
batch at a time: per-image PIL transforms in DataLoader workers would starve a GPU on 32x32
images. Every random choice of an epoch (order, crop offsets, flips) comes from a generator
seeded by (seed, epoch), so a run resumed at any step sees exactly the batches it would have
seen uninterrupted. ImageNet goes through torchvision's ImageFolder and worker processes,
with fb.resnet.torch's own transforms (:mod:`rkrepro.fb_transforms`), not torchvision's.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from rkrepro.errors import DataError
from rkrepro.fb_transforms import PCA_EIGVAL, PCA_EIGVEC
from rkrepro.paths import DATA_DIR_ENV

if TYPE_CHECKING:
    import numpy as np

VERIFY_ENV = "RKREPRO_VERIFY_CHECKSUMS"  # "0": accept re-packed CIFAR files (md5s differ)
DOWNLOAD_ENV = "RKREPRO_DOWNLOAD"  # "0": never try to download (offline machines, tests)

# Per-channel statistics of the Torch code's ``t.ColorNormalize`` on 0..255 floats, here /255:
# datasets/cifar10.lua (fb.resnet.torch and liuzhuang13/DenseNet) and the DenseNet code's own
# datasets/cifar100.lua (Table 2 trained with these, not with CIFAR-10's).
CIFAR10_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
CIFAR10_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)
CIFAR100_MEAN = (129.3 / 255, 124.1 / 255, 112.4 / 255)
CIFAR100_STD = (68.2 / 255, 65.4 / 255, 70.4 / 255)
CIFAR_MEAN, CIFAR_STD = CIFAR10_MEAN, CIFAR10_STD  # the CIFAR-10 pair, as before
CIFAR_NORMALISATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": (CIFAR100_MEAN, CIFAR100_STD),
}
CIFAR_PAD = 4
# Test-set batch on a GPU (divides CIFAR's 10,000 test images).
CUDA_EVAL_BATCH = 1000

IMAGENET_TRAIN_IMAGES = 1_281_167
IMAGENET_VAL_IMAGES = 50_000
IMAGENET_CLASSES = 1000

# The --train-subset draw does not depend on the run's seed, so every model and seed of a
# shortened sweep trains on the same images.
SUBSET_SEED = 20180201


def epoch_seed(seed: int, epoch: int, purpose: str = "train") -> int:
    """A 63-bit seed from (seed, epoch): independent streams per epoch, same on every resume."""
    digest = hashlib.sha256(f"rkrepro:{purpose}:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def shard_bounds(lo: int, hi: int, shard: tuple[int, int]) -> tuple[int, int]:
    """A rank's part ``(rank, world)`` of the global batch ``[lo, hi)`` in data-parallel runs.

    Every rank gets ``(hi - lo) // world`` images, so each rank's gradient has the same weight
    in DDP's average; the last batch's remainder (fewer than ``world`` images) is left out.
    """
    rank, world = shard
    per = (hi - lo) // world
    return lo + rank * per, lo + (rank + 1) * per


def sharded_len(n: int, batch_size: int, world: int) -> int:
    """Steps per epoch: the global batches, less a last one too small to give every rank one."""
    steps = math.ceil(n / batch_size)
    if world > 1 and steps and n - (steps - 1) * batch_size < world:
        steps -= 1
    return steps


def subset_indices(n: int, size: int | None) -> Tensor | None:
    """The fixed random subset of ``size`` training images, or None for the whole set."""
    if size is None or size >= n:
        return None
    gen = torch.Generator().manual_seed(SUBSET_SEED)
    return torch.randperm(n, generator=gen)[:size].sort().values


# --------------------------------------------------------------------------------------------
# CIFAR on disk.


@dataclass
class ArraySplit:
    """Images as uint8 [N, 3, H, W] and labels as int64 [N], on one device; ``dataset`` picks
    the normalisation statistics."""

    x: Tensor
    y: Tensor
    dataset: str = "cifar10"

    def to(self, device: torch.device) -> ArraySplit:
        return ArraySplit(self.x.to(device), self.y.to(device), self.dataset)


def _cifar_class(dataset: str, verify: bool) -> type:
    from torchvision import datasets
    from torchvision.datasets.utils import check_integrity

    base = datasets.CIFAR10 if dataset == "cifar10" else datasets.CIFAR100

    class _Cifar(base):  # type: ignore[misc, valid-type]
        """torchvision's CIFAR with the md5 checks optional (re-packed files keep the format).
        Only its file list, integrity check and download are used: the files are read by
        :func:`read_cifar_split`, which cannot run code."""

        def _files(self) -> list[str]:
            names = [n for n, _ in self.train_list + self.test_list] + [self.meta["filename"]]
            return [os.path.join(self.root, self.base_folder, n) for n in names]

        def _check_integrity(self) -> bool:
            if verify:
                meta = os.path.join(self.root, self.base_folder, self.meta["filename"])
                return super()._check_integrity() and check_integrity(meta, self.meta["md5"])
            return all(os.path.isfile(f) for f in self._files())

    return _Cifar


def _env_flag(name: str, default: bool = True) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() not in ("0", "false", "no", "")


def load_cifar(dataset: str, root: Path) -> tuple[ArraySplit, ArraySplit]:
    """(train, test) of CIFAR-10/100 from ``root``, downloading it there when missing.

    Raises :class:`DataError` (one line, naming the folder) when the data is missing and
    cannot be downloaded, or a file is truncated or malformed.
    """
    if dataset not in ("cifar10", "cifar100"):
        raise DataError(f"{dataset} is not a CIFAR data set")
    verify = _env_flag(VERIFY_ENV)
    download = _env_flag(DOWNLOAD_ENV)
    cls = _cifar_class(dataset, verify)
    root = Path(root)
    folder = root / cls.base_folder
    probe = cls.__new__(cls)
    probe.root, probe.train = str(root), True
    if not probe._check_integrity():
        state = "is corrupt (checksum mismatch)" if folder.is_dir() else "is missing"
        if folder.is_dir() and verify:
            from rkrepro.data_check import check_cifar

            found = check_cifar(dataset, root)  # names the file and says what to do
            if found.state == "corrupt":
                raise DataError(found.message)
        if not download:
            raise DataError(
                f"{dataset} data {state}: expected {folder} ({cls.base_folder}, from {cls.url}); "
                f"downloads are off ({DOWNLOAD_ENV}=0)"
                + (f"; for a re-packed copy set {VERIFY_ENV}=0" if folder.is_dir() else "")
            )
        try:
            root.mkdir(parents=True, exist_ok=True)
            probe.download()
        except Exception as error:  # noqa: BLE001 - any network/archive failure is the same to the user
            reason = str(getattr(error, "reason", None) or error).strip() or type(error).__name__
            raise DataError(
                f"{dataset} data {state} at {folder} and the download failed ({reason}); "
                f"put the extracted '{cls.base_folder}' folder under {root} "
                f"(or set --data-dir / {DATA_DIR_ENV})"
            ) from None
    splits = []
    for train in (True, False):
        try:
            images, labels = read_cifar_split(cls, folder, train)
        except (
            RuntimeError,
            OSError,
            EOFError,
            pickle.UnpicklingError,
            ValueError,
            KeyError,
            TypeError,
            IndexError,
            AttributeError,
            MemoryError,
        ) as error:
            raise DataError(_describe_bad_file(cls, folder, error)) from None
        x = torch.from_numpy(images)
        y = torch.as_tensor(labels, dtype=torch.int64)
        num_classes = 10 if dataset == "cifar10" else 100
        if len(x) == 0 or len(x) != len(y) or int(y.min()) < 0 or int(y.max()) >= num_classes:
            split = "train" if train else "test"
            raise DataError(
                f"{folder}: {split} split is malformed ({len(x)} images, {len(y)} labels, "
                f"labels must be in 0..{num_classes - 1})"
            )
        splits.append(ArraySplit(x, y, dataset))
    return splits[0], splits[1]


# What the CIFAR python pickles hold besides dicts, lists, strings, bytes and ints: NumPy arrays,
# which unpickle through these globals (older and newer NumPy module names, protocols 2-5), and
# the bytes of a Python 3 protocol-2 pickle (``_codecs.encode``).
_CIFAR_GLOBALS = frozenset(
    (module, name)
    for base in ("numpy.core", "numpy._core")
    for module, name in (
        (f"{base}.multiarray", "_reconstruct"),
        (f"{base}.multiarray", "scalar"),
        (f"{base}.numeric", "_frombuffer"),
    )
) | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler for data only. ``RKREPRO_VERIFY_CHECKSUMS=0`` accepts files that are not
    the published ones, and a plain ``pickle.load`` of such a file can run any code: every
    global outside :data:`_CIFAR_GLOBALS` is refused, so a planted ``__reduce__`` is an error."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing {module[:60]}.{name[:60]}: CIFAR files hold only dicts, lists, "
                "strings, numbers and NumPy arrays"
            )
        return super().find_class(module, name)


def unpickle_cifar(path: Path) -> object:
    """One CIFAR pickle, read as Python 2 wrote it (``latin1``), without running code."""
    with open(path, "rb") as handle:
        return _CifarUnpickler(handle, encoding="latin1").load()


def read_cifar_split(cls: type, folder: Path, train: bool) -> tuple[np.ndarray, list[int]]:
    """Images uint8 [N, 3, 32, 32] and labels of one split, as torchvision's CIFAR builds them
    (``labels``, or CIFAR-100's ``fine_labels``), from files read by :func:`unpickle_cifar`."""
    import numpy as np

    meta = unpickle_cifar(folder / cls.meta["filename"])
    if not isinstance(meta, dict) or not isinstance(meta.get(cls.meta["key"]), list):
        raise ValueError(f"{cls.meta['filename']} has no {cls.meta['key']} list")
    images, labels = [], []
    for name, _ in cls.train_list if train else cls.test_list:
        entry = unpickle_cifar(folder / name)
        if not isinstance(entry, dict):
            raise TypeError(f"{name} is not a dict")
        data = entry["data"]
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
            raise TypeError(f"{name}: data is not a uint8 array")
        found = entry["labels"] if "labels" in entry else entry["fine_labels"]
        if isinstance(found, np.ndarray) and found.dtype.kind in "iu":
            found = found.tolist()
        if not isinstance(found, list) or not all(isinstance(v, int | np.integer) for v in found):
            raise TypeError(f"{name}: labels are not a list of integers")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.extend(found)
    return np.ascontiguousarray(np.concatenate(images)), labels


def _describe_bad_file(cls: type, folder: Path, error: Exception) -> str:
    """Name the first CIFAR file that does not unpickle into a batch dict."""
    names = [n for n, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    for name in names:
        try:
            entry = unpickle_cifar(folder / name)
            if not isinstance(entry, dict):
                raise ValueError("not a dict")
            if name != cls.meta["filename"]:
                entry["data"].reshape(-1, 3072)  # a KeyError/ValueError names the problem
        except Exception as bad:  # noqa: BLE001
            detail = str(bad).strip() or type(bad).__name__
            return f"CIFAR file {folder / name} is truncated or corrupt ({detail})"
    detail = str(error).strip() or type(error).__name__
    return f"CIFAR data in {folder} is malformed ({detail})"


# --------------------------------------------------------------------------------------------
# Batched CIFAR pipeline.


def normalise(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """uint8 [B,3,H,W] -> float32 normalised per channel."""
    return (x.float().div_(255.0) - mean).div_(std)


def augment(x: Tensor, offsets: Tensor, flips: Tensor, pad: int = CIFAR_PAD) -> Tensor:
    """fb.resnet.torch's HorizontalFlip + RandomCrop(32, 4) for a normalised batch.

    Zero padding happens after normalisation, as in Torch; each image gets its own offsets
    ``(dy, dx)`` in ``0..2*pad`` and its own flip. One gather does crop and flip together.
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = offsets[:, 0, None] + ar_h  # [B, H]
    cols = offsets[:, 1, None] + ar_w  # [B, W]
    cols = torch.where(flips[:, None], (w + 2 * pad - 1) - cols, cols)
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # [B,H,W,C]
    return out.permute(0, 3, 1, 2).contiguous()


class CifarBatches:
    """Mini-batches of an in-memory split; the last partial batch is kept."""

    def __init__(
        self,
        split: ArraySplit,
        batch_size: int,
        device: torch.device,
        train: bool,
        seed: int = 0,
        channels_last: bool = False,
    ) -> None:
        self.split = split.to(device)
        self.batch_size = batch_size
        self.device = device
        self.train = train
        self.seed = seed
        self.channels_last = channels_last
        # (rank, world): this process's share of each global batch (rkrepro.distributed sets it).
        self.shard = (0, 1)
        if split.dataset not in CIFAR_NORMALISATION:
            raise DataError(f"no CIFAR normalisation for data set {split.dataset!r}")
        mean, std = CIFAR_NORMALISATION[split.dataset]
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)

    @property
    def num_samples(self) -> int:
        return len(self.split.y)

    def __len__(self) -> int:
        return sharded_len(self.num_samples, self.batch_size, self.shard[1])

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches ``start..`` of ``epoch``; the epoch's random draws do not depend on ``start``."""
        n = self.num_samples
        if self.train:
            gen = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
            order = torch.randperm(n, generator=gen)
            offsets = torch.randint(0, 2 * CIFAR_PAD + 1, (n, 2), generator=gen)
            flips = torch.rand(n, generator=gen) < 0.5
            order, offsets, flips = (t.to(self.device) for t in (order, offsets, flips))
        for i in range(start, len(self)):
            lo, hi = i * self.batch_size, min((i + 1) * self.batch_size, n)
            lo, hi = shard_bounds(lo, hi, self.shard)
            if self.train:
                idx = order[lo:hi]
                x = normalise(self.split.x[idx], self.mean, self.std)
                x = augment(x, offsets[lo:hi], flips[lo:hi])
                y = self.split.y[idx]
            else:
                x = normalise(self.split.x[lo:hi], self.mean, self.std)
                y = self.split.y[lo:hi]
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y


# --------------------------------------------------------------------------------------------
# ImageNet.


class Lighting:
    """AlexNet-style PCA lighting noise on a [3,H,W] tensor in [0,1] (fb.resnet.torch)."""

    def __init__(self, std: float = 0.1) -> None:
        self.std = std
        self.eigval = torch.tensor(PCA_EIGVAL)
        self.eigvec = torch.tensor(PCA_EIGVEC)

    def __call__(self, img: Tensor) -> Tensor:
        if self.std == 0:
            return img
        alpha = torch.randn(3) * self.std
        rgb = (self.eigvec * alpha * self.eigval).sum(dim=1)
        return img + rgb.view(3, 1, 1)


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
    :func:`imagenet_transforms` (:mod:`rkrepro.fb_transforms` works on any device)."""
    from rkrepro import fb_transforms as fb

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
    (:mod:`rkrepro.fb_transforms`): RandomSizedCrop 224 (bicubic), ColorJitter 0.4 in random
    order without clamping, PCA Lighting 0.1, normalise, flip; eval: bicubic Scale 256,
    normalise, centre 224 crop."""
    from rkrepro import fb_transforms as fb

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


def cifar_batches(
    train: ArraySplit,
    test: ArraySplit,
    batch_size: int,
    device: torch.device,
    seed: int,
    train_subset: int | None,
    channels_last: bool = False,
    eval_batch_size: int | None = None,
) -> tuple[CifarBatches, CifarBatches]:
    """Train and test batch sources for in-memory CIFAR.

    Test batches (no_grad, eval-mode BatchNorm: the batch size cannot change a prediction) hold
    ``eval_batch_size`` images: by default twice the training batch on the CPU and
    :data:`CUDA_EVAL_BATCH` on a GPU, where small batches are all launch overhead.
    """
    subset = subset_indices(len(train.y), train_subset)
    if subset is not None:
        train = ArraySplit(train.x[subset], train.y[subset], train.dataset)
    if eval_batch_size is None:
        eval_batch_size = CUDA_EVAL_BATCH if device.type == "cuda" else 2 * batch_size
    return (
        CifarBatches(train, batch_size, device, True, seed, channels_last),
        CifarBatches(test, eval_batch_size, device, False, seed, channels_last),
    )
