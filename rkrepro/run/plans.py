"""What ``rkrepro run`` will train: options, plans, seeds and the device they go to.

A *plan* is one (cell, seed) with its resolved configuration; the configuration's hash names
its checkpoint folder and tags its MLflow run, so reruns find their own work and different
configurations (a shortened protocol, --memory-efficient) never mix.

Nothing here imports torch at module level: the CLI, the launchers and the cost estimate read
plans without paying for it. Adding a ``run`` flag means the option in :mod:`rkrepro.cli.run`,
a :class:`RunOptions` field (which every launched job then repeats by itself) and, if it
changes what is trained, :meth:`Plan.identity`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rkrepro import mlflow_keys
from rkrepro import readings as readings_mod
from rkrepro.errors import RkreproError
from rkrepro.fast_path import FastPath, run_precision
from rkrepro.paths import default_data_dir, resolve_tracking_uri
from rkrepro.spec import Protocol, scaled_milestones
from rkrepro.targets import with_readings

if TYPE_CHECKING:
    import torch

    from rkrepro.targets import Cell

# A typo like --seeds 1000000 must not queue a million runs.
MAX_SEEDS = 100


# --------------------------------------------------------------------------------------------
# Options.


def _absolute(path: Path | None) -> str | None:
    return None if path is None else str(Path(path).absolute())


@dataclass(frozen=True)
class RunOptions:
    """What the command line asks for beyond the cells and the launcher.

    Every field is the ``rkrepro run`` option of the same name (``train_subset`` is
    ``--train-subset``); :meth:`job_args` turns them back into the options a launched job
    repeats. A field with ``metadata={"job": False}`` is decided per job by the launcher.
    """

    epochs: int | None = None
    train_subset: int | None = None
    memory_efficient: bool = False
    amp: bool = False
    force: bool = False
    data_dir: Path = field(default_factory=default_data_dir, metadata={"arg": _absolute})
    device: str = field(default="auto", metadata={"job": False})
    tracking_uri: str | None = field(default=None, metadata={"arg": resolve_tracking_uri})
    tables_dir: Path | None = field(default=None, metadata={"arg": _absolute})
    workers: int = 8
    sync_bn: bool = False
    fast_path: str | None = None  # --fast-path; None: $RKREPRO_FAST_PATH, else the defaults
    reading: tuple[str, ...] = ()  # --reading NAME=VALUE (repeatable), see rkrepro.readings

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> RunOptions:
        """The options among ``values`` (e.g. a command's arguments); ``None`` keeps a default."""
        chosen = {f.name: values[f.name] for f in fields(cls) if values.get(f.name) is not None}
        if isinstance(chosen.get("reading"), list):
            chosen["reading"] = tuple(chosen["reading"])
        return cls(**chosen)

    def readings(self) -> dict[str, str]:
        """The checked ``--reading`` overrides. ``precision`` is not one: a run's precision is
        what its device and --fast-path/--amp give (and is recorded as its reading)."""
        overrides = readings_mod.parse_overrides(self.reading)
        if "precision" in overrides:
            raise RkreproError(
                "--reading precision=... is not a choice: the precision follows the device, "
                "--amp and --fast-path (use --fast-path -bf16 for fp32 on CUDA); every run "
                "records the precision it trained in"
            )
        return overrides

    def fast(self) -> FastPath:
        """The requested fast path (before :meth:`FastPath.for_device`)."""
        return FastPath.from_env() if self.fast_path is None else FastPath.parse(self.fast_path)

    def job_args(self) -> list[str]:
        """These options as ``rkrepro run`` arguments, paths absolute (jobs may start elsewhere)."""
        args: list[str] = []
        for f in fields(self):
            if not f.metadata.get("job", True):
                continue
            flag = "--" + f.name.replace("_", "-")
            value = getattr(self, f.name)
            if "arg" in f.metadata:
                value = f.metadata["arg"](value)
            if value is None or value is False:
                continue
            if isinstance(value, tuple):  # a repeatable option
                args += [a for item in value for a in (flag, str(item))]
                continue
            args += [flag] if value is True else [flag, str(value)]
        return args


# --------------------------------------------------------------------------------------------
# Devices: the one place that decides where runs train.


def planned_device_type(device: str) -> str:
    """``cpu`` or ``cuda``: where ``--device`` will put the runs (``auto``: a GPU if any)."""
    name = (device or "auto").strip().lower()
    if name == "auto":
        return "cuda" if visible_gpu_count() else "cpu"
    return "cuda" if name.startswith("cuda") else "cpu"


def visible_gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_device_name(name: str) -> None:
    """Refuse a ``--device`` that no run could use, without importing torch (``--dry-run``
    plans without one, so ``resolve_device`` alone would let ``tpu:7`` through)."""
    import re

    if not re.fullmatch(r"auto|cpu|cuda(:\d{1,4})?", (name or "auto").strip().lower()):
        shown = name if len(name) <= 40 else name[:40] + "..."
        raise RkreproError(f"unknown device {shown!r}: use auto, cpu or cuda:N")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> the first GPU if there is one, else the CPU; ``cuda:N`` must exist."""
    import torch

    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RkreproError(f"unknown device {name!r}: use auto, cpu or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RkreproError(f"device {name} asked for, but CUDA is not available here")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise RkreproError(
                f"device {name} asked for, but there are {torch.cuda.device_count()} GPUs"
            )
        return torch.device("cuda", index)
    if device.type != "cpu":
        raise RkreproError(f"unsupported device {name!r}: use auto, cpu or cuda:N")
    return device


def in_torchrun() -> bool:
    """True inside a process started by torchrun (it sets RANK, WORLD_SIZE and LOCAL_RANK)."""
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def per_rank_batch(batch_size: int, world: int, what: str = "") -> int:
    """The paper's global batch split over ``world`` processes; it must divide evenly."""
    if world < 1:
        raise RkreproError(f"--nproc-per-node must be >= 1, got {world}")
    if batch_size % world:
        where = f" of {what}" if what else ""
        divisors = ", ".join(
            str(d) for d in range(1, min(batch_size, 64) + 1) if not batch_size % d
        )
        raise RkreproError(
            f"the batch size {batch_size}{where} does not divide over {world} processes: "
            f"pick --nproc-per-node among {divisors}"
        )
    return batch_size // world


# --------------------------------------------------------------------------------------------
# Plans.


# Identity entries of the data pipelines issue 13 made the Torch code's: CIFAR-100's own
# normalisation statistics (datasets/cifar100.lua) and fb.resnet.torch's ImageNet transforms
# (rkrepro.data.fb_transforms). CIFAR-10's pipeline did not change, so it adds nothing.
PIPELINE_IDENTITY: dict[str, dict[str, str]] = {
    "cifar100": {"normalisation": "densenet-cifar100.lua"},
    "imagenet": {"transforms": "fb.resnet.torch"},
}


def scale_milestones(
    milestones: tuple[int, ...], paper_epochs: int, epochs: int
) -> tuple[int, ...]:
    """Milestones of a shortened run of a table without an ``lr_schedule``: the same fractions
    of training, rounded half up (:func:`rkrepro.spec.scaled_milestones`)."""
    return scaled_milestones(milestones, paper_epochs, epochs)


@dataclass(frozen=True, kw_only=True)
class Plan:
    cell: Cell
    seed: int
    options: RunOptions
    protocol: Protocol  # effective: epochs and milestones of a shortened run
    precision: str = mlflow_keys.PRECISION_FP32  # see rkrepro.fast_path
    fast_path: str = "off"  # the switches in effect on the planned device (FastPath.describe)
    gpu_decode: bool = False  # ImageNet JPEGs decoded by nvJPEG: other pixels than PIL's

    @property
    def label(self) -> str:
        return f"{self.cell.key} seed {self.seed}"

    @property
    def shortened(self) -> bool:
        return self.protocol.epochs != self.cell.protocol.epochs or self.train_subset is not None

    @property
    def train_subset(self) -> int | None:
        return self.options.train_subset

    def identity(self) -> dict[str, Any]:
        """Everything that changes what is trained; the hash of this names the run."""
        p, o = self.protocol, self.options
        spec = asdict(self.cell.spec)
        # The stage wiring enters as a reading, and only where it changes the network, so
        # every configuration it cannot affect hashes as before readings existed.
        spec.pop("resnet_stages")
        training_readings = readings_mod.identity(self.cell.reading, self.cell.spec)
        return {
            "cell": self.cell.key,
            "spec": spec,
            **({"readings": training_readings} if training_readings else {}),
            "seed": self.seed,
            "protocol": {
                "dataset": p.dataset,
                "augmentation": p.augmentation,
                "batch_size": p.batch_size,
                "epochs": p.epochs,
                "lr": float(p.lr),
                "momentum": float(p.momentum),
                "weight_decay": float(p.weight_decay),
                "weight_decay_scope": "all parameters",
                "dampening": 0.0,
                "nesterov": p.nesterov,
                "lr_milestones": list(p.lr_milestones),
                "lr_gamma": float(p.lr_gamma),
                "train_subset": o.train_subset,
                # What issue 13 changed in the data pipelines (the LR rule shows in the
                # milestones): named, so runs trained before it never share a hash.
                **PIPELINE_IDENTITY.get(p.dataset, {}),
            },
            "memory_efficient": o.memory_efficient,
            "amp": o.amp,
            # Only when on, so the hashes (and runs) of every earlier configuration stay valid.
            # The number of GPUs is not identity: a run resumes on 1 GPU or on N.
            **({"sync_bn": True} if o.sync_bn else {}),
            # bf16 autocast changes the numbers, so a CUDA fast-path run and an fp32 run of a
            # cell are different runs. The other switches only remove overhead: not identity.
            **(
                {"precision": self.precision}
                if self.precision == mlflow_keys.PRECISION_BF16
                else {}
            ),
            **({"gpu_decode": True} if self.gpu_decode else {}),
        }

    @property
    def config_hash(self) -> str:
        text = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def protocol_kind(self) -> str:
        return mlflow_keys.PROTOCOL_SHORTENED if self.shortened else mlflow_keys.PROTOCOL_PAPER

    @property
    def readings(self) -> dict[str, str]:
        """Every reading that applies to this run, with the precision it actually trains in."""
        values = {**self.cell.reading, "precision": self.precision}
        return readings_mod.applicable(values, self.cell.spec)

    def config(self) -> dict[str, Any]:
        """The whole resolved configuration (MLflow params and the config artifact)."""
        config = self.identity()
        config["reading"] = self.readings
        config["config_hash"] = self.config_hash
        config["precision"] = self.precision
        config["fast_path"] = self.fast_path
        config["table"], config["row"] = self.cell.table, self.cell.row
        config["model"], config["share"] = self.cell.model, self.cell.share
        config["protocol"]["kind"] = self.protocol_kind
        config["protocol"]["paper_epochs"] = self.cell.protocol.epochs
        config["protocol"]["paper_lr_milestones"] = list(self.cell.protocol.lr_milestones)
        extra = {k: v for k, v in self.cell.protocol.extra.items() if _jsonable(v)}
        if extra:
            config["protocol"]["extra"] = extra
        config["reported"] = {
            "params_m": _num(self.cell.reported_params_m),
            "error": _num(self.cell.reported_error),
            "top5": _num(self.cell.reported_top5),
        }
        return config

    def tags(self) -> dict[str, str]:
        return {
            mlflow_keys.TAG_TABLE: self.cell.table,
            mlflow_keys.TAG_ROW: self.cell.row,
            mlflow_keys.TAG_MODEL: self.cell.model,
            mlflow_keys.TAG_SHARE: "true" if self.cell.share else "false",
            mlflow_keys.TAG_SEED: str(self.seed),
            mlflow_keys.TAG_PROTOCOL: self.protocol_kind,
            mlflow_keys.TAG_CONFIG_HASH: self.config_hash,
            mlflow_keys.TAG_PRECISION: self.precision,
            mlflow_keys.TAG_FAST_PATH: self.fast_path,
            **{readings_mod.TAG_PREFIX + k: v for k, v in self.readings.items()},
        }

    @property
    def run_name(self) -> str:
        """Short enough for the MLflow runs list (``1x8_1x2_1x2+share s0``); the row, model and
        seed are tags too, so the list can be filtered and grouped by them."""
        model = self.cell.model.removeprefix("RKNet-")
        short = " short" if self.shortened else ""
        return f"{model}{'+share' if self.cell.share else ''} s{self.seed}{short}"

    def dataset_info(self) -> dict[str, Any]:
        """Name, source and size of the training data, for MLflow's dataset input."""
        from rkrepro.data.check import CIFAR

        dataset = self.protocol.dataset
        name = dataset + (f"[{self.train_subset}]" if self.train_subset else "")
        origin = CIFAR[dataset].url if dataset in CIFAR else "ImageNet ILSVRC-2012 (local copy)"
        size = {"cifar10": 50_000, "cifar100": 50_000, "imagenet": 1_281_167}.get(dataset)
        train = min(size, self.train_subset) if size and self.train_subset else size
        return {
            "name": name,
            "source": json.dumps({"path": str(self.options.data_dir), "from": origin}),
            "profile": {"train_images": train, "epochs": self.protocol.epochs},
        }


def _num(value: float | None) -> float | None:
    return None if value is None else float(value)


def _jsonable(value: object) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def make_plans(
    cells: list[Cell], seeds: list[int], options: RunOptions, device_type: str | None = None
) -> list[Plan]:
    """Every (cell, seed) with its resolved configuration; ``device_type`` (``cpu``/``cuda``,
    default: from ``options.device``) decides the precision and fast path in effect."""
    fast = options.fast()  # a bad --fast-path fails here, before anything runs
    device_type = device_type or planned_device_type(options.device)
    precision = run_precision(fast, device_type, options.amp)
    on_device = fast.for_device(device_type)
    if options.epochs is not None and options.epochs < 1:
        raise RkreproError(f"--epochs must be >= 1, got {options.epochs}")
    if options.train_subset is not None and options.train_subset < 1:
        raise RkreproError(f"--train-subset must be >= 1, got {options.train_subset}")
    overrides = options.readings()
    plans = []
    for cell in cells:
        cell = with_readings(cell, overrides)
        paper = cell.protocol
        epochs = options.epochs or paper.epochs
        # The Torch code's rule where the table gives one (lr_schedule), else scaled milestones.
        protocol = replace(paper, epochs=epochs, lr_milestones=paper.milestones_for(epochs))
        effective = on_device.for_dataset(paper.dataset)
        plans += [
            Plan(
                cell=cell,
                seed=seed,
                options=options,
                protocol=protocol,
                precision=precision,
                fast_path=effective.describe(),
                gpu_decode=effective.gpu_decode,
            )
            for seed in seeds
        ]
    return plans


def parse_seeds(seeds: int | None, seed: list[int] | None) -> list[int]:
    """``--seeds N`` -> 0..N-1; ``--seed S`` (repeatable) -> those; neither -> [0]."""
    if seeds is not None and seed:
        raise RkreproError("use either --seeds N or --seed S, not both")
    if seed:
        for value in seed:
            if not 0 <= value < 2**32:  # what numpy and torch accept as a seed
                raise RkreproError(f"--seed must be in [0, 2^32), got {value}")
        return list(dict.fromkeys(seed))
    if seeds is not None:
        if not 1 <= seeds <= MAX_SEEDS:
            raise RkreproError(f"--seeds must be between 1 and {MAX_SEEDS}, got {seeds}")
        return list(range(seeds))
    return [0]
