"""Write tiny datasets in the exact on-disk format of the CIFAR python pickles.

The real files were pickled by Python 2, so their dict keys are byte strings that
``pickle.load(..., encoding="latin1")`` (torchvision) turns into ``str`` and
``encoding="bytes"`` leaves as ``b"data"``. We emit the same opcodes so the loader is
exercised on what it will meet in the wild, not on a friendlier Python 3 pickle.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR100_FOLDER = "cifar-100-python"


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Pickles ``bytes`` as Python 2 ``str`` (BINSTRING), like the original CIFAR files."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def _save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + n.to_bytes(4, "little") + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def _dump(obj: dict, path: Path) -> None:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    path.write_bytes(buf.getvalue())


def _batch(images: np.ndarray, labels: np.ndarray, label_key: bytes, name: bytes) -> dict:
    """One batch dict; ``images`` is uint8 [N, 32, 32, 3] (HWC), stored as [N, 3072] CHW rows."""
    data = np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3072))
    return {
        b"batch_label": name,
        label_key: [int(v) for v in labels],
        b"data": data.astype(np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(len(images))],
    }


def write_cifar10(
    root: Path, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]
) -> Path:
    """Write ``root/cifar-10-batches-py``; the training set is split over the five batches."""
    folder = Path(root) / CIFAR10_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    x, y = train
    for i, idx in enumerate(np.array_split(np.arange(len(x)), 5), start=1):
        name = f"training batch {i} of 5".encode()
        _dump(_batch(x[idx], y[idx], b"labels", name), folder / f"data_batch_{i}")
    _dump(_batch(test[0], test[1], b"labels", b"testing batch 1 of 1"), folder / "test_batch")
    names = [f"class{i}".encode() for i in range(10)]
    _dump(
        {b"label_names": names, b"num_cases_per_batch": len(x) // 5, b"num_vis": 3072},
        folder / "batches.meta",
    )
    return folder


def write_cifar100(
    root: Path, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]
) -> Path:
    """Write ``root/cifar-100-python`` (files ``train``, ``test``, ``meta``)."""
    folder = Path(root) / CIFAR100_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for split, (x, y) in (("train", train), ("test", test)):
        batch = _batch(x, y, b"fine_labels", split.encode())
        batch[b"coarse_labels"] = [int(v) // 5 for v in y]
        _dump(batch, folder / split)
    _dump(
        {
            b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
        },
        folder / "meta",
    )
    return folder


def random_images(n: int, num_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noise images whose mean colour depends on the label, so a model can learn a little."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % num_classes
    rng.shuffle(y)
    base = (y[:, None, None, None] * 255 // max(num_classes - 1, 1)).astype(np.int64)
    noise = rng.integers(-40, 40, size=(n, 32, 32, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8), y.astype(np.int64)


def write_random_cifar10(root: Path, n_train: int = 100, n_test: int = 40, seed: int = 0) -> Path:
    return write_cifar10(
        root, random_images(n_train, 10, seed), random_images(n_test, 10, seed + 1)
    )


def write_random_cifar100(root: Path, n_train: int = 200, n_test: int = 100, seed: int = 0) -> Path:
    return write_cifar100(
        root, random_images(n_train, 100, seed), random_images(n_test, 100, seed + 1)
    )


def digits_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits, upscaled 4x (nearest) to 32x32 grey-as-RGB uint8."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    img = (digits.images / 16.0 * 255.0).round().astype(np.uint8)  # [N, 8, 8]
    img = img.repeat(4, axis=1).repeat(4, axis=2)  # [N, 32, 32]
    return np.repeat(img[..., None], 3, axis=3), digits.target.astype(np.int64)


def write_digits_cifar10(root: Path, n_test: int = 360, seed: int = 0) -> Path:
    """The digits data set as a CIFAR-10 folder: a real learning signal in 1797 small images."""
    x, y = digits_images()
    perm = np.random.default_rng(seed).permutation(len(x))
    test_idx, train_idx = perm[:n_test], perm[n_test:]
    return write_cifar10(root, (x[train_idx], y[train_idx]), (x[test_idx], y[test_idx]))
