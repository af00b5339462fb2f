"""The batched ``gpu_decode`` augmentation, run on CPU tensors (and shapes on the meta device):
equal to the per-image path, drawing the same random choices from the same per-sample seeds,
with one host-to-device transfer per batch whatever its size."""

from __future__ import annotations

import io
from pathlib import Path

import helpers_images as hi
import pytest
import torch
from torch.overrides import TorchFunctionMode

from rkrepro.data import fb_transforms as fb
from rkrepro.data import gpu_augment, imagenet
from rkrepro.data.sampling import seeded

CPU = torch.device("cpu")


def _decoded(sizes) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    data = [torch.frombuffer(bytearray(hi.photo_jpeg(i, s)), dtype=torch.uint8) for i, s in sizes]
    return decode_jpeg(data, mode=ImageReadMode.RGB)


@pytest.mark.parametrize("padded", [True, False], ids=["padded", "in-place"])
@pytest.mark.parametrize("transform", [fb.ImageNetTrain(), fb.ImageNetEval()], ids=type)
def test_the_batch_is_the_per_image_path(transform, padded: bool) -> None:
    """Photographs of several sizes (a 640x60 one falls back to CenterCrop(Scale)), padded into
    one batch as on a GPU or read in place one by one as on a CPU: each image as the per-image
    CPU path makes it under the same seed."""
    sizes = [(i, s) for i, s in enumerate(hi.SIZES)] + [(5, (7, 5)), (6, (300, 224))]
    images = _decoded(sizes)
    expected, plans = [], []
    for i, image in enumerate(images):
        with seeded(1000 + i):
            expected.append(transform(image))
        with seeded(1000 + i):
            plans.append(transform.plan(*image.shape[1:]).pack())
    batch = gpu_augment.augment_batch(images, torch.stack(plans), padded=padded)
    assert batch.shape == (len(images), 3, 224, 224) and batch.dtype == torch.float32
    torch.testing.assert_close(batch, torch.stack(expected), rtol=0, atol=2e-5)


def test_workers_draw_what_the_cpu_path_draws(tmp_path: Path) -> None:
    """Through DataLoader workers and per-sample seeds on both sides: the batched path's
    batches equal the CPU path's (same crops, jitter, lighting, flips)."""
    hi.write_folder(tmp_path, per_class=3)
    cpu_path = imagenet.ImageFiles(tmp_path, fb.ImageNetTrain())
    batched = gpu_augment.EncodedImages(cpu_path.samples, fb.ImageNetTrain())
    keys = [(i, 7919 * i + 3) for i in range(len(cpu_path))]
    loader = torch.utils.data.DataLoader(
        imagenet.SeededSamples(batched),
        batch_size=3,
        sampler=keys,
        num_workers=2,
        collate_fn=gpu_augment.encoded_collate,
    )
    got = [gpu_augment.device_batch(b, CPU, 224) for b in loader]
    expected = [imagenet.SeededSamples(cpu_path)[k] for k in keys]
    torch.testing.assert_close(
        torch.cat([x for x, _ in got]), torch.stack([x for x, _ in expected]), rtol=0, atol=2e-5
    )
    assert torch.cat([y for _, y in got]).tolist() == [y for _, y in expected]


class Transfers(TorchFunctionMode):
    """Every torch call that moves data to a device or creates a tensor from host data with a
    device, and every read of a tensor's value back to the host."""

    MOVES = {"to", "cuda", "copy_", "tensor", "as_tensor", "new_tensor"}
    READS = {"item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "nonzero"}

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device, self.moves, self.reads = device, 0, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        kwargs = kwargs or {}
        if name in self.MOVES and (name != "to" or args[1:] or "device" in kwargs):
            self.moves += 1
        if name in self.READS and args and getattr(args[0], "device", None) == self.device:
            self.reads += 1
        return func(*args, **kwargs)


def _batch(n: int, device: torch.device) -> tuple[list[torch.Tensor], torch.Tensor]:
    sizes = [(300 + 7 * i, 400 - 5 * i) for i in range(n)]
    images = [torch.empty(3, h, w, dtype=torch.uint8, device=device) for h, w in sizes]
    with seeded(0):
        plans = torch.stack([fb.ImageNetTrain().plan(h, w).pack() for h, w in sizes])
    return images, plans


@pytest.mark.parametrize("n", [2, 8])
def test_one_transfer_per_batch_whatever_its_size(n: int) -> None:
    """Counted with a TorchFunctionMode over the augmentation, with the images on the meta
    device: the host-made parameters must go there explicitly (a host tensor mixed into a
    meta computation is an error), in one ``.to``, and nothing is read back."""
    meta = torch.device("meta")
    images, plans = _batch(n, meta)
    with Transfers(meta) as counted:
        out = gpu_augment.augment_batch(images, plans)
    assert out.shape == (n, 3, 224, 224) and out.device == meta
    assert (counted.moves, counted.reads) == (1, 0)


def test_the_per_image_loop_made_transfers_per_image() -> None:
    """The counter sees what the batched path removed: fb.resnet.torch's steps run image by
    image on the device move their constants there for every image."""
    meta = torch.device("meta")
    steps = fb.compose(
        [fb.random_sized_crop(224), fb.color_jitter(), fb.lighting(), fb.color_normalize()]
    )
    counts = []
    for n in (2, 8):
        images, _ = _batch(n, meta)
        with Transfers(meta) as counted:
            for image in images:
                steps(fb.to_float(image))
        counts.append(counted.moves)
    assert counts[1] >= 4 * 8 and counts[1] > counts[0]


@pytest.mark.parametrize("n", [2, 6])
def test_a_whole_batch_step_moves_two_tensors(tmp_path: Path, n: int) -> None:
    """What the main process does per batch (decode, augment, labels), on real files: two
    transfers (the plans, the labels) for 2 or 6 images; decoding is torchvision's."""
    hi.write_folder(tmp_path, per_class=3)
    samples = imagenet.ImageFiles(tmp_path, None).samples[:n]
    reader = gpu_augment.EncodedImages(samples, fb.ImageNetTrain())
    batch = gpu_augment.encoded_collate([reader[i] for i in range(n)])
    with Transfers(CPU) as counted:
        x, y = gpu_augment.device_batch(batch, CPU, 224)
    assert x.shape == (n, 3, 224, 224) and y.tolist() == [label for _, label in samples]
    assert counted.moves == 2


def test_files_the_device_decoder_does_not_take_are_decoded_by_the_worker(tmp_path: Path) -> None:
    """A PNG named .JPEG and a CMYK JPEG (ImageNet has both): pixels from the worker, the same
    result as the per-image path."""
    from PIL import Image

    (tmp_path / "n0").mkdir()
    Image.open(io.BytesIO(hi.photo_jpeg(0))).save(tmp_path / "n0" / "a.JPEG", "PNG")
    (tmp_path / "n0" / "b.JPEG").write_bytes(hi.photo_jpeg(1, mode="CMYK"))
    (tmp_path / "n0" / "c.JPEG").write_bytes(hi.photo_jpeg(2))
    cpu_path = imagenet.ImageFiles(tmp_path, fb.ImageNetEval())
    reader = gpu_augment.EncodedImages(cpu_path.samples, fb.ImageNetEval())
    items = [reader[i] for i in range(3)]
    assert [item[0].dim() for item in items] == [3, 3, 1]  # pixels, pixels, JPEG bytes
    x, _ = gpu_augment.device_batch(gpu_augment.encoded_collate(items), CPU, 224)
    expected = torch.stack([cpu_path[i][0] for i in range(3)])
    torch.testing.assert_close(x, expected, rtol=0, atol=2e-5)
