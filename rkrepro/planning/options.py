"""What ``rkrepro run`` asks for beyond the cells and the launcher, and the seeds.

Adding a ``run`` flag means the option in :mod:`rkrepro.cli.run`, a :class:`RunOptions` field of
the same name (which every launched job then repeats by itself) and, if it changes what is
trained, :meth:`rkrepro.planning.plan.Plan.identity`. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rkrepro.errors import RkreproError
from rkrepro.paper import readings as readings_mod
from rkrepro.paths import default_data_dir, resolve_tracking_uri
from rkrepro.planning import precision as precision_mod
from rkrepro.planning.fast_path import FastPath

# A typo like --seeds 1000000 must not queue a million runs.
MAX_SEEDS = 100


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
    precision: str = precision_mod.DEFAULT  # --precision fp32|tf32|bf16|fp16
    force: bool = False
    data_dir: Path = field(default_factory=default_data_dir, metadata={"arg": _absolute})
    device: str = field(default="auto", metadata={"job": False})
    tracking_uri: str | None = field(default=None, metadata={"arg": resolve_tracking_uri})
    tables_dir: Path | None = field(default=None, metadata={"arg": _absolute})
    workers: int = 8
    sync_bn: bool = False
    fast_path: str | None = None  # --fast-path; None: $RKREPRO_FAST_PATH, else the defaults
    reading: tuple[str, ...] = ()  # --reading NAME=VALUE (repeatable), see rkrepro.paper.readings

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> RunOptions:
        """The options among ``values`` (e.g. a command's arguments); ``None`` keeps a default."""
        chosen = {f.name: values[f.name] for f in fields(cls) if values.get(f.name) is not None}
        if isinstance(chosen.get("reading"), list):
            chosen["reading"] = tuple(chosen["reading"])
        return cls(**chosen)

    def readings(self) -> dict[str, str]:
        """The checked ``--reading`` overrides. ``precision`` is not one: it is ``--precision``
        (and recorded as the run's reading)."""
        overrides = readings_mod.parse_overrides(self.reading)
        if "precision" in overrides:
            raise RkreproError(
                "--reading precision=... is not how a run chooses its arithmetic: use "
                "--precision fp32|tf32|bf16|fp16; every run records the precision it trained in"
            )
        return overrides

    def recorded_precision(self) -> str:
        """The precision asked for, as runs record it (``bf16`` -> ``bf16-autocast``)."""
        return precision_mod.parse(self.precision)

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
