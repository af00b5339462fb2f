"""The fields each part of a table file takes, and the checks every field goes through: one
error line naming file, place and field.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

from rkrepro.errors import TableError
from rkrepro.paper.limits import (
    LIMITS,
    MAX_ID,
    MAX_LAYERS,
    MAX_PARAMS,
    MAX_ROWS,
    MAX_TEXT,
    short_repr,
)

PROTOCOL_KEYS: dict[str, tuple[type, ...]] = {
    "dataset": (str,),
    "augmentation": (str,),
    "batch_size": (int,),
    "epochs": (int,),
    "lr": (float, int),
    "momentum": (float, int),
    "weight_decay": (float, int),
    "lr_milestones": (list,),
    "lr_gamma": (float, int),
    "nesterov": (bool,),
    "lr_schedule": (dict,),
}
PROTOCOL_REQUIRED = (
    "dataset",
    "batch_size",
    "epochs",
    "lr",
    "momentum",
    "weight_decay",
)
SCHEDULE_KEYS: dict[str, tuple[type, ...]] = {"drop_at": (list,), "drop_every": (int,)}
STAR_KEYS: dict[str, tuple[type, ...]] = {
    "note": (str,),
    "batch_size": (int,),
    "epochs": (int,),
    "lr_milestones": (list,),
}
TABLE_KEYS: dict[str, tuple[type, ...]] = {
    "id": (str,),
    "title": (str,),
    "caption": (str,),
    "dataset": (str,),
    "protocol": (dict,),
    "star_protocol": (dict,),
    "rows": (list,),
    "readings": (dict,),
    "claims": (list,),
}
ROW_KEYS: dict[str, tuple[type, ...]] = {
    "id": (str,),
    "label": (str,),
    "family": (str,),
    "depth": (int,),
    "growth_rate": (int,),
    "bottleneck": (bool,),
    "compression": (float, int),
    "m": (list,),
    "original": (dict,),
    "variants": (list,),
    "readings": (dict,),
}
REPORTED_KEYS: dict[str, tuple[type, ...]] = {
    "params_m": (float, int),
    "error": (float, int),
    "top1": (float, int),
    "top5": (float, int),
    "bold": (bool,),
    "star": (bool,),
}
VARIANT_KEYS: dict[str, tuple[type, ...]] = {
    **REPORTED_KEYS,
    "name": (str,),
    "share": (dict,),
    "params_equal_original": (bool,),
}
FAMILIES = ("densenet", "densenet-bc", "resnet")
ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9.-]*$")
CLAIM_KEYS: dict[str, tuple[type, ...]] = {
    "id": (str,),
    "section": (str,),
    "text": (str,),
    "quantity": (str, list),
    "relation": (str,),
    "left": (dict,),
    "right": (dict,),
    "pairs": (str,),
    "factor": (float, int),
    "margin": (float, int),
}
SELECTOR_KEYS: dict[str, tuple[type, ...]] = {
    "tables": (list,),
    "model": (str,),
    "share": (bool,),
    "family": (str,),
    "bold": (bool,),
}


def check_id_length(value: str, where: Where, what: str) -> None:
    """Ids become folder and file names (``runs/logs/TABLE/ROW/...``), where the system's
    limit is 255 bytes per name: a longer id would stop the local queue mid-launch."""
    if len(value) > MAX_ID:
        raise where.fail(
            f"{what} {short_repr(value)} is {len(value)} characters long; at most {MAX_ID} "
            f"(rkrepro's limit: ids name folders and files)"
        )


class Where:
    """Accumulates 'file, row X, variant Y' so every error says where it is."""

    def __init__(self, source: Path, *parts: str) -> None:
        self.source = source
        self.parts = parts

    def at(self, part: str) -> Where:
        return Where(self.source, *self.parts, part)

    def fail(self, message: str) -> TableError:
        place = ", ".join((str(self.source), *self.parts))
        return TableError(f"{place}: {message}")


def check_mapping(
    data: Any,
    keys: dict[str, tuple[type, ...]],
    where: Where,
    required: tuple[str, ...] = (),
    what: str = "entry",
) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise where.fail(f"expected a mapping for {what}, got {type(data).__name__}")
    for key, value in data.items():
        if key not in keys:
            close = difflib.get_close_matches(str(key), keys, n=1)
            hint = f" (did you mean {short_repr(close[0])}?)" if close else ""
            raise where.fail(f"unknown field {short_repr(key)}{hint}")
        if value is None:
            continue
        types = keys[key]
        # bool is an int in Python; a number field must not accept true/false.
        if isinstance(value, bool) and bool not in types:
            raise where.fail(f"field {short_repr(key)} must be {_type_names(types)}, got a boolean")
        if not isinstance(value, types):
            raise where.fail(
                f"field {short_repr(key)} must be {_type_names(types)}, "
                f"got {type(value).__name__} {short_repr(value)}"
            )
        if isinstance(value, int) and key in LIMITS and value > LIMITS[key]:
            raise where.fail(
                f"field {short_repr(key)} is at most {LIMITS[key]} (rkrepro's limit), "
                f"got {short_repr(value)}"
            )
        if isinstance(value, str) and len(value) > MAX_TEXT:
            raise where.fail(f"field {short_repr(key)} is longer than {MAX_TEXT} characters")
        if isinstance(value, list) and len(value) > MAX_ROWS:
            raise where.fail(f"field {short_repr(key)} has more than {MAX_ROWS} entries")
    for key in required:
        if data.get(key) is None:
            raise where.fail(f"missing required field {short_repr(key)}")
    return data


def check_size(where: Where, what: str, size: tuple[int, int]) -> None:
    layers, params = size
    if layers > MAX_LAYERS:
        raise where.fail(
            f"{what} has {layers} layers/blocks; rkrepro builds at most {MAX_LAYERS} per model"
        )
    if params > MAX_PARAMS:
        raise where.fail(
            f"{what} would have about {params / 1e9:.3g}G parameters; rkrepro builds at most "
            f"{MAX_PARAMS / 1e9:g}G per model"
        )


def _type_names(types: tuple[type, ...]) -> str:
    names = {float: "a number", int: "an integer", str: "a string", bool: "true/false"}
    names.update({list: "a list", dict: "a mapping"})
    if float in types:  # an integer is a number too
        types = tuple(t for t in types if t is not int)
    return " or ".join(dict.fromkeys(names[t] for t in types))


def get_or_default(data: dict[str, Any], key: str, default: Any) -> Any:
    """``data[key]``, with an explicit null meaning "not given"."""
    value = data.get(key)
    return default if value is None else value
