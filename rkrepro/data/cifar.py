"""CIFAR-10/100: the files, read without running code, and batches augmented on the device.

CIFAR lives in memory as uint8 (on the GPU when training there) and is augmented a whole
batch at a time, exactly as fb.resnet.torch (the code the paper trained with) does per image:
per-image PIL transforms in DataLoader workers would starve a GPU on 32x32 images.
"""

from __future__ import annotations

import io
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

from rkrepro.data.check import DOWNLOAD_ENV, VERIFY_ENV, env_flag
from rkrepro.data.files import MAX_CIFAR_BYTES, read_regular_file
from rkrepro.data.sampling import epoch_seed, shard_bounds, sharded_len, subset_indices
from rkrepro.errors import DataError
from rkrepro.paths import DATA_DIR_ENV

if TYPE_CHECKING:
    import numpy as np

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


def load_cifar(dataset: str, root: Path) -> tuple[ArraySplit, ArraySplit]:
    """(train, test) of CIFAR-10/100 from ``root``, downloading it there when missing.

    Raises :class:`DataError` (one line, naming the folder) when the data is missing and
    cannot be downloaded, or a file is truncated or malformed.
    """
    if dataset not in ("cifar10", "cifar100"):
        raise DataError(f"{dataset} is not a CIFAR data set")
    verify = env_flag(VERIFY_ENV)
    download = env_flag(DOWNLOAD_ENV)
    cls = _cifar_class(dataset, verify)
    root = Path(root)
    folder = root / cls.base_folder
    probe = cls.__new__(cls)
    probe.root, probe.train = str(root), True
    if not probe._check_integrity():
        state = "is corrupt (checksum mismatch)" if folder.is_dir() else "is missing"
        if folder.is_dir() and verify:
            from rkrepro.data.check import check_cifar

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


def _bounded(name: str, found: object) -> object:
    """NumPy's array rebuilders, refusing before they allocate anything larger than a CIFAR file
    can hold: a 116-byte pickle asked ``_reconstruct`` (or a 1.8 GB ``dtype``) for 1.8 GB."""
    import numpy as np

    def check(nbytes: int, what: str) -> None:
        if nbytes > MAX_CIFAR_BYTES:
            raise pickle.UnpicklingError(
                f"refusing a {what} of {nbytes:,} bytes: CIFAR arrays are at most "
                f"{MAX_CIFAR_BYTES:,}"
            )

    if name == "dtype":

        def make_dtype(*args: object) -> object:
            dtype = found(*args)  # type: ignore[operator]
            check(dtype.itemsize, "dtype")
            return dtype

        return make_dtype
    if name == "_reconstruct":

        def reconstruct(subtype: object, shape: object, dtype: object) -> object:
            sizes = shape if isinstance(shape, tuple) else (shape,)
            if not all(isinstance(n, int) and n >= 0 for n in sizes):
                raise pickle.UnpicklingError(f"refusing an array of shape {str(shape)[:60]}")
            check(math.prod(sizes) * np.dtype(dtype).itemsize, "NumPy array")  # type: ignore[arg-type]
            return found(subtype, shape, dtype)  # type: ignore[operator]

        return reconstruct
    return found


class _CifarUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """An unpickler for data only. ``RKREPRO_VERIFY_CHECKSUMS=0`` accepts files that are not
    the published ones, and a plain ``pickle.load`` of such a file can run any code: every
    global outside :data:`_CIFAR_GLOBALS` is refused, so a planted ``__reduce__`` is an error,
    and the array rebuilders are bounded (:func:`_bounded`).

    Python's own unpickler (``pickle._Unpickler``), not the C one: the C one allocates every
    length it reads (``BINBYTES8``, ``FRAME``) before reading the data, so a 21-byte file took
    1.8 GB; this one reads at most what the file holds. As fast on CIFAR's few large
    objects (0.36 against 0.32 s for CIFAR-100's 155 MB ``train``)."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing {module[:60]}.{name[:60]}: CIFAR files hold only dicts, lists, "
                "strings, numbers and NumPy arrays"
            )
        return _bounded(name, super().find_class(module, name))


def unpickle_cifar(path: Path) -> object:
    """One CIFAR pickle, read as Python 2 wrote it (``latin1``), without running code.

    The file (a regular file of at most :data:`MAX_CIFAR_BYTES`) is read whole first, so no
    length in the pickle can ask for more than the file holds.
    """
    data = read_regular_file(path, MAX_CIFAR_BYTES, "CIFAR file")
    return _CifarUnpickler(io.BytesIO(data), encoding="latin1").load()


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
