"""Training throughput of rkrepro's default path against torchvision and a plain loop.

    python bench/throughput.py --row densenet-bc-k12 [--table table1] [--model NAME] [--share]
        --device cpu|cuda [--steps N] [--rounds R] [--seconds S | --quick] [--jobs-per-gpu K]

One process per arm, all training the same model from the same seed, run interleaved
(rounds T, A, B, T, A, B, ...; only one arm runs at a time) so drift in the machine's speed
hits every arm alike:

- **T**: what ``rkrepro run`` does on that device: in-memory uint8 CIFAR augmented a batch at
  a time on the device, :class:`rkrepro.training.loop.Trainer` with its default :class:`FastPath`.
- **A**: torchvision's ``DenseNet`` with a 3x3 stem (``conv0`` 3->2k, no norm0/relu0/pool0),
  fp32 NCHW, a plain eager step, on the same batches as T. Asserted equal to T in parameters
  and FLOPs; skipped (with the reason) for models torchvision cannot build.
- **B**: the textbook loop: torchvision ``CIFAR10`` + ``DataLoader`` + PIL transforms, fp32
  NCHW, ``loss.item()`` every step, rkrepro's model with every fast-path switch off.

Imports nothing that imports mlflow. Without CIFAR under ``--data-dir`` a synthetic 50,000 +
10,000 image CIFAR-10 folder in the real on-disk format is written to a temporary directory,
and T and B both read it (B through torchvision's ``CIFAR10``, as with the real data).

ImageNet cells (``--table table3``) train on JPEGs of ImageNet's typical sizes cut from real
photographs (``bench/input_pipeline.py``), in ImageFolder's layout, through DataLoader workers
(``--workers``): **T** is rkrepro's path (``ImageFiles``, fb.resnet.torch's transforms in the
workers, the Trainer), **T-gpu_decode** the same with JPEGs decoded and augmented a batch at a
time on the GPU (CUDA only), **B** the textbook loop (torchvision ``ImageFolder``, its standard
training transforms, rkrepro's model with every fast-path switch off). No A arm, no loss check.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(ROOT / "bench") not in sys.path:
    sys.path.insert(0, str(ROOT / "bench"))

IMAGENET_TRAIN_IMAGES = 1_281_167

# Loss agreement of T and B on identical, unaugmented batches from the same init (relative):
# the first step's loss (same weights: only kernel rounding, or T-bf16's bf16), and every
# step's (SGD at lr 0.1 amplifies rounding differences step by step).
FIRST_RTOL = {"cpu": 1e-4, "cuda": 2e-2}  # CUDA: TF32-free fp32 kernels differ from B's
LOSS_RTOL = {"cpu": 1e-2, "cuda": 5e-2}
LOSS_CHECK_STEPS = 6


# ------------------------------------------------------------------------------ model choice


def parse_spec(text: str, dataset: str) -> Any:
    """``FAMILY:DEPTH[:K]`` (``densenet-bc:10:4``, ``resnet:8``) -> a ModelSpec."""
    from rkrepro.spec import ModelSpec

    parts = text.split(":")
    k = int(parts[2]) if len(parts) > 2 else None
    return ModelSpec(parts[0], dataset, int(parts[1]), k)  # type: ignore[arg-type]


def resolve(args: argparse.Namespace) -> tuple[Any, Any, str]:
    """(ModelSpec, Protocol, label) of the chosen table cell, or of ``--spec``."""
    from rkrepro import paper
    from rkrepro.spec import Protocol

    if args.spec:
        spec = parse_spec(args.spec, args.dataset)
        protocol = Protocol(
            args.dataset, "pad 4 + crop + flip", 64, 300, 0.1, 0.9, 1e-4, (150, 225)
        )
        return spec, protocol, args.spec
    tables = paper.load_tables(args.tables_dir)
    share = "share" if args.share else "no-share"
    cells = paper.resolve_cells(tables, args.table, args.row, [args.model], share)
    if not cells:
        raise SystemExit(f"no cell {args.table} {args.row} {args.model} (share={args.share})")
    cell = cells[0]
    return cell.spec, cell.protocol, cell.key


def torchvision_densenet(spec: Any) -> tuple[Any, str | None]:
    """Arm A's model, or (None, why not)."""
    from torch import nn

    from rkrepro.models import arch

    if spec.family != "densenet-bc" or spec.periods is not None:
        kind = "RKNet variants" if spec.periods is not None else f"{spec.family} models"
        return None, f"torchvision builds only DenseNet-BC originals, not {kind}"
    from torchvision.models import DenseNet

    k = arch.growth_rate(spec)
    model = DenseNet(
        growth_rate=k,
        block_config=arch.densenet_block_layers(spec),
        num_init_features=2 * k,
        bn_size=arch.BN_SIZE,
        num_classes=spec.num_classes,
    )
    model.features.conv0 = nn.Conv2d(3, 2 * k, 3, stride=1, padding=1, bias=False)
    for name in ("norm0", "relu0", "pool0"):
        setattr(model.features, name, nn.Identity())
    return model, None


# ------------------------------------------------------------------------------------ data


def imagenet_folder(tmp: Path, n_train: int) -> Path:
    """``tmp/train`` and ``tmp/val``: JPEGs of ImageNet's typical sizes cut from real photographs
    (``n_train``, at most 4096: give a window several batches of one epoch)."""
    from input_pipeline import write_photos

    write_photos(tmp / "train", min(n_train, 4096))
    write_photos(tmp / "val", min(n_train, 32))
    return tmp


def cifar_folder(data_dir: Path, dataset: str, tmp: Path, n_train: int) -> tuple[Path, bool]:
    """(root holding the CIFAR folder, synthetic?). Writes synthetic data when it is missing."""
    folder = "cifar-10-batches-py" if dataset == "cifar10" else "cifar-100-python"
    if (data_dir / folder).is_dir():
        return data_dir, False
    write_synthetic_cifar(tmp, dataset, n_train, min(10_000, n_train))
    return tmp, True


def write_synthetic_cifar(root: Path, dataset: str, n_train: int = 50_000, n_test: int = 10_000):
    """Random uint8 images in the real python-pickle layout of CIFAR-10/100."""
    import numpy as np

    rng = np.random.default_rng(0)
    classes = 10 if dataset == "cifar10" else 100
    key = "labels" if dataset == "cifar10" else "fine_labels"

    def batch(n: int) -> dict[str, Any]:
        x = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        return {"data": x, key: rng.integers(0, classes, size=n).tolist()}

    def dump(obj: object, path: Path) -> None:
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=2)

    if dataset == "cifar10":
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(1, 6):
            dump(batch(n_train // 5), folder / f"data_batch_{i}")
        dump(batch(n_test), folder / "test_batch")
        dump({"label_names": [f"c{i}" for i in range(10)]}, folder / "batches.meta")
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True, exist_ok=True)
        dump(batch(n_train), folder / "train")
        dump(batch(n_test), folder / "test")
        dump({"fine_label_names": [f"c{i}" for i in range(100)]}, folder / "meta")


# ---------------------------------------------------------------------------------- worker


class Arm:
    """One arm inside its own process: set-up, timed windows of steps, memory, FLOPs."""

    def __init__(self, name: str, cfg: dict[str, Any]) -> None:
        import torch

        from rkrepro.data import cifar
        from rkrepro.training.state import seed_everything

        os.environ[cifar.VERIFY_ENV] = "0"
        os.environ[cifar.DOWNLOAD_ENV] = "0"
        self.name, self.cfg = name, cfg
        self.device = torch.device(cfg["device"])
        spec_fields = cfg["spec"]
        from rkrepro.spec import ModelSpec, Protocol

        spec_fields["periods"] = (
            tuple(tuple(p) for p in spec_fields["periods"]) if spec_fields["periods"] else None
        )
        spec_fields["m"] = tuple(spec_fields["m"]) if spec_fields["m"] else None
        self.spec = ModelSpec(**spec_fields)
        p = cfg["protocol"]
        self.protocol = Protocol(**{**p, "lr_milestones": tuple(p["lr_milestones"])})
        self.batch = self.protocol.batch_size
        started = time.perf_counter()
        self.imagenet = self.spec.dataset == "imagenet"
        if not self.imagenet:
            self.train_split, self.test_split = cifar.load_cifar(
                self.spec.dataset, Path(cfg["root"])
            )
        self.data_s = time.perf_counter() - started
        seed_everything(cfg["seed"])
        self.precision = "fp32"
        self.trainer: Any = None
        self.iterator = self._batches()
        started = time.perf_counter()
        self._setup()
        self.step()
        self.sync()
        self.first_step_s = time.perf_counter() - started
        self.steps_done = 1

    # -- set-up per arm ---------------------------------------------------------------------

    def _setup(self) -> None:
        import torch
        import torch.nn.functional as F

        from rkrepro.data import cifar
        from rkrepro.models import build_model
        from rkrepro.planning.fast_path import FastPath
        from rkrepro.training.checkpoints import Checkpoints
        from rkrepro.training.loop import Trainer
        from rkrepro.training.optim import build_optimizer
        from rkrepro.training.setup import Execution

        dev = self.device
        if self.name in ("T", "J", "T-bf16", "T-gpu_decode"):  # J: a T job of --jobs-per-gpu
            # T: rkrepro's default (fp32, the paper's arithmetic); T-bf16: --precision bf16;
            # T-gpu_decode: T with ImageNet's JPEGs decoded and augmented on the GPU.
            precision = "bf16-autocast" if self.name == "T-bf16" else "fp32"
            fast = FastPath.from_env()
            if self.name == "T-gpu_decode":
                fast = replace(fast, gpu_decode=True)
            execution = Execution.local(dev, precision, fast)
            if self.imagenet:
                tr, te = self._imagenet_sources(execution.channels_last)
            else:
                tr, te = cifar.cifar_batches(
                    self.train_split,
                    self.test_split,
                    self.batch,
                    dev,
                    self.cfg["seed"],
                    None,
                    execution.channels_last,
                )
            self.sources = (tr, te)
            self.trainer = Trainer(
                build_model(self.spec),
                tr,
                te,
                self.protocol,
                execution,
                Checkpoints(Path(tempfile.mkdtemp())),
            )
            self.model = self.trainer.model
            self.fast = execution.fast
            self.precision = precision
            self.step = lambda: self.trainer.train_step(*next(self.iterator))
            return
        self.fast = FastPath.off()
        if self.name == "A":
            model, why = torchvision_densenet(self.spec)
            assert model is not None, why
            self.model = model.to(dev)
        else:
            self.model = build_model(self.spec, feature_buffer=False).to(dev)
        self.opt = build_optimizer(self.model, self.protocol)
        self.model.train()
        if self.name == "A":
            tr, te = cifar.cifar_batches(
                self.train_split, self.test_split, self.batch, dev, self.cfg["seed"], None
            )
            self.sources = (tr, te)

        def plain_step() -> None:
            x, y = next(self.iterator)
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            loss = F.cross_entropy(self.model(x), y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            if self.name == "B":
                self.last_loss = loss.item()  # the textbook loop's per-step host read

        self.step = plain_step
        torch.manual_seed(self.cfg["seed"])

    def _batches(self):
        """Endless training batches: rkrepro's pipeline (T, A) or torchvision's (B)."""
        epoch = 0
        while True:
            epoch += 1
            if self.name == "B":
                yield from (
                    self._torchvision_imagenet() if self.imagenet else self._torchvision_loader()
                )
            else:
                yield from self.sources[0].batches(epoch)

    def _torchvision_loader(self):
        import torch
        from torchvision import transforms

        from rkrepro.data import cifar

        cls = cifar._cifar_class(self.spec.dataset, verify=False)
        tf = transforms.Compose(
            [
                transforms.RandomCrop(32, padding=4),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize(cifar.CIFAR_MEAN, cifar.CIFAR_STD),
            ]
        )

        class Textbook(cls):  # type: ignore[misc, valid-type]
            """torchvision's own CIFAR reader; the class names (meta, md5-checked by
            torchvision) are not needed to train and synthetic folders' meta has no md5."""

            def _load_meta(self) -> None:
                self.classes = []

        dataset = Textbook(self.cfg["root"], train=True, transform=tf, download=False)
        workers = self.cfg["b_workers"]
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=self.batch,
            shuffle=True,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
        )
        yield from loader

    def _imagenet_sources(self, channels_last: bool) -> tuple[Any, Any]:
        """rkrepro's ImageNet batches (train, val) from the synthetic folder."""
        from rkrepro.data import fb_transforms as fb
        from rkrepro.data import gpu_augment, imagenet

        root, dev, gpu = Path(self.cfg["root"]), self.device, self.name == "T-gpu_decode"
        sources = []
        for split, tf, training in (
            ("train", fb.ImageNetTrain(), True),
            ("val", fb.ImageNetEval(), False),
        ):
            dataset: Any = imagenet.ImageFiles(root / split, tf)
            if gpu:
                dataset = gpu_augment.EncodedImages(dataset.samples, tf)
            sources.append(
                imagenet.LoaderBatches(
                    dataset,
                    self.batch,
                    dev,
                    training,
                    self.cfg["seed"],
                    self.cfg["b_workers"],
                    channels_last=channels_last,
                    gpu_decode=gpu,
                )
            )
        return sources[0], sources[1]

    def _torchvision_imagenet(self):
        """The textbook ImageNet loader: ImageFolder + torchvision's standard transforms."""
        import torch
        from torchvision import datasets
        from torchvision import transforms as T

        from rkrepro.data import fb_transforms as fb

        tf = T.Compose(
            [
                T.RandomResizedCrop(224),
                T.RandomHorizontalFlip(),
                T.ColorJitter(0.4, 0.4, 0.4),
                T.ToTensor(),
                T.Normalize(fb.IMAGENET_MEAN, fb.IMAGENET_STD),
            ]
        )
        workers = self.cfg["b_workers"]
        loader = torch.utils.data.DataLoader(
            datasets.ImageFolder(str(Path(self.cfg["root"]) / "train"), tf),
            batch_size=self.batch,
            shuffle=True,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
            drop_last=True,
        )
        yield from loader

    # -- measurements -----------------------------------------------------------------------

    def sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def window(self, steps: int) -> float:
        """Seconds for ``steps`` training steps, the device drained at both ends."""
        import torch

        self.sync()
        if self.device.type == "cuda" and self.steps_done < 50:
            torch.cuda.reset_peak_memory_stats(self.device)
        started = time.perf_counter()
        for _ in range(steps):
            self.step()
        self.sync()
        self.steps_done += steps
        return time.perf_counter() - started

    def eval_seconds(self) -> float:
        """Seconds for one pass over the test split, as the arm's loop evaluates."""
        import torch

        model = self.model
        model.eval()
        self.sync()
        started = time.perf_counter()
        with torch.no_grad():
            if self.trainer is not None:
                self.trainer.evaluate()
            elif self.imagenet:
                pass  # the textbook ImageNet arm times training only
            else:
                from rkrepro.data import cifar

                te = self.sources[1] if self.name == "A" else None
                if te is None:
                    te = cifar.CifarBatches(self.test_split, 2 * self.batch, self.device, False)
                for x, _ in te.batches(0):
                    model(x)
        self.sync()
        model.train()
        return time.perf_counter() - started

    def stats(self) -> dict[str, Any]:
        import resource

        import torch

        from rkrepro.models import count_flops, count_params
        from rkrepro.models.counting import input_size_for

        base = self.model.module if hasattr(self.model, "module") else self.model
        size = input_size_for(self.spec)
        flops = count_flops(base, size)
        out: dict[str, Any] = {
            "params": sum(p.numel() for p in base.parameters()),
            "params_paper": count_params(base)[0] if self.name != "A" else None,
            "flops": flops,
            "first_step_s": self.first_step_s,
            "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "saved_fp32_mib": saved_tensor_mib(base, self.batch, self.device, size),
            "fast": self.fast.describe(),
            "precision": self.precision,
        }
        if self.device.type == "cuda":
            out["peak_mib"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.name == "T" and not self.imagenet:
            out["memory"] = self.memory_paths()
        return out

    def memory_paths(self) -> dict[str, float]:
        """Saved-for-backward MiB (fp32, one batch) of T's model: concatenation path, feature
        buffer, buffer + memory-efficient checkpointing."""
        from rkrepro.models import build_model

        result = {}
        for label, kw in (
            ("concat", {"feature_buffer": False}),
            ("buffer", {"feature_buffer": True}),
            ("memory_efficient", {"feature_buffer": True, "memory_efficient": True}),
        ):
            model = build_model(self.spec, **kw).to(self.device)
            result[label] = saved_tensor_mib(model, self.batch, self.device)
        return result

    def loss_check(self, steps: int) -> list[float]:
        """Per-step training losses on fixed, unaugmented batches (same for every arm)."""
        import torch
        import torch.nn.functional as F

        from rkrepro.data import cifar
        from rkrepro.models import build_model
        from rkrepro.planning.fast_path import FastPath
        from rkrepro.training.checkpoints import Checkpoints
        from rkrepro.training.loop import Trainer
        from rkrepro.training.optim import build_optimizer
        from rkrepro.training.setup import Execution
        from rkrepro.training.state import seed_everything

        seed_everything(self.cfg["seed"])
        dev = self.device
        model = build_model(self.spec, feature_buffer=self.name == "T").to(dev)
        mean = torch.tensor(cifar.CIFAR_MEAN, device=dev).view(1, 3, 1, 1)
        std = torch.tensor(cifar.CIFAR_STD, device=dev).view(1, 3, 1, 1)
        x_all = self.train_split.x[: steps * self.batch].to(dev)
        y_all = self.train_split.y[: steps * self.batch].to(dev)
        batches = [
            (
                cifar.normalise(x_all[i * self.batch : (i + 1) * self.batch], mean, std),
                y_all[i * self.batch : (i + 1) * self.batch],
            )
            for i in range(steps)
        ]
        losses = []
        if self.name == "T":
            trainer = Trainer(
                model,
                None,  # type: ignore[arg-type]
                None,  # type: ignore[arg-type]
                self.protocol,
                Execution.local(dev, fast=FastPath.from_env()),
                Checkpoints(Path(tempfile.mkdtemp())),
            )
            loss_sum, _ = trainer.running_sums
            before = 0.0
            for x, y in batches:
                trainer.train_step(x, y)
                now = float(loss_sum)
                losses.append((now - before) / y.numel())
                before = now
            return losses
        opt = build_optimizer(model, self.protocol)
        model.train()
        for x, y in batches:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses


def saved_tensor_mib(
    model: Any, batch: int, device: Any, size: tuple[int, int, int] = (3, 32, 32)
) -> float:
    """MiB of distinct storages autograd saves for backward in one fp32 training forward
    (views of one storage, such as feature-buffer windows, count once)."""
    import torch

    storages: dict[int, int] = {}
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            storages[s.data_ptr()] = s.nbytes()
        return t

    was = model.training
    model.train()
    x = torch.randn(batch, *size, device=device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    del out
    model.train(was)
    return sum(storages.values()) / 2**20


def worker_main(name: str) -> None:
    """Serve commands (one JSON line each) from the parent on stdin."""
    cfg = json.loads(sys.stdin.readline())
    try:
        arm = Arm(name, cfg)
        reply: dict[str, Any] = {"ready": True, "first_step_s": arm.first_step_s}
    except Exception as error:  # noqa: BLE001 - reported to the parent, which skips the arm
        reply = {"ready": False, "error": f"{type(error).__name__}: {error}"}
        print(json.dumps(reply), flush=True)
        return
    print(json.dumps(reply), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "window":
            reply = {"seconds": arm.window(cmd["steps"])}
        elif cmd["op"] == "eval":
            reply = {"seconds": arm.eval_seconds()}
        elif cmd["op"] == "stats":
            reply = arm.stats()
        elif cmd["op"] == "loss_check":
            reply = {"losses": arm.loss_check(cmd["steps"])}
        else:
            return
        print(json.dumps(reply), flush=True)


# ---------------------------------------------------------------------------------- parent


class Worker:
    def __init__(self, name: str, cfg: dict[str, Any], env: dict[str, str]) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.send(cfg)

    def send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def receive(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"arm {self.name} died (exit code {self.proc.wait()})")
        return json.loads(line)

    def ask(self, **cmd: Any) -> dict[str, Any]:
        self.send(cmd)
        return self.receive()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send({"op": "quit"})
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()


def _fmt_s(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.1f} s"


def run(args: argparse.Namespace) -> int:
    import torch

    from rkrepro.models import build_model, count_flops

    spec, protocol, label = resolve(args)
    protocol = replace(protocol, batch_size=args.batch or protocol.batch_size)
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but CUDA is not available here")
    steps = args.steps or (200 if device == "cuda" else 5)
    budget = 240.0 if args.quick and args.seconds is None else args.seconds
    started = time.perf_counter()

    arms = [a for a in args.arms.split(",") if a]
    imagenet = spec.dataset == "imagenet"
    if "T-gpu_decode" in arms and (not imagenet or device != "cuda"):
        print("arm T-gpu_decode skipped: it decodes ImageNet JPEGs on a CUDA device")
        arms.remove("T-gpu_decode")
    if "A" in arms:
        tv, why = torchvision_densenet(spec)
        if tv is None:
            print(f"arm A skipped: {why}")
            arms.remove("A")
        else:
            with torch.device("meta"):
                ours = build_model(spec)
            ours_p = sum(p.numel() for p in ours.parameters())
            tv_p = sum(p.numel() for p in tv.parameters())
            ours_f = count_flops(build_model(spec), (3, 32, 32))
            tv_f = count_flops(tv, (3, 32, 32))
            assert ours_p == tv_p, f"parameters differ: rkrepro {ours_p}, torchvision {tv_p}"
            assert ours_f == tv_f, f"FLOPs differ: rkrepro {ours_f}, torchvision {tv_f}"
            print(f"arm A: torchvision DenseNet, same parameters ({tv_p:,}) and FLOPs ({tv_f:,})")

    with tempfile.TemporaryDirectory(prefix="rkrepro-bench-") as tmp:
        if imagenet:
            root = imagenet_folder(Path(tmp), args.synthetic_images)
            source = "JPEGs of ImageNet's typical sizes from real photographs, in a temp dir"
            n_train = IMAGENET_TRAIN_IMAGES  # epochs are projected for ImageNet's training set
        else:
            root, synthetic = cifar_folder(
                Path(args.data_dir), spec.dataset, Path(tmp), args.synthetic_images
            )
            source = (
                "synthetic uint8 CIFAR folder (real file format) in a temp dir"
                if synthetic
                else root
            )
            n_train = 50_000  # epochs are projected for CIFAR's training set
        cfg = {
            "device": device,
            "spec": {
                "family": spec.family,
                "dataset": spec.dataset,
                "depth": spec.depth,
                "growth_rate": spec.growth_rate,
                "periods": spec.periods,
                "m": spec.m,
                "share": spec.share,
                "resnet_stages": spec.resnet_stages,
            },
            # Every field but the free-form extras and the LR rule (its milestones are here),
            # rebuilt in each arm.
            "protocol": {
                f.name: getattr(protocol, f.name)
                for f in fields(protocol)
                if f.name not in ("extra", "lr_schedule")
            },
            "root": str(root),
            "seed": 0,
            "b_workers": args.b_workers
            if args.b_workers is not None
            else (4 if device == "cuda" else 0),
        }
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        print(
            f"model {label} ({spec.family} d{spec.depth}"
            + (f" k{spec.growth_rate}" if spec.growth_rate else "")
            + f"), batch {protocol.batch_size}, device {device}"
            + (
                f" ({torch.cuda.get_device_name()})"
                if device == "cuda"
                else f", {torch.get_num_threads()} threads"
            )
            + f"; data: {source}; {steps} steps per window"
        )
        workers: dict[str, Worker] = {}
        first: dict[str, float] = {}
        try:
            for name in arms:  # started one after the other: set-up does not overlap
                w = Worker(name, cfg, env)
                reply = w.receive()
                if not reply["ready"]:
                    print(f"arm {name} failed to start: {reply['error']}")
                    w.close()
                    continue
                workers[name] = w
                first[name] = reply["first_step_s"]
            for w in workers.values():  # one untimed window each: caches, allocator, autotuning
                w.ask(op="window", steps=args.warmup_steps or steps)
            windows: dict[str, list[float]] = {n: [] for n in workers}
            rounds = 0
            while rounds < args.rounds:
                round_start = time.perf_counter()
                for name, w in workers.items():
                    windows[name].append(w.ask(op="window", steps=steps)["seconds"])
                rounds += 1
                spent = time.perf_counter() - started
                per_round = time.perf_counter() - round_start
                if budget is not None and rounds >= 2 and spent + per_round > budget * 0.8:
                    break
            evals = {n: w.ask(op="eval")["seconds"] for n, w in workers.items()}
            stats = {n: w.ask(op="stats") for n, w in workers.items()}
            check = None
            if "T" in workers and "B" in workers and not args.no_loss_check and not imagenet:
                t_loss = workers["T"].ask(op="loss_check", steps=LOSS_CHECK_STEPS)["losses"]
                b_loss = workers["B"].ask(op="loss_check", steps=LOSS_CHECK_STEPS)["losses"]
                check = (t_loss, b_loss)
        finally:
            for w in workers.values():
                w.close()

        # The arms' table first: a packed-jobs phase that runs out of time loses only itself.
        report(
            windows,
            first,
            evals,
            stats,
            protocol.batch_size,
            steps,
            (n_train, protocol.epochs),
            rounds,
            check,
            device,
        )
        sys.stdout.flush()
        if args.json:
            write_json(args.json, windows, stats, spec, protocol.batch_size, steps, device)
        packs = [int(k) for k in str(args.jobs_per_gpu).split(",") if k.strip()]
        for k in (k for k in packs if k > 1 and "T" in windows):
            jobs = run_jobs(k, cfg, env, steps, max(2, min(args.rounds, 3)))
            one = protocol.batch_size * steps / statistics.median(windows["T"])
            print(
                f"--jobs-per-gpu {k}: aggregate {jobs:,.0f} images/s "
                f"= {jobs / one:.2f}x one job ({one:,.0f} images/s)",
                flush=True,
            )
            if args.json:
                record = {"arm": f"T x{k}", "family": spec.family, "depth": spec.depth}
                with open(args.json, "a", encoding="utf-8") as f:
                    f.write(json.dumps({**record, "aggregate_images_per_s": jobs}) + "\n")
    print(f"total benchmark time {_fmt_s(time.perf_counter() - started)}")
    return 0


def write_json(
    path: str,
    windows: dict[str, list[float]],
    stats: dict[str, dict[str, Any]],
    spec: Any,
    batch: int,
    steps: int,
    device: str,
) -> None:
    """One JSON line per arm (appended): what rkrepro.calibration.snippet reads."""
    import datetime

    import torch

    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    with open(path, "a", encoding="utf-8") as f:
        for arm, w in windows.items():
            rate = batch * steps / statistics.median(w)
            s = stats[arm]
            record = {
                "arm": arm,
                "device_name": name,
                "family": spec.family,
                "depth": spec.depth,
                "growth_rate": spec.growth_rate,
                "batch": batch,
                "images_per_s": rate,
                "ms_per_step": 1000 * batch / rate,
                "tflops": 3 * s["flops"] * rate / 1e12,
                "forward_flops": s["flops"],
                "peak_mib": s.get("peak_mib", s["rss_mib"]),
                "precision": s.get("precision", "fp32"),
                "note": f"{datetime.date.today()} torch {torch.__version__} {s['fast']}",
            }
            f.write(json.dumps(record) + "\n")


def run_jobs(k: int, cfg: dict[str, Any], env: dict[str, str], steps: int, rounds: int) -> float:
    """Aggregate images/s of ``k`` T jobs sharing the device: the images of their windows,
    started together, over the wall time until the last one ends (a sum of per-job rates
    would count a job that finished early as if it had run all along)."""
    jobs = [Worker("J", {**cfg, "seed": i}, env) for i in range(k)]
    try:
        for j in jobs:
            assert j.receive()["ready"]
        totals = []
        images = k * cfg["protocol"]["batch_size"] * steps
        for _ in range(rounds):
            started = time.perf_counter()
            for j in jobs:
                j.send({"op": "window", "steps": steps})
            for j in jobs:
                j.receive()
            totals.append(images / (time.perf_counter() - started))  # all jobs' images / wall
        return statistics.median(totals)
    finally:
        for j in jobs:
            j.close()


def report(
    windows: dict[str, list[float]],
    first: dict[str, float],
    evals: dict[str, float],
    stats: dict[str, dict[str, Any]],
    batch: int,
    steps: int,
    length: tuple[int, int],
    rounds: int,
    check: tuple[list[float], list[float]] | None,
    device: str,
) -> None:
    n_train, epochs = length  # training images, epochs of the protocol
    steps_per_epoch = math.ceil(n_train / batch)
    rate = {n: batch * steps / statistics.median(w) for n, w in windows.items()}
    print(f"\n{rounds} interleaved rounds; images/s is the median of the rounds' windows")
    mem_col = "peak MiB" if device == "cuda" else "max RSS MiB"
    head = (
        f"{'arm':<4}{'images/s':>11}{'spread':>15}{'first step':>12}{'epoch':>10}"
        f"{f'{epochs} epochs':>12}{mem_col:>13}{'saved fp32':>12}{'TFLOP/s':>9}  fast path"
    )
    print(head)
    print("-" * len(head))
    for name, w in windows.items():
        s = stats[name]
        rates = sorted(batch * steps / x for x in w)
        epoch = steps_per_epoch * batch / rate[name] + evals[name]
        mem = s.get("peak_mib", s["rss_mib"])
        tflops = 3 * s["flops"] * rate[name] / 1e12
        print(
            f"{name:<7}{rate[name]:>8,.1f}{f'{rates[0]:,.0f}-{rates[-1]:,.0f}':>15}"
            f"{_fmt_s(first[name]):>12}{_fmt_s(epoch):>10}{_fmt_s(epochs * epoch):>12}"
            f"{mem:>13,.0f}{s['saved_fp32_mib']:>12,.1f}{tflops:>9.3f}  {s['fast']}"
        )
    print(
        f"epoch = {steps_per_epoch} steps at the median rate + one measured test pass; "
        "'first step' includes model set-up, compilation and graph capture; 'saved fp32' is "
        "the MiB autograd saves for one fp32 training forward (distinct storages)"
    )
    for other in ("T-bf16", "A", "B"):
        if "T" in rate and other in rate:
            print(f"T/{other} = {rate['T'] / rate[other]:.2f}")
    if "T" in rate and "T-gpu_decode" in rate:
        print(f"T-gpu_decode/T = {rate['T-gpu_decode'] / rate['T']:.2f}")
    if "T" in stats and "memory" in stats["T"]:
        m = stats["T"]["memory"]
        print(
            f"T saved-for-backward MiB (fp32, batch {batch}): concat {m['concat']:.1f}, "
            f"feature buffer {m['buffer']:.1f}, memory-efficient {m['memory_efficient']:.1f} "
            f"({100 * m['memory_efficient'] / m['concat']:.0f}% of concat)"
        )
    if check is not None:
        t_loss, b_loss = check
        diffs = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(t_loss, b_loss, strict=True)]
        ok = diffs[0] <= FIRST_RTOL[device] and max(diffs) <= LOSS_RTOL[device]
        print(
            f"loss check ({len(t_loss)} fixed unaugmented batches, same init): "
            f"T {[round(v, 4) for v in t_loss]} B {[round(v, 4) for v in b_loss]}; relative "
            f"difference first step {diffs[0]:.1e} (tolerance {FIRST_RTOL[device]:g}), "
            f"max {max(diffs):.1e} (tolerance {LOSS_RTOL[device]:g}): "
            + ("OK" if ok else "MISMATCH")
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--table", default="table1")
    p.add_argument("--row", default="densenet-bc-k12")
    p.add_argument("--model", default="original", help="original or a variant name")
    p.add_argument("--share", action="store_true", help="the variant's 'with share' cell")
    p.add_argument("--spec", help="an ad-hoc model FAMILY:DEPTH[:K] instead of a table cell")
    p.add_argument("--dataset", default="cifar10", help="with --spec")
    p.add_argument("--tables-dir", default=None)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--steps", type=int, default=None, help="steps per timed window")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (windows per arm)")
    p.add_argument("--warmup-steps", type=int, default=None, help="untimed, default --steps")
    p.add_argument("--seconds", type=float, default=None, help="stop starting rounds after this")
    p.add_argument("--quick", action="store_true", help="a ~4 minute budget")
    p.add_argument("--jobs-per-gpu", default="1", help="K or a list K1,K2: T packed K per GPU")
    p.add_argument("--json", help="append one JSON line per arm (calibration input)")
    p.add_argument("--arms", default="T,A,B", help="of T, T-bf16, T-gpu_decode, A, B")
    p.add_argument("--batch", type=int, default=None, help="default: the protocol's (64)")
    p.add_argument(
        "--b-workers",
        type=int,
        default=None,
        help="arm B's DataLoader workers (every ImageNet arm's)",
    )
    p.add_argument("--data-dir", default=os.environ.get("RKREPRO_DATA_DIR") or "data")
    p.add_argument("--no-loss-check", action="store_true")
    p.add_argument(
        "--synthetic-images", type=int, default=50_000, help="training images if CIFAR is absent"
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker_main(args.worker)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
