"""Measured training throughputs that ``rkrepro plan`` and ``run --dry-run`` prefer to the
assumed-FLOPs estimate.

``rkrepro/calibration.yaml`` holds, per device name (``torch.cuda.get_device_name()``) and
model family, the images/s that ``bench/throughput.py`` measured for arm T (the default fast
path) at a batch size; ``bench/gpu_check.sh`` writes a ready-to-commit snippet. Torch-free, so a
plan can consult it before anything heavy loads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rkrepro.errors import RkreproError
from rkrepro.planning.precision import parse as parse_precision

CALIBRATION_FILE = Path(__file__).with_name("calibration.yaml")
CALIBRATION_FILE_ENV = "RKREPRO_CALIBRATION_FILE"  # another file (tests, a site's own figures)
_ENTRY_KEYS = {"depth", "growth_rate", "batch", "images_per_s", "forward_flops"}


@dataclass(frozen=True)
class Entry:
    """One measurement: a model of ``family`` at ``batch`` trained at ``images_per_s``."""

    device: str
    family: str
    depth: int
    growth_rate: int | None
    batch: int
    images_per_s: float
    forward_flops: int  # per image, as rkrepro.models.count_flops counts it
    precision: str = "bf16-autocast"  # as runs record it (``bf16`` in the file means this)
    note: str = ""


@dataclass(frozen=True)
class Throughput:
    """A looked-up rate and where it came from (shown next to the GPU-hours)."""

    images_per_s: float
    source: str
    exact: bool


def load(path: Path | None = None) -> list[Entry]:
    """Every entry of the calibration file; one clear line if it is malformed."""
    import os

    import yaml

    path = Path(path or os.environ.get(CALIBRATION_FILE_ENV) or CALIBRATION_FILE)
    if not path.is_file():
        return []
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise RkreproError(f"calibration file {path} is not valid YAML ({error})") from None
    devices = (doc.get("devices") or {}) if isinstance(doc, dict) else None
    if not isinstance(devices, dict):
        raise RkreproError(f"calibration file {path}: 'devices' must map device names to families")
    entries = []
    for device, families in devices.items():
        if not isinstance(families, dict | None):
            raise RkreproError(f"calibration file {path}: {device} must map families to lists")
        for family, rows in (families or {}).items():
            for row in rows or []:
                if not isinstance(row, dict) or not set(row) >= _ENTRY_KEYS:
                    raise RkreproError(
                        f"calibration file {path}: {device}/{family} entry {row!r} needs "
                        + ", ".join(sorted(_ENTRY_KEYS))
                    )
                try:
                    entries.append(
                        Entry(
                            device=str(device),
                            family=str(family),
                            depth=int(row["depth"]),
                            growth_rate=None
                            if row["growth_rate"] is None
                            else int(row["growth_rate"]),
                            batch=int(row["batch"]),
                            images_per_s=float(row["images_per_s"]),
                            forward_flops=int(row["forward_flops"]),
                            precision=parse_precision(str(row.get("precision", "bf16"))),
                            note=str(row.get("note", "")),
                        )
                    )
                except (TypeError, ValueError, RkreproError) as error:
                    raise RkreproError(
                        f"calibration file {path}: {device}/{family} entry {row!r}: {error}"
                    ) from None
    return entries


def lookup(
    entries: list[Entry],
    device: str,
    family: str,
    depth: int,
    growth_rate: int | None,
    batch: int,
    forward_flops: int,
    precision: str = "bf16",
) -> Throughput | None:
    """The measured rate of this model on ``device``, else one scaled by FLOPs from the
    nearest (FLOPs ratio) measured model of the same family, batch and precision (``bf16`` and
    ``bf16-autocast`` are one), else None (the caller falls back to the roofline)."""
    precision = parse_precision(precision)
    same = [
        e
        for e in entries
        if e.device.lower() == device.lower()
        and e.family == family
        and e.batch == batch
        and e.precision == precision
    ]
    for e in same:
        # The FLOPs tell an RKNet variant from the original of the same depth.
        same_flops = abs(e.forward_flops - forward_flops) <= 0.005 * max(forward_flops, 1)
        if e.depth == depth and e.growth_rate == growth_rate and same_flops:
            return Throughput(e.images_per_s, f"measured on {e.device}", True)
    if not same or forward_flops <= 0:
        return None
    near = min(same, key=lambda e: abs(math.log(e.forward_flops / forward_flops)))
    rate = near.images_per_s * near.forward_flops / forward_flops
    # Small models are overhead-bound: never project faster than the fastest measured one.
    rate = min(rate, max(e.images_per_s for e in same))
    k = f" k{near.growth_rate}" if near.growth_rate else ""
    return Throughput(
        rate, f"scaled by FLOPs from {family} d{near.depth}{k} on {near.device}", False
    )


def snippet(records: list[dict[str, Any]]) -> str:
    """YAML for ``calibration.yaml`` from ``bench/throughput.py --json`` records (arm T)."""
    import yaml

    devices: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for r in records:
        if r.get("arm") != "T":
            continue
        row = {k: r[k] for k in ("depth", "growth_rate", "batch", "images_per_s", "forward_flops")}
        row["images_per_s"] = round(float(row["images_per_s"]), 1)
        row["precision"] = r.get("precision", "bf16")
        row["note"] = r.get("note", "")
        devices.setdefault(r["device_name"], {}).setdefault(r["family"], []).append(row)
    return yaml.safe_dump({"devices": devices}, sort_keys=False)
