"""The GPUs a plan can be made for without one: published peak rates and bandwidth, each with
its source (``gpus.yaml`` beside this module), and lookup by the name a user types or the name
``torch.cuda.get_device_name()`` reports. Torch-free.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from rkrepro.errors import RkreproError
from rkrepro.tracking.keys import PRECISION_BF16, PRECISION_FP16_AMP, PRECISION_FP32, PRECISION_TF32

GPUS_FILE = Path(__file__).with_name("gpus.yaml")
# The GPU a plan is for when it names none and none is here: the paper's campaign is most
# likely run on one of these today.
DEFAULT_GPU = "h100"
# The rate key of ``tflops`` each recorded precision runs its convolutions at.
_RATE_KEY = {
    PRECISION_FP32: "fp32",
    PRECISION_TF32: "tf32",
    PRECISION_BF16: "bf16",
    PRECISION_FP16_AMP: "fp16",
}


@dataclass(frozen=True)
class Gpu:
    """One GPU of the table: peak dense rates in TFLOP/s per precision (None: no such tensor
    cores), memory bandwidth in GB/s and memory in GB, and where the figures come from."""

    id: str
    name: str
    aliases: tuple[str, ...]
    names: tuple[str, ...]  # torch.cuda.get_device_name() of this GPU
    memory_gb: float
    bandwidth_gbs: float
    tflops: tuple[tuple[str, float | None], ...]
    source: str
    url: str

    def peak_tflops(self, precision: str) -> tuple[float, str]:
        """(peak TFLOP/s of the convolutions in ``precision``, what rate that is)."""
        key = _RATE_KEY.get(precision, "fp32")
        rates = dict(self.tflops)
        rate = rates.get(key)
        if rate is None:
            return float(rates["fp32"]), f"no {key} tensor cores: fp32 rate"
        return float(rate), key

    def matches(self, text: str) -> bool:
        wanted = _key(text)
        return wanted in {_key(n) for n in (self.id, *self.aliases, *self.names)}


def _key(text: str) -> str:
    """``NVIDIA GeForce RTX 4090`` and ``rtx-4090`` -> ``rtx4090``: case, spaces, dashes and
    the vendor and family words do not tell GPUs apart."""
    text = re.sub(r"\b(nvidia|geforce|tesla)\b", "", text.lower())
    return re.sub(r"[^a-z0-9]", "", text)


@cache
def load(path: Path = GPUS_FILE) -> tuple[Gpu, ...]:
    """Every GPU of the table (a file shipped with rkrepro, so a defect is a bug: it raises)."""
    import yaml

    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    return tuple(
        Gpu(
            id=str(g["id"]),
            name=str(g["name"]),
            aliases=tuple(str(a) for a in g.get("aliases") or ()),
            names=tuple(str(n) for n in g.get("names") or ()),
            memory_gb=float(g["memory_gb"]),
            bandwidth_gbs=float(g["bandwidth_gbs"]),
            tflops=tuple(
                (k, None if v is None else float(v)) for k, v in dict(g["tflops"]).items()
            ),
            source=str(g["source"]),
            url=str(g["url"]),
        )
        for g in doc["gpus"]
    )


def find(name: str) -> Gpu:
    """The GPU ``--gpu NAME`` means; an unknown name is one line with the closest names."""
    for gpu in load():
        if gpu.matches(name):
            return gpu
    ids = [gpu.id for gpu in load()]
    shown = ascii(name)[1:-1][:40]
    wanted = _key(name)
    # The ids that contain what was typed (a100 -> both A100s) first, then similar spellings.
    close = [i for i in ids if wanted and wanted in _key(i)]
    close += [i for i in difflib.get_close_matches(wanted, ids, n=3, cutoff=0.6) if i not in close]
    hint = f"did you mean {', '.join(close[:3])}?" if close else f"known: {', '.join(ids)}"
    raise RkreproError(f"--gpu {shown}: unknown GPU; {hint}")


def for_device(device_name: str) -> Gpu | None:
    """The table's entry for a GPU by the name torch reports, if the table has it."""
    return next((gpu for gpu in load() if gpu.matches(device_name)), None)
