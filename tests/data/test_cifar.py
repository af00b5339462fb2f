"""CIFAR files (read without running code) and the batched CIFAR pipeline (fb.resnet.torch's
augmentation, exactly)."""

from __future__ import annotations

from pathlib import Path

import helpers_cifar as h
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rkrepro.data import cifar
from rkrepro.data.sampling import epoch_seed
from rkrepro.errors import DataError


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cifar.DOWNLOAD_ENV, "0")
    monkeypatch.setenv(cifar.VERIFY_ENV, "0")


def test_cifar10_round_trip_keeps_pixels_and_labels(tmp_path: Path) -> None:
    x, y = h.random_images(50, 10, seed=3)
    xt, yt = h.random_images(20, 10, seed=4)
    h.write_cifar10(tmp_path, (x, y), (xt, yt))
    train, test = cifar.load_cifar("cifar10", tmp_path)
    assert train.x.dtype == torch.uint8 and train.x.shape == (50, 3, 32, 32)
    # The five batches are concatenated in order, images come back CHW.
    assert torch.equal(train.x, torch.from_numpy(x).permute(0, 3, 1, 2))
    assert train.y.tolist() == y.tolist()
    assert torch.equal(test.x, torch.from_numpy(xt).permute(0, 3, 1, 2))


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    h.write_random_cifar100(tmp_path, n_train=120, n_test=30)
    train, test = cifar.load_cifar("cifar100", tmp_path)
    assert len(train.y) == 120 and len(test.y) == 30
    assert int(train.y.max()) > 19  # fine labels, not the 20 coarse ones


def test_helper_pickles_look_like_python2_files(tmp_path: Path) -> None:
    import pickle

    folder = h.write_random_cifar10(tmp_path, 10, 10)
    with open(folder / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    assert raw[b"data"].dtype == np.uint8 and raw[b"data"].shape[1] == 3072
    assert b"labels" in raw


@pytest.mark.bad_input
def test_missing_data_names_the_expected_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        cifar.load_cifar("cifar100", tmp_path)
    message = str(info.value)
    assert "cifar-100-python" in message and str(tmp_path) in message
    assert "\n" not in message


@pytest.mark.bad_input
def test_failed_download_is_a_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision import datasets

    monkeypatch.setenv(cifar.DOWNLOAD_ENV, "1")
    # A port nothing listens on: the real download code fails at once, as offline.
    monkeypatch.setattr(datasets.CIFAR10, "url", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    with pytest.raises(DataError) as info:
        cifar.load_cifar("cifar10", tmp_path / "nowhere")
    assert "cifar-10-batches-py" in str(info.value) and "download failed" in str(info.value)


@pytest.mark.bad_input
def test_checksums_are_verified_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cifar.VERIFY_ENV)
    h.write_random_cifar10(tmp_path, 20, 10)
    with pytest.raises(DataError, match="checksum"):
        cifar.load_cifar("cifar10", tmp_path)


@pytest.mark.bad_input
def test_truncated_batch_is_a_data_error(tmp_path: Path) -> None:
    folder = h.write_random_cifar10(tmp_path, 50, 10)
    blob = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="data_batch_3"):
        cifar.load_cifar("cifar10", tmp_path)


class _Planted:
    """A pickled object whose unpickling writes a file: what a planted CIFAR file would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "name, whole",
    [
        ("data_batch_2", True),  # the batch itself is the object
        ("data_batch_2", False),  # a valid batch with one planted entry
        ("test_batch", False),  # read after the training split
        ("batches.meta", False),
    ],
)
def test_a_planted_cifar_pickle_never_runs(tmp_path: Path, name: str, whole: bool) -> None:
    """With checksums off (re-packed copies), every CIFAR file is read by a data-only
    unpickler: the planted global is refused, named, and nothing runs."""
    import pickle

    folder = h.write_random_cifar10(tmp_path, 50, 10)
    marker = tmp_path / "code-ran"
    entry = pickle.loads((folder / name).read_bytes(), encoding="bytes")
    planted = _Planted(marker) if whole else {**entry, b"extra": _Planted(marker)}
    (folder / name).write_bytes(pickle.dumps(planted, protocol=2))
    with pytest.raises(DataError, match=rf"{name}.*refusing \w+\.exec"):
        cifar.load_cifar("cifar10", tmp_path)
    assert not marker.exists(), "unpickling a CIFAR file ran code"


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_files_repickled_by_python3_still_load(tmp_path: Path, protocol: int) -> None:
    """Re-packed files pickled by Python 3 and NumPy 2 are data too."""
    import pickle

    folder = h.write_random_cifar10(tmp_path, 50, 10)
    for path in folder.iterdir():
        entry = pickle.loads(path.read_bytes(), encoding="latin1")  # str keys, as Python 3 has
        path.write_bytes(pickle.dumps(entry, protocol=protocol))
    train, test = cifar.load_cifar("cifar10", tmp_path)
    assert train.x.shape == (50, 3, 32, 32) and train.x.dtype == torch.uint8 and len(test.y) == 10


def _reference_augment(x: torch.Tensor, dy: int, dx: int, flip: bool) -> torch.Tensor:
    """Torch7 order for one image: flip, zero-pad 4, crop 32x32 at (dy, dx)."""
    if flip:
        x = x.flip(-1)
    padded = F.pad(x, (4, 4, 4, 4))
    return padded[:, dy : dy + 32, dx : dx + 32]


def test_batched_augmentation_matches_per_image_reference() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 32, 32, generator=gen)
    offsets = torch.randint(0, 9, (16, 2), generator=gen)
    flips = torch.rand(16, generator=gen) < 0.5
    out = cifar.augment(x, offsets, flips)
    for i in range(16):
        ref = _reference_augment(x[i], int(offsets[i, 0]), int(offsets[i, 1]), bool(flips[i]))
        assert torch.equal(out[i], ref)


def test_padding_is_zero_after_normalisation() -> None:
    x = torch.full((1, 3, 32, 32), 255, dtype=torch.uint8)
    mean = torch.tensor(cifar.CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(cifar.CIFAR_STD).view(1, 3, 1, 1)
    x = cifar.normalise(x, mean, std)
    out = cifar.augment(x, torch.tensor([[0, 0]]), torch.tensor([False]))
    assert torch.all(out[0, :, :4, :] == 0) and torch.all(out[0, :, 4:, 4:] > 0)


def test_batches_keep_last_partial_batch_and_are_reproducible() -> None:
    x, y = h.random_images(100, 10)
    split = cifar.ArraySplit(
        torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y)
    )
    source = cifar.CifarBatches(split, 64, torch.device("cpu"), train=True, seed=7)
    sizes = [len(b[1]) for b in source.batches(1)]
    assert sizes == [64, 36] and len(source) == 2
    first = list(source.batches(1))
    again = list(source.batches(1))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again, strict=True))
    other = list(source.batches(2))
    assert not torch.equal(first[0][0], other[0][0])
    resumed = list(source.batches(1, start=1))
    assert torch.equal(resumed[0][0], first[1][0]) and torch.equal(resumed[0][1], first[1][1])
    # Every image appears once per epoch.
    assert sorted(torch.cat([b[1] for b in first]).tolist()) == sorted(y.tolist())


def test_test_batches_are_plain_normalised_images() -> None:
    x, y = h.random_images(10, 10)
    split = cifar.ArraySplit(
        torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y)
    )
    source = cifar.CifarBatches(split, 4, torch.device("cpu"), train=False)
    xb, yb = next(source.batches(0))
    mean = torch.tensor(cifar.CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(cifar.CIFAR_STD).view(1, 3, 1, 1)
    assert torch.allclose(xb, (split.x[:4].float() / 255 - mean) / std)
    assert yb.tolist() == y[:4].tolist()


def test_cifar100_is_normalised_with_its_own_statistics(tmp_path: Path) -> None:
    """liuzhuang13/DenseNet datasets/cifar100.lua: mean {129.3, 124.1, 112.4}, std {68.2, 65.4,
    70.4} on 0..255 values; CIFAR-10 keeps fb.resnet.torch's {125.3, 123.0, 113.9} / {63.0,
    62.1, 66.7}. Loaded from real files, through the batch pipeline, subset included."""
    h.write_random_cifar100(tmp_path, n_train=40, n_test=10)
    train, test = cifar.load_cifar("cifar100", tmp_path)
    assert train.dataset == test.dataset == "cifar100"
    raw = test.x[:4].double()
    mean = torch.tensor([129.3, 124.1, 112.4], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor([68.2, 65.4, 70.4], dtype=torch.float64).view(1, 3, 1, 1)
    tr, te = cifar.cifar_batches(train, test, 4, torch.device("cpu"), 0, 20, eval_batch_size=4)
    xb, _ = next(te.batches(0))
    torch.testing.assert_close(xb.double(), (raw - mean) / std, rtol=1e-5, atol=1e-5)
    assert tr.split.dataset == "cifar100"  # the training subset keeps the statistics
    torch.testing.assert_close(tr.mean.flatten().double(), mean.flatten() / 255)
    ten = cifar.CifarBatches(cifar.ArraySplit(test.x, test.y), 4, torch.device("cpu"), False)
    c10 = (raw - torch.tensor([125.3, 123.0, 113.9], dtype=torch.float64).view(1, 3, 1, 1)) / (
        torch.tensor([63.0, 62.1, 66.7], dtype=torch.float64).view(1, 3, 1, 1)
    )
    torch.testing.assert_close(next(ten.batches(0))[0].double(), c10, rtol=1e-5, atol=1e-5)
    with pytest.raises(DataError, match="no CIFAR normalisation"):
        cifar.CifarBatches(cifar.ArraySplit(test.x, test.y, "svhn"), 4, torch.device("cpu"), False)


def test_eval_batch_size_defaults_and_override() -> None:
    split = cifar.ArraySplit(torch.zeros(10, 3, 32, 32, dtype=torch.uint8), torch.zeros(10).long())
    cpu = torch.device("cpu")
    _, test = cifar.cifar_batches(split, split, 4, cpu, 0, None)
    assert test.batch_size == 8
    _, test = cifar.cifar_batches(split, split, 4, cpu, 0, None, eval_batch_size=5)
    assert [len(y) for _, y in test.batches(0)] == [5, 5]


def test_training_batches_are_the_per_image_transform_under_the_epoch_rng() -> None:
    """The batched pipeline, device-agnostic code run on CPU tensors, against the reference
    per-image pad-crop-flip driven by the same (seed, epoch) generator draws."""
    x, y = h.random_images(40, 10)
    split = cifar.ArraySplit(
        torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y)
    )
    source = cifar.CifarBatches(split, 16, torch.device("cpu"), train=True, seed=3)
    gen = torch.Generator().manual_seed(epoch_seed(3, 2))
    order = torch.randperm(40, generator=gen)
    offsets = torch.randint(0, 2 * cifar.CIFAR_PAD + 1, (40, 2), generator=gen)
    flips = torch.rand(40, generator=gen) < 0.5
    mean = torch.tensor(cifar.CIFAR_MEAN).view(3, 1, 1)
    std = torch.tensor(cifar.CIFAR_STD).view(3, 1, 1)
    seen = 0
    for xb, yb in source.batches(2):
        for j in range(len(yb)):
            i = seen + j
            img = (split.x[order[i]].float() / 255 - mean) / std
            ref = _reference_augment(img, int(offsets[i, 0]), int(offsets[i, 1]), bool(flips[i]))
            assert torch.allclose(xb[j], ref) and int(yb[j]) == int(split.y[order[i]])
        seen += len(yb)
    assert seen == 40


def _bomb(kind: str) -> bytes:
    """A few bytes of pickle that ask for 1.8 GB: a counted bytes object or a protocol-4 frame
    longer than the file (the C unpickler allocated the length first), a NumPy array of 1.8 G
    elements, or a 1.8 GB dtype (both through the allowed array rebuilders)."""
    import pickle
    import struct

    n = 1_800_000_000
    if kind == "bytes8":
        return b"\x80\x04\x8e" + struct.pack("<Q", n) + b"\x00" * 10
    if kind == "frame":
        return b"\x80\x04\x95" + struct.pack("<Q", n) + b"}."
    rebuild = np.core.multiarray._reconstruct  # noqa: NPY201 - what NumPy's pickles name

    class Array:
        def __reduce__(self):
            if kind == "array":
                return rebuild, (np.ndarray, (n,), b"B")
            return rebuild, (np.ndarray, (1,), np.dtype(("V", n)))

    return pickle.dumps(Array(), protocol=2)


@pytest.mark.bad_input
@pytest.mark.parametrize("kind", ["bytes8", "frame", "array", "dtype"])
def test_a_cifar_file_asking_for_gigabytes_is_one_line_in_bounded_memory(
    tmp_path: Path, kind: str
) -> None:
    """With checksums off, a batch of 13 to 138 bytes made the data-only unpickler allocate
    1.8 GB before it was rejected. Now: one line naming the file, nothing large allocated
    (tracemalloc sees NumPy's and Python's allocations)."""
    import time
    import tracemalloc

    folder = h.write_random_cifar10(tmp_path, 50, 10)
    bomb = _bomb(kind)
    assert len(bomb) <= 140
    (folder / "data_batch_2").write_bytes(bomb)
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(DataError) as caught:
            cifar.load_cifar("cifar10", tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(caught.value)
    assert "data_batch_2" in message and "\n" not in message
    assert peak < 50 * 2**20, f"{peak / 2**20:.0f} MiB"
    assert time.monotonic() - started < 10


@pytest.mark.bad_input
def test_a_cifar_file_that_is_a_fifo_is_not_read(tmp_path: Path) -> None:
    import os

    folder = h.write_random_cifar10(tmp_path, 50, 10)
    (folder / "data_batch_4").unlink()
    os.mkfifo(folder / "data_batch_4")
    with pytest.raises(DataError) as caught:
        cifar.unpickle_cifar(folder / "data_batch_4")
    assert "data_batch_4 is a FIFO, not a regular file" in str(caught.value)
