"""What ``rkrepro run`` will train: one *plan* per (cell, seed), with every decision about how
it trains taken here, once: the effective protocol, the device type, the precision, the fast
path in effect there and the share of the batch each process trains.

A plan's identity (what changes what is trained) is hashed; the hash names its checkpoint folder
and tags its MLflow run, so reruns find their own work and different configurations (a
shortened protocol, --memory-efficient, another precision) never mix.

Nothing here imports torch: the CLI, the launchers and the estimates read plans without paying
for it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

from rkrepro.errors import RkreproError
from rkrepro.paper import readings as readings_mod
from rkrepro.paper import with_readings
from rkrepro.planning import precision as precision_mod
from rkrepro.planning.devices import per_rank_batch, planned_device_type
from rkrepro.planning.fast_path import FastPath
from rkrepro.planning.options import RunOptions
from rkrepro.spec import Protocol, scaled_milestones
from rkrepro.tracking import keys as mlflow_keys

if TYPE_CHECKING:
    from rkrepro.paper import Cell


# Identity entries of the data pipelines that follow the Torch code: CIFAR-100's own
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
    device_type: str = "cpu"  # "cpu" or "cuda": where the run trains
    precision: str = mlflow_keys.PRECISION_FP32  # see rkrepro.planning.precision
    fast: FastPath = FastPath.off()  # the switches in effect on that device and data set
    processes: int = 1  # data-parallel processes (torchrun) that share each batch

    @property
    def fast_path(self) -> str:
        """The switches in effect, as runs record them (``channels_last,cpu_malloc``)."""
        return self.fast.describe()

    @property
    def gpu_decode(self) -> bool:
        """ImageNet JPEGs decoded by nvJPEG: other pixels than PIL's, so identity."""
        return self.fast.gpu_decode

    @property
    def batch_per_process(self) -> int:
        """Each process's share of the paper's global batch (checked to divide when planned)."""
        return self.protocol.batch_size // self.processes

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
                # The Torch-exact data pipelines (the LR rule shows in the milestones):
                # named, so runs trained before them never share a hash.
                **PIPELINE_IDENTITY.get(p.dataset, {}),
            },
            "memory_efficient": o.memory_efficient,
            # The precision changes the numbers; the fast path's switches only remove
            # overhead and are not identity (gpu_decode apart: other pixels).
            **precision_mod.identity(self.precision),
            # Only when on, so the hashes (and runs) of every earlier configuration stay valid.
            # The number of GPUs is not identity: a run resumes on 1 GPU or on N.
            **({"sync_bn": True} if o.sync_bn else {}),
            **({"gpu_decode": True} if self.gpu_decode else {}),
        }

    @cached_property
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
        """What the MLflow runs list shows of this run: its row, model and seed, and each choice
        that makes it another run than the paper-protocol fp32 one (``densenet-bc-k12
        1x8_1x2_1x2+share s0``, ``resnet-56 3x3_4x2_4x2 s1 euler bf16 2ep 512img``): two runs of
        a table's experiment never look alike. Row, model and seed are tags too, for filtering."""
        model = self.cell.model.removeprefix("RKNet-") + ("+share" if self.cell.share else "")
        parts = [self.cell.row, model, f"s{self.seed}"]
        parts += readings_mod.identity(self.cell.reading, self.cell.spec).values()
        if self.precision != mlflow_keys.PRECISION_FP32:
            parts.append(self.precision)
        if self.protocol.epochs != self.cell.protocol.epochs:
            parts.append(f"{self.protocol.epochs}ep")
        if self.train_subset is not None:
            parts.append(f"{self.train_subset}img")
        if self.options.memory_efficient:
            parts.append("mem-eff")
        if self.options.sync_bn:
            parts.append("sync-bn")
        if self.gpu_decode:
            parts.append("gpu-decode")
        return " ".join(str(part) for part in parts)

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
    cells: list[Cell],
    seeds: list[int],
    options: RunOptions,
    device_type: str | None = None,
    processes: int = 1,
) -> list[Plan]:
    """Every (cell, seed) with its resolved configuration. ``device_type`` (``cpu``/``cuda``,
    default: from ``options.device``) is where the runs will train and ``processes`` how many
    data-parallel processes share each batch; a bad option, a precision the device lacks or a
    batch that does not split is one clear error here, before anything runs."""
    fast = options.fast()
    device_type = device_type or planned_device_type(options.device)
    precision = options.recorded_precision()
    precision_mod.check_device(precision, device_type)
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
        per_rank_batch(paper.batch_size, processes, cell.key)
        epochs = options.epochs or paper.epochs
        # The Torch code's rule where the table gives one (lr_schedule), else scaled milestones.
        protocol = replace(paper, epochs=epochs, lr_milestones=paper.milestones_for(epochs))
        plans += [
            Plan(
                cell=cell,
                seed=seed,
                options=options,
                protocol=protocol,
                device_type=device_type,
                precision=precision,
                fast=on_device.for_dataset(paper.dataset),
                processes=processes,
            )
            for seed in seeds
        ]
    return plans
