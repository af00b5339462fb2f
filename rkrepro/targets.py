"""The paper's tables as validated data: ``tables/*.yaml`` -> :class:`Table` -> :class:`Cell`.

A *cell* is one thing that can be trained and compared with the paper: a row's original network
or one RKNet variant, with or without weight sharing. Everything downstream (models, training,
tracking, reports) works on cells, so this module is the single place that knows the YAML layout.

Torch-free on purpose: ``rkrepro list`` must answer in well under a second.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from rkrepro import readings as readings_mod
from rkrepro.errors import TargetError
from rkrepro.spec import NUM_CLASSES, LrSchedule, ModelSpec, Protocol, variant_name
from rkrepro.textsafe import clean

TABLES_DIR_ENV = "RKREPRO_TABLES_DIR"
SHARE_CHOICES = ("both", "share", "no-share")

# Limits on what a tables folder may hold. A table file is data from wherever the folder came
# from, and ``list``/``params``/``plan``/``report`` read every file: each limit keeps a hostile
# or broken file to one error line in bounded time and memory. Each is far above every cell of
# the paper's tables (largest: 4.3 KB file, depth 292, growth rate 48, m 66, s 21, r 24,
# 170 growth layers, batch 256, 300 epochs), and each error states its limit.
MAX_TABLE_BYTES = 1 << 20  # 1 MiB
MAX_NESTING = 32  # nested mappings/lists
MAX_TEXT = 10_000  # characters of a title, caption, label or note
MAX_ID = 100  # characters of a table, row or claim id: ids name folders and files (job logs)
MAX_ROWS = 1_000  # rows of a table, variants of a row
LIMITS: dict[str, int] = {
    "depth": 2_000,
    "growth_rate": 256,
    "m": 512,  # each state width
    "batch_size": 65_536,
    "epochs": 100_000,
}
MAX_STAGES = 64  # s of one period
MAX_STEPS = 64  # r of one period
MAX_LAYERS = 2_000  # growth layers (DenseNet) or blocks (ResNet) of one model
MAX_PARAMS = 2_000_000_000  # the upper estimate of one model's parameters


def _short(value: Any) -> str:
    """A bounded ``repr`` for error messages: a value from a file may be a megabyte string or
    an alias bomb whose full repr would not fit in memory."""
    import reprlib

    shortener = reprlib.Repr()
    shortener.maxlevel, shortener.maxstring, shortener.maxother = 2, 60, 60
    shortener.maxlist = shortener.maxtuple = shortener.maxdict = shortener.maxset = 4
    shortener.maxlong = 40
    try:
        return shortener.repr(value)
    except Exception:  # noqa: BLE001 - e.g. an int too long to print
        return f"<{type(value).__name__}>"


# --------------------------------------------------------------------------------------------
# Printed numbers keep their precision: 0.75 is not 0.8, and 1.0 is not 1.00.


class Printed(float):
    """A reported number that remembers how many decimals the paper printed."""

    decimals: int

    def __new__(cls, value: float, decimals: int) -> Printed:
        number = super().__new__(cls, value)
        number.decimals = decimals
        return number

    def __repr__(self) -> str:
        return f"{float(self):.{self.decimals}f}"

    @classmethod
    def parse(cls, text: str) -> Printed:
        """``"0.75"`` -> 0.75 printed with 2 decimals."""
        return cls(float(text), len(text.strip().partition(".")[2]))

    def interval(self) -> tuple[Fraction, Fraction]:
        """Half-open interval of true values that print as this number (exact, round half up)."""
        half = Fraction(1, 2 * 10**self.decimals)
        value = Fraction(repr(self))
        return value - half, value + half

    def matches_count(self, count: int, unit: int = 10**6) -> bool:
        """Whether ``count`` (e.g. parameters) prints as this number of ``unit``s: the one
        rounding rule for every "does it match the paper" check."""
        low, high = self.interval()
        return low <= Fraction(count, unit) < high


class _TableLoader(yaml.SafeLoader):
    """SafeLoader whose numbers become :class:`Printed`, whose keys must be unique and
    hashable, and whose documents nest at most :data:`MAX_NESTING` levels (the composer and
    constructor recurse: 100k levels would be a RecursionError)."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_NESTING:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"nested more than {MAX_NESTING} levels deep",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _construct_number(loader: _TableLoader, node: yaml.ScalarNode) -> Printed:
    text = loader.construct_scalar(node)
    value = yaml.SafeLoader.construct_yaml_float(loader, node)
    mantissa = str(text).lower().split("e")[0]
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    return Printed(value, decimals)


def _construct_mapping(loader: _TableLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, f"a {type(key).__name__} cannot be a key", key_node.start_mark
            ) from None
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {_short(key)}", key_node.start_mark
            )
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_TableLoader.add_constructor("tag:yaml.org,2002:float", _construct_number)
_TableLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,  # type: ignore[arg-type]
)


# --------------------------------------------------------------------------------------------
# Variant names.

_PART = re.compile(r"^(\d{1,9})[x×*](\d{1,9})$")


def normalise_name(name: str) -> str:
    """Canonical, typable spelling: ``RKNet-1×8_1×2_1×2`` -> ``RKNet-1x8_1x2_1x2``."""
    return variant_name(parse_variant_name(name))


def parse_variant_name(name: str) -> tuple[tuple[int, int], ...]:
    """``RKNet-3×2_4×1`` (either spelling, prefix optional) -> ``((3, 2), (4, 1))``."""
    text = name.strip().replace(" ", "").replace("\u00d7", "x").replace("X", "x")
    if text.lower().startswith("rknet-"):
        text = text[len("rknet-") :]
    parts = []
    for part in text.split("_"):
        match = _PART.match(part)
        if not match:
            raise TargetError(
                f"cannot parse variant name {_short(name)}: expected RKNet-SxR_SxR_... "
                "(e.g. RKNet-1x8_1x2_1x2)"
            )
        s, r = int(match.group(1)), int(match.group(2))
        if s < 1 or r < 1:
            raise TargetError(f"variant {_short(name)}: stages s and time-steps r must be >= 1")
        if s > MAX_STAGES or r > MAX_STEPS:
            raise TargetError(
                f"variant {_short(name)}: at most {MAX_STAGES} stages s and {MAX_STEPS} "
                "time-steps r per period"
            )
        if len(parts) >= 8:
            raise TargetError(f"variant {_short(name)}: more than 8 periods")
        parts.append((s, r))
    return tuple(parts)


def format_variant_name(periods: tuple[tuple[int, int], ...], ascii_x: bool = True) -> str:
    return variant_name(periods, "x" if ascii_x else "\u00d7")


# --------------------------------------------------------------------------------------------
# The data model.


@dataclass(frozen=True)
class Reported:
    """The numbers the paper printed for one model cell (``None`` where it printed "-")."""

    params_m: Printed | None = None
    error: Printed | None = None  # CIFAR error %, or ImageNet top-1 %
    top5: Printed | None = None
    bold: bool = False
    star: bool = False

    @property
    def printed(self) -> bool:
        return any(v is not None for v in (self.params_m, self.error, self.top5))


@dataclass(frozen=True)
class Variant:
    name: str  # canonical ASCII spelling, RKNet-1x8_1x2_1x2
    printed_name: str  # as in the YAML, usually with ×
    periods: tuple[tuple[int, int], ...]
    reported: Reported
    share: Reported | None  # None: the paper has no "with share" cell for it
    params_equal_original: bool = False


@dataclass(frozen=True)
class Row:
    id: str
    label: str
    family: str
    depth: int
    growth_rate: int | None
    bottleneck: bool
    compression: float
    m: tuple[int, ...] | None
    original: Reported
    variants: tuple[Variant, ...]
    readings: tuple[tuple[str, str], ...] = ()  # the row's overrides of the table's readings

    @property
    def aliases(self) -> tuple[str, ...]:
        """Other ids that reach this row (the full ``family-kK-dD`` form for DenseNets)."""
        if self.growth_rate is None:
            return ()
        full = f"{self.family}-k{self.growth_rate}-d{self.depth}"
        return () if full == self.id else (full,)


@dataclass(frozen=True)
class Table:
    id: str
    title: str
    caption: str
    dataset: str
    protocol: Protocol
    star_protocol: Protocol | None
    star_note: str | None
    rows: tuple[Row, ...]
    source: Path
    readings: tuple[tuple[str, str], ...] = ()  # the table's readings (defaults filled in)
    claims: tuple[ClaimSpec, ...] = ()

    @property
    def metric_columns(self) -> tuple[str, ...]:
        return ("top1", "top5") if self.dataset == "imagenet" else ("error",)


@dataclass(frozen=True)
class Cell:
    """One trainable, comparable model: (table, row, model, share)."""

    table: str
    row: str
    model: str  # "original" or canonical variant name
    share: bool
    spec: ModelSpec
    protocol: Protocol
    reported_params_m: Printed | None
    reported_error: Printed | None
    reported_top5: Printed | None
    bold: bool = False
    star: bool = False
    printed_model: str = field(default="original", compare=False)
    params_equal_original: bool = field(default=False, compare=False)
    # Every reading (rkrepro.readings) with its value for this cell; ``spec`` follows it.
    readings: tuple[tuple[str, str], ...] = tuple(readings_mod.DEFAULTS.items())

    @property
    def key(self) -> str:
        return cell_key(self.table, self.row, self.model, self.share)

    @property
    def reading(self) -> dict[str, str]:
        """name -> value of every reading of this cell."""
        return dict(self.readings)

    def applicable_readings(self) -> dict[str, str]:
        """The readings that can change anything for this cell's model."""
        return readings_mod.applicable(self.reading, self.spec)


def with_readings(cell: Cell, overrides: dict[str, str]) -> Cell:
    """``cell`` under ``overrides`` (checked names and values, e.g. from ``--reading``)."""
    if not overrides:
        return cell
    merged = {**cell.reading, **overrides}
    spec = replace(cell.spec, resnet_stages=merged["resnet_stages"])
    return replace(cell, spec=spec, readings=tuple(merged.items()))


def cell_key(table: str, row: str, model: str, share: bool) -> str:
    """The one spelling of a cell's identity: ``table1/densenet-bc-k12/original/noshare``."""
    return f"{table}/{row}/{model}/{'share' if share else 'noshare'}"


# --------------------------------------------------------------------------------------------
# Claims: the paper's statements about its tables, each a comparison between two sets of cells.

CLAIM_MODELS = ("any", "original", "variant", "one-stage", "multi-stage")
CLAIM_QUANTITIES = ("params", "error", "gap")  # gap: error minus the row original's error
CLAIM_RELATIONS = ("less", "greater")
CLAIM_PAIRS = ("row", "model", "all")


@dataclass(frozen=True)
class CellSelector:
    """Which cells one side of a claim ranges over; ``None`` fields match anything."""

    tables: tuple[str, ...]
    model: str = "any"
    share: bool | None = None
    family: str | None = None
    bold: bool | None = None

    def matches(self, cell: Cell, family: str) -> bool:
        if cell.table not in self.tables:
            return False
        if self.share is not None and cell.share != self.share:
            return False
        if self.family is not None and family != self.family:
            return False
        if self.bold is not None and cell.bold != self.bold:
            return False
        return _model_kind_matches(self.model, cell)


def _model_kind_matches(kind: str, cell: Cell) -> bool:
    periods = cell.spec.periods
    if kind == "any":
        return True
    if kind == "original":
        return periods is None
    if periods is None:
        return False
    one_stage = all(s == 1 for s, _ in periods)
    return kind == "variant" or (kind == "one-stage") == one_stage


@dataclass(frozen=True)
class ClaimSpec:
    """``left <relation> right * factor (+/- margin)`` for every pair of cells the pairing
    forms, on each ``quantities`` (all must hold). Declarative so that the paper's numbers
    and the reproduction are judged by the same predicate."""

    id: str
    table: str  # the file it is written in
    section: str
    text: str
    quantities: tuple[str, ...]
    relation: str
    left: CellSelector
    right: CellSelector
    pairs: str = "row"
    factor: float = 1.0
    margin: float = 0.0  # percentage points (errors) or millions (parameters)

    @property
    def tables(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.left.tables, *self.right.tables)))


# --------------------------------------------------------------------------------------------
# Validation: a tiny schema, one error line naming file, place and field.

_PROTOCOL_KEYS: dict[str, tuple[type, ...]] = {
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
_PROTOCOL_REQUIRED = (
    "dataset",
    "batch_size",
    "epochs",
    "lr",
    "momentum",
    "weight_decay",
)
_SCHEDULE_KEYS: dict[str, tuple[type, ...]] = {"drop_at": (list,), "drop_every": (int,)}
_STAR_KEYS: dict[str, tuple[type, ...]] = {
    "note": (str,),
    "batch_size": (int,),
    "epochs": (int,),
    "lr_milestones": (list,),
}
_TABLE_KEYS: dict[str, tuple[type, ...]] = {
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
_ROW_KEYS: dict[str, tuple[type, ...]] = {
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
_REPORTED_KEYS: dict[str, tuple[type, ...]] = {
    "params_m": (float, int),
    "error": (float, int),
    "top1": (float, int),
    "top5": (float, int),
    "bold": (bool,),
    "star": (bool,),
}
_VARIANT_KEYS: dict[str, tuple[type, ...]] = {
    **_REPORTED_KEYS,
    "name": (str,),
    "share": (dict,),
    "params_equal_original": (bool,),
}
FAMILIES = ("densenet", "densenet-bc", "resnet")
_ID = re.compile(r"^[a-z0-9][a-z0-9.-]*$")


def _check_id_length(value: str, where: _Where, what: str) -> None:
    """Ids become folder and file names (``runs/logs/TABLE/ROW/...``), where the system's
    limit is 255 bytes per name: a longer id would stop the local queue mid-launch."""
    if len(value) > MAX_ID:
        raise where.fail(
            f"{what} {_short(value)} is {len(value)} characters long; at most {MAX_ID} "
            f"(rkrepro's limit: ids name folders and files)"
        )


class _Where:
    """Accumulates 'file, row X, variant Y' so every error says where it is."""

    def __init__(self, source: Path, *parts: str) -> None:
        self.source = source
        self.parts = parts

    def at(self, part: str) -> _Where:
        return _Where(self.source, *self.parts, part)

    def fail(self, message: str) -> TargetError:
        place = ", ".join((str(self.source), *self.parts))
        return TargetError(f"{place}: {message}")


def _check_mapping(
    data: Any,
    keys: dict[str, tuple[type, ...]],
    where: _Where,
    required: tuple[str, ...] = (),
    what: str = "entry",
) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise where.fail(f"expected a mapping for {what}, got {type(data).__name__}")
    for key, value in data.items():
        if key not in keys:
            close = difflib.get_close_matches(str(key), keys, n=1)
            hint = f" (did you mean {_short(close[0])}?)" if close else ""
            raise where.fail(f"unknown field {_short(key)}{hint}")
        if value is None:
            continue
        types = keys[key]
        # bool is an int in Python; a number field must not accept true/false.
        if isinstance(value, bool) and bool not in types:
            raise where.fail(f"field {_short(key)} must be {_type_names(types)}, got a boolean")
        if not isinstance(value, types):
            raise where.fail(
                f"field {_short(key)} must be {_type_names(types)}, "
                f"got {type(value).__name__} {_short(value)}"
            )
        if isinstance(value, int) and key in LIMITS and value > LIMITS[key]:
            raise where.fail(
                f"field {_short(key)} is at most {LIMITS[key]} (rkrepro's limit), "
                f"got {_short(value)}"
            )
        if isinstance(value, str) and len(value) > MAX_TEXT:
            raise where.fail(f"field {_short(key)} is longer than {MAX_TEXT} characters")
        if isinstance(value, list) and len(value) > MAX_ROWS:
            raise where.fail(f"field {_short(key)} has more than {MAX_ROWS} entries")
    for key in required:
        if data.get(key) is None:
            raise where.fail(f"missing required field {_short(key)}")
    return data


def estimate_model_size(
    family: str,
    depth: int,
    growth: int | None,
    m: tuple[int, ...] | None,
    periods: tuple[tuple[int, int], ...] | None,
    bottleneck: bool,
) -> tuple[int, int]:
    """(growth layers or residual blocks, an upper estimate of the parameters) of one model,
    without building it: what keeps a table's model from taking minutes to build on the meta
    device, or terabytes on a real one. The estimate treats a period as one dense block with no
    compression, so it is above the true count (DenseNet-BC-250 k=24: 15.3M, estimate 44M;
    the largest of the paper's tables: 75M, 170 layers)."""
    if family == "resnet":
        blocks = depth // 2 if periods is None else sum(s * r for s, r in periods) + 2
        return blocks, blocks * 2 * 9 * 64 * 64 + 64 * 100
    k = growth or 1
    per_layer_in, per_layer_fixed = 9 * k, 36 * k * k  # the larger of the two layer types

    def block(n: int, c0: int) -> int:  # n layers grown from c0 channels, k more each
        return per_layer_in * (n * c0 + k * n * (n - 1) // 2) + per_layer_fixed * n

    if periods is None or m is None:
        layers = depth // 2 if bottleneck else depth
        return layers, block(layers, 2 * k)
    layers = sum(s * r * mp for (s, r), mp in zip(periods, m, strict=False))
    params = sum(r * block(s * mp, mp * k) for (s, r), mp in zip(periods, m, strict=False))
    return layers, params


def _check_size(where: _Where, what: str, size: tuple[int, int]) -> None:
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


def _get(data: dict[str, Any], key: str, default: Any) -> Any:
    """``data[key]``, with an explicit null meaning "not given"."""
    value = data.get(key)
    return default if value is None else value


def _positive_ints(value: Any, where: _Where, name: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise where.fail(f"field {_short(name)} must be a non-empty list of positive integers")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or item < 1:
            raise where.fail(
                f"field {_short(name)} must hold positive integers, got {_short(item)}"
            )
    return tuple(value)


def _printed(value: Any) -> Printed | None:
    if value is None:
        return None
    if isinstance(value, Printed):
        return value
    return Printed(float(value), 0)


def _parse_reported(data: Any, where: _Where, dataset: str) -> Reported:
    data = _check_mapping(data, _REPORTED_KEYS, where, what="reported numbers")
    imagenet = dataset == "imagenet"
    wrong = "error" if imagenet else "top1"
    if wrong in data:
        right = "top1/top5" if imagenet else "error"
        raise where.fail(f"field {_short(wrong)} does not apply to {dataset}; use {right}")
    if not imagenet and "top5" in data:
        raise where.fail(f"field 'top5' does not apply to {dataset}")
    for key in ("params_m", "error", "top1", "top5"):
        value = data.get(key)
        if value is not None and (
            not math.isfinite(value) or value < 0 or (key != "params_m" and value > 100)
        ):
            raise where.fail(f"field {_short(key)} is out of range: {_short(value)}")
    return Reported(
        params_m=_printed(data.get("params_m")),
        error=_printed(data.get("top1" if imagenet else "error")),
        top5=_printed(data.get("top5")),
        bold=bool(data.get("bold", False)),
        star=bool(data.get("star", False)),
    )


def _parse_protocol(data: Any, where: _Where) -> Protocol:
    data = _check_mapping(data, _PROTOCOL_KEYS, where, _PROTOCOL_REQUIRED, "protocol")
    if data["dataset"] not in NUM_CLASSES:
        raise where.fail(
            f"unknown dataset {_short(data['dataset'])}; known: {', '.join(NUM_CLASSES)}"
        )
    for key in ("batch_size", "epochs"):
        if data[key] < 1:
            raise where.fail(f"field {_short(key)} must be >= 1, got {_short(data[key])}")
    for key in ("lr", "momentum", "weight_decay"):
        if not math.isfinite(data[key]) or data[key] < 0:
            raise where.fail(f"field {_short(key)} must be >= 0, got {_short(data[key])}")
    schedule = _schedule(data.get("lr_schedule"), where.at("lr_schedule"))
    milestones = _checked_milestones(data.get("lr_milestones"), schedule, data["epochs"], where)
    return Protocol(
        lr_schedule=schedule,
        dataset=data["dataset"],
        augmentation=data.get("augmentation") or "",
        batch_size=data["batch_size"],
        epochs=data["epochs"],
        lr=float(data["lr"]),
        momentum=float(data["momentum"]),
        weight_decay=float(data["weight_decay"]),
        lr_milestones=milestones,
        lr_gamma=float(_get(data, "lr_gamma", 0.1)),
        nesterov=bool(data.get("nesterov", True)),
    )


def _schedule(value: Any, where: _Where) -> LrSchedule | None:
    """``{drop_at: [0.5, 0.75]}`` or ``{drop_every: 30}`` (see :class:`LrSchedule`)."""
    if value is None:
        return None
    data = _check_mapping(value, _SCHEDULE_KEYS, where, what="lr_schedule")
    if (data.get("drop_at") is None) == (data.get("drop_every") is None):
        raise where.fail("give exactly one of 'drop_at' (fractions) or 'drop_every' (epochs)")
    if data.get("drop_every") is not None:
        if data["drop_every"] < 1:
            raise where.fail(f"'drop_every' must be >= 1, got {_short(data['drop_every'])}")
        return LrSchedule(drop_every=data["drop_every"])
    fractions = data["drop_at"]
    if not fractions or any(
        isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1 for f in fractions
    ):
        raise where.fail(f"'drop_at' must list fractions in (0, 1], got {_short(fractions)}")
    if list(fractions) != sorted(fractions):
        raise where.fail("'drop_at' fractions must increase")
    return LrSchedule(drop_at=tuple(float(f) for f in fractions))


def _checked_milestones(
    value: Any, schedule: LrSchedule | None, epochs: int, where: _Where
) -> tuple[int, ...]:
    """``lr_milestones`` as given, or derived from ``lr_schedule``; both given must agree, so a
    table cannot state one schedule and train another."""
    if schedule is None:
        if value is None:
            raise where.fail("missing required field 'lr_milestones' (or give 'lr_schedule')")
        return _milestones(value, epochs, where)
    derived = schedule.milestones(epochs, epochs)
    if value is not None and _milestones(value, epochs, where) != derived:
        raise where.fail(
            f"lr_milestones {list(value)} disagree with lr_schedule ({schedule.describe()}), "
            f"which gives {list(derived)} for {epochs} epochs"
        )
    return derived


def _milestones(value: Any, epochs: int, where: _Where) -> tuple[int, ...]:
    if value == []:
        return ()
    milestones = _positive_ints(value, where, "lr_milestones")
    if list(milestones) != sorted(set(milestones)) or milestones[-1] > epochs:
        raise where.fail(f"lr_milestones must increase and stay within {epochs} epochs")
    return milestones


def _periods_of(family: str, dataset: str) -> int:
    return 4 if dataset == "imagenet" else 3


def _parse_row(data: Any, table_where: _Where, index: int, dataset: str) -> Row:
    where = table_where.at(f"row #{index + 1}")
    if isinstance(data, dict) and isinstance(data.get("id"), str):
        where = table_where.at(f"row {_short(data['id'])}")
    data = _check_mapping(data, _ROW_KEYS, where, ("id", "family", "depth", "original"), "row")
    row_id = data["id"]
    if not _ID.match(row_id):
        raise where.fail(f"row id {_short(row_id)} must be lower-case letters, digits, '-' or '.'")
    _check_id_length(row_id, where, "row id")
    family = data["family"]
    if family not in FAMILIES:
        raise where.fail(f"unknown family {_short(family)}; known: {', '.join(FAMILIES)}")
    depth = data["depth"]
    if depth < 1:
        raise where.fail(f"field 'depth' must be >= 1, got {_short(depth)}")
    growth = data.get("growth_rate")
    periods = _periods_of(family, dataset)
    m: tuple[int, ...] | None = None
    if family == "resnet":
        if growth is not None or data.get("m") is not None:
            raise where.fail("ResNet rows take neither 'growth_rate' nor 'm'")
        if dataset == "imagenet":
            raise where.fail("ResNet rows are CIFAR models; dataset imagenet is not supported")
    else:
        if growth is None or growth < 1:
            raise where.fail("DenseNet rows need a positive 'growth_rate'")
        if data.get("m") is None:
            raise where.fail("DenseNet rows need 'm' (state widths per period, m0 = 2 first)")
        m = _positive_ints(data["m"], where, "m")
        if max(m) > LIMITS["m"]:
            raise where.fail(f"'m' entries are at most {LIMITS['m']} (rkrepro's limit)")
        if len(m) != periods:
            raise where.fail(
                f"'m' has {len(m)} entries but a {dataset} model has {periods} periods"
            )
    compression = _get(data, "compression", 0.5 if data.get("bottleneck") else 1.0)
    if not 0 < compression <= 1:
        raise where.fail(f"field 'compression' must be in (0, 1], got {_short(compression)}")

    bottleneck = bool(data.get("bottleneck", family == "densenet-bc"))
    _check_size(
        where, "the original", estimate_model_size(family, depth, growth, m, None, bottleneck)
    )
    variants: list[Variant] = []
    seen: dict[str, str] = {}
    for index, raw in enumerate(data.get("variants") or []):
        vwhere = where.at(f"variant #{index + 1}")
        raw = _check_mapping(raw, _VARIANT_KEYS, vwhere, ("name",), "variant")
        vwhere = where.at(f"variant {_short(raw['name'])}")
        shape = parse_variant_name_at(raw["name"], vwhere)
        if len(shape) != periods:
            raise vwhere.fail(
                f"has {len(shape)} s×r parts but a {dataset} model has {periods} periods"
            )
        name = format_variant_name(shape)
        _check_size(vwhere, name, estimate_model_size(family, depth, growth, m, shape, bottleneck))
        if name in seen:
            raise vwhere.fail(f"duplicate variant (same as {_short(seen[name])})")
        seen[name] = raw["name"]
        numbers = {k: v for k, v in raw.items() if k in _REPORTED_KEYS}
        share = raw.get("share")
        variants.append(
            Variant(
                name=name,
                printed_name=raw["name"],
                periods=shape,
                reported=_parse_reported(numbers, vwhere, dataset),
                share=None
                if share is None
                else _parse_reported(share, vwhere.at("share"), dataset),
                params_equal_original=bool(raw.get("params_equal_original", False)),
            )
        )
    row_readings = _readings(data.get("readings"), where)
    return Row(
        readings=tuple(row_readings.items()),
        id=row_id,
        label=clean(data.get("label") or row_id),
        family=family,
        depth=depth,
        growth_rate=growth,
        bottleneck=bottleneck,
        compression=compression,
        m=m,
        original=_parse_reported(data["original"], where.at("original"), dataset),
        variants=tuple(variants),
    )


def _readings(value: Any, where: _Where) -> dict[str, str]:
    if value is None:
        return {}
    try:
        return readings_mod.check(value, "readings")
    except TargetError as error:
        raise where.fail(str(error)) from None


def parse_variant_name_at(name: str, where: _Where) -> tuple[tuple[int, int], ...]:
    try:
        return parse_variant_name(name)
    except TargetError as error:
        raise where.fail(str(error)) from None


def parse_table(data: Any, source: Path) -> Table:
    """Validate one loaded YAML document; raise :class:`TargetError` naming the bad field."""
    where = _Where(source)
    data = _check_mapping(
        data, _TABLE_KEYS, where, ("id", "dataset", "protocol", "rows"), "the table"
    )
    if not _ID.match(data["id"]):
        raise where.fail(f"table id {_short(data['id'])} must be lower-case letters, digits or '-'")
    _check_id_length(data["id"], where, "table id")
    dataset = data["dataset"]
    if dataset not in NUM_CLASSES:
        raise where.fail(f"unknown dataset {_short(dataset)}; known: {', '.join(NUM_CLASSES)}")
    protocol = _parse_protocol(data["protocol"], where.at("protocol"))
    if protocol.dataset != dataset:
        raise where.fail(
            f"protocol dataset {_short(protocol.dataset)} differs from table's {_short(dataset)}"
        )
    star_protocol, star_note = None, None
    if data.get("star_protocol") is not None:
        swhere = where.at("star_protocol")
        star = _check_mapping(data["star_protocol"], _STAR_KEYS, swhere, what="star_protocol")
        epochs = _get(star, "epochs", protocol.epochs)
        batch_size = _get(star, "batch_size", protocol.batch_size)
        if epochs < 1 or batch_size < 1:
            raise swhere.fail("epochs and batch_size must be >= 1")
        if protocol.lr_schedule is not None:
            star_milestones = _checked_milestones(
                star.get("lr_milestones"), protocol.lr_schedule, epochs, swhere
            )
        else:
            star_milestones = _milestones(
                _get(star, "lr_milestones", list(protocol.lr_milestones)), epochs, swhere
            )
        star_protocol = replace(
            protocol, batch_size=batch_size, epochs=epochs, lr_milestones=star_milestones
        )
        star_note = clean(star["note"]) if star.get("note") else None
    if not data["rows"]:
        raise where.fail("field 'rows' is empty: a table needs at least one row")
    rows: list[Row] = []
    ids: set[str] = set()
    for index, raw in enumerate(data["rows"]):
        row = _parse_row(raw, where, index, dataset)
        for name in (row.id, *row.aliases):
            if name in ids:
                raise where.at(f"row {_short(row.id)}").fail(f"duplicate row id {_short(name)}")
            ids.add(name)
        rows.append(row)
        cells = [row.original, *(v.reported for v in row.variants)]
        cells += [v.share for v in row.variants if v.share is not None]
        if star_protocol is None and any(c.star for c in cells):
            raise where.at(f"row {_short(row.id)}").fail(
                "a cell has star: true but no star_protocol"
            )
    table_readings = {**readings_mod.DEFAULTS, **_readings(data.get("readings"), where)}
    return Table(
        readings=tuple(table_readings.items()),
        id=data["id"],
        title=clean(data.get("title") or data["id"]),
        caption=clean(" ".join((data.get("caption") or "").split())),
        dataset=dataset,
        protocol=protocol,
        star_protocol=star_protocol,
        star_note=star_note,
        rows=tuple(rows),
        source=source,
        claims=_parse_claims(data.get("claims"), where, data["id"]),
    )


_CLAIM_KEYS: dict[str, tuple[type, ...]] = {
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
_SELECTOR_KEYS: dict[str, tuple[type, ...]] = {
    "tables": (list,),
    "model": (str,),
    "share": (bool,),
    "family": (str,),
    "bold": (bool,),
}
MAX_CLAIMS = 64


def _choice(value: Any, choices: tuple[str, ...], where: _Where, name: str) -> str:
    if value not in choices:
        shown = repr(value) if isinstance(value, str) and len(value) <= 40 else "this value"
        raise where.fail(f"field {name!r} must be one of {', '.join(choices)}, got {shown}")
    return value


def _parse_selector(data: Any, where: _Where, table_id: str) -> CellSelector:
    data = _check_mapping(data or {}, _SELECTOR_KEYS, where, what="a claim side")
    tables = data.get("tables") or [table_id]
    for item in tables:
        if not isinstance(item, str) or not _ID.match(item):
            raise where.fail("field 'tables' must list table ids")
    family = data.get("family")
    if family is not None:
        _choice(family, FAMILIES, where, "family")
    return CellSelector(
        tables=tuple(dict.fromkeys(tables)),
        model=_choice(data.get("model", "any"), CLAIM_MODELS, where, "model"),
        share=data.get("share"),
        family=family,
        bold=data.get("bold"),
    )


def _parse_claims(raw: Any, where: _Where, table_id: str) -> tuple[ClaimSpec, ...]:
    if raw is None:
        return ()
    if len(raw) > MAX_CLAIMS:
        raise where.fail(f"at most {MAX_CLAIMS} claims per table")
    claims: list[ClaimSpec] = []
    seen: set[str] = set()
    for index, data in enumerate(raw):
        cwhere = where.at(f"claim #{index + 1}")
        data = _check_mapping(
            data, _CLAIM_KEYS, cwhere, ("id", "text", "quantity", "relation"), "claim"
        )
        if not _ID.match(data["id"]):
            raise cwhere.fail("claim id must be lower-case letters, digits, '-' or '.'")
        _check_id_length(data["id"], cwhere, "claim id")
        if data["id"] in seen:
            raise cwhere.fail(f"duplicate claim id {data['id']!r}")
        seen.add(data["id"])
        cwhere = where.at(f"claim {data['id']!r}")
        quantity = data["quantity"]
        quantities = [quantity] if isinstance(quantity, str) else quantity
        if not quantities:
            raise cwhere.fail("field 'quantity' must name at least one quantity")
        for item in quantities:
            _choice(item, CLAIM_QUANTITIES, cwhere, "quantity")
        factor, margin = _get(data, "factor", 1.0), _get(data, "margin", 0.0)
        for name, value in (("factor", factor), ("margin", margin)):
            if not math.isfinite(value) or value < 0 or value > 1000:
                raise cwhere.fail(f"field {name!r} must be in [0, 1000]")
        claims.append(
            ClaimSpec(
                id=data["id"],
                table=table_id,
                section=clean(data.get("section") or ""),
                text=clean(" ".join(data["text"].split())),
                quantities=tuple(dict.fromkeys(quantities)),
                relation=_choice(data["relation"], CLAIM_RELATIONS, cwhere, "relation"),
                left=_parse_selector(data.get("left"), cwhere.at("left"), table_id),
                right=_parse_selector(
                    data.get("right") or {"model": "original"}, cwhere.at("right"), table_id
                ),
                pairs=_choice(_get(data, "pairs", "row"), CLAIM_PAIRS, cwhere, "pairs"),
                factor=float(factor),
                margin=float(margin),
            )
        )
    return tuple(claims)


def _check_claim_references(tables: dict[str, Table]) -> None:
    """A side that selects no cell is a typo. A claim naming a table that is not in the folder
    (a folder with only some of the paper's tables) is kept but cannot be judged."""
    for table in tables.values():
        for claim in table.claims:
            where = _Where(table.source, f"claim {claim.id!r}")
            for side, selector in (("left", claim.left), ("right", claim.right)):
                if any(t not in tables for t in selector.tables):
                    continue
                if not any(
                    selector.matches(cell, row.family)
                    for table_id in selector.tables
                    for row in tables[table_id].rows
                    for cell in row_cells(tables[table_id], row)
                ):
                    raise where.fail(f"{side}: selects no cell")


# --------------------------------------------------------------------------------------------
# Loading and addressing.


def default_tables_dir() -> Path:
    """``$RKREPRO_TABLES_DIR``, else the tables shipped with the package."""
    env = os.environ.get(TABLES_DIR_ENV)
    if env:
        return Path(env)
    packaged = Path(__file__).resolve().parent / "tables"
    if packaged.is_dir():  # non-editable install: tables are package data
        return packaged
    return Path(__file__).resolve().parent.parent / "tables"


def load_tables(tables_dir: Path | str | None = None) -> dict[str, Table]:
    """Every ``*.yaml`` of the tables directory, validated, in file-name order."""
    directory = Path(tables_dir) if tables_dir is not None else default_tables_dir()
    if not directory.is_dir():
        raise TargetError(f"tables directory {directory} does not exist")
    tables: dict[str, Table] = {}
    for path in sorted(directory.glob("*.y*ml")):
        table = load_table_file(path)
        if table.id in tables:
            raise TargetError(
                f"{path}: duplicate table id {_short(table.id)} (also in {tables[table.id].source})"
            )
        tables[table.id] = table
    if not tables:
        raise TargetError(f"no tables (*.yaml) found in {directory}")
    _check_claim_references(tables)
    return tables


def _read_table_text(path: Path) -> str:
    """The file's text, if it is a regular file of at most :data:`MAX_TABLE_BYTES` of UTF-8.

    Opened non-blocking and checked on the open descriptor: a FIFO would block ``open`` and
    ``read`` forever, and a symlink to ``/dev/zero`` never ends."""
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as error:
        raise TargetError(f"{path}: cannot read: {error.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise TargetError(f"{path}: not a regular file; table files must be plain files")
        if info.st_size > MAX_TABLE_BYTES:
            raise TargetError(
                f"{path}: {info.st_size} bytes; a table file is at most {MAX_TABLE_BYTES} bytes"
            )
        with os.fdopen(os.dup(fd), "rb") as handle:
            blob = handle.read(MAX_TABLE_BYTES + 1)
    except OSError as error:
        raise TargetError(f"{path}: cannot read: {error.strerror}") from None
    finally:
        os.close(fd)
    if len(blob) > MAX_TABLE_BYTES:
        raise TargetError(f"{path}: a table file is at most {MAX_TABLE_BYTES} bytes")
    try:
        return blob.decode("utf-8")
    except UnicodeDecodeError as error:
        raise TargetError(
            f"{path}: not UTF-8 text (byte {error.start} cannot be decoded); "
            "a table file is YAML in UTF-8"
        ) from None


def load_table_file(path: Path) -> Table:
    text = _read_table_text(path)
    try:
        return _parse_text(text, path)
    except TargetError:
        raise
    except (RecursionError, MemoryError, ValueError, TypeError, OverflowError) as error:
        # Whatever slips past the checks above (an int of 5000 digits, ...): still one line.
        detail = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        raise TargetError(
            f"{path}: cannot load this table ({type(error).__name__}{': ' if detail else ''}"
            f"{detail})"
        ) from None


def _parse_text(text: str, path: Path) -> Table:
    try:
        data = yaml.load(text, Loader=_TableLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        problem = error.problem or error.context or "invalid YAML"
        raise TargetError(f"{path}:{line} YAML syntax error: {problem}") from None
    except yaml.YAMLError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else "invalid YAML"
        raise TargetError(f"{path}: YAML error: {first_line}") from None
    return parse_table(data, path)


def _no_match(kind: str, wanted: str, known: list[str], context: str = "") -> TargetError:
    close = difflib.get_close_matches(wanted, known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(known)}"
    return TargetError(f"unknown {kind} {_short(wanted)}{context}{hint}")


def find_table(tables: dict[str, Table], table_id: str) -> Table:
    key = table_id.strip().lower()
    if key in tables:
        return tables[key]
    if key.isdigit() and f"table{key}" in tables:
        return tables[f"table{key}"]
    raise _no_match("table", table_id, list(tables))


def find_row(table: Table, row_id: str) -> Row:
    key = row_id.strip().lower()
    for row in table.rows:
        if key == row.id or key in row.aliases:
            return row
    known = [row.id for row in table.rows]
    raise _no_match("row", row_id, known, f" in {table.id}")


def find_variant(table: Table, row: Row, name: str) -> Variant:
    try:
        wanted = normalise_name(name)
    except TargetError:
        wanted = name
    for variant in row.variants:
        if variant.name.lower() == wanted.lower():
            return variant
    known = [v.name for v in row.variants]
    raise _no_match("variant", name, known, f" in {table.id} row {row.id}")


def _spec(
    table: Table,
    row: Row,
    periods: tuple[tuple[int, int], ...] | None,
    share: bool,
    readings: dict[str, str],
) -> ModelSpec:
    return ModelSpec(
        resnet_stages=readings["resnet_stages"],  # type: ignore[arg-type]
        family=row.family,  # type: ignore[arg-type]
        dataset=table.dataset,  # type: ignore[arg-type]
        depth=row.depth,
        growth_rate=row.growth_rate,
        periods=periods,
        m=row.m if periods is not None else None,
        share=share,
    )


def _cell(table: Table, row: Row, variant: Variant | None, share: bool) -> Cell:
    if variant is None:
        reported, model, printed = row.original, "original", "original"
        periods = None
    else:
        reported = (variant.share or Reported()) if share else variant.reported
        model, printed, periods = variant.name, variant.printed_name, variant.periods
    protocol = table.star_protocol if reported.star and table.star_protocol else table.protocol
    readings = {**dict(table.readings), **dict(row.readings)}
    return Cell(
        readings=tuple(readings.items()),
        table=table.id,
        row=row.id,
        model=model,
        share=share,
        spec=_spec(table, row, periods, share, readings),
        protocol=protocol,
        reported_params_m=reported.params_m,
        reported_error=reported.error,
        reported_top5=reported.top5,
        bold=reported.bold,
        star=reported.star,
        printed_model=printed,
        params_equal_original=bool(variant and variant.params_equal_original and not share),
    )


def row_cells(table: Table, row: Row) -> list[Cell]:
    """The row's original, then each variant, each followed by its "with share" cell if printed."""
    cells = [_cell(table, row, None, False)]
    for variant in row.variants:
        cells.append(_cell(table, row, variant, False))
        if variant.share is not None:
            cells.append(_cell(table, row, variant, True))
    return cells


def all_cells(tables: dict[str, Table], table_id: str | None = None) -> list[Cell]:
    """Every cell of one table (or all tables) in the paper's order."""
    chosen = [find_table(tables, table_id)] if table_id else list(tables.values())
    return [cell for table in chosen for row in table.rows for cell in row_cells(table, row)]


def select_cells(
    tables: dict[str, Table], table_id: str | None = None, row_id: str | None = None
) -> list[Cell]:
    """``[TABLE] [--row ROW]`` of the listing commands: everything, one table, or one row."""
    if row_id is None:
        return all_cells(tables, table_id)
    if table_id is None:
        raise TargetError("--row needs a TABLE argument (e.g. table1 --row densenet-bc-k12)")
    table = find_table(tables, table_id)
    return row_cells(table, find_row(table, row_id))


def resolve_cells(
    tables: dict[str, Table],
    table_id: str,
    row_id: str,
    variants: list[str] | None = None,
    share: str = "both",
) -> list[Cell]:
    """The cells ``rkrepro run TABLE --row ROW [--variant …] [--share/--no-share/--both]`` means.

    With no variants: the original and every variant, shared where the paper reports sharing.
    ``--share`` asks for the shared cell of each chosen variant, also one the paper did not print.
    """
    if share not in SHARE_CHOICES:
        raise TargetError(f"share must be one of {', '.join(SHARE_CHOICES)}, got {_short(share)}")
    table = find_table(tables, table_id)
    row = find_row(table, row_id)
    if not variants:
        cells = row_cells(table, row)
        if share == "share":
            return [c for c in cells if c.share]
        if share == "no-share":
            return [c for c in cells if not c.share]
        return cells
    cells: list[Cell] = []
    for name in variants:
        if name.strip().lower() == "original":
            if share != "share":
                cells.append(_cell(table, row, None, False))
            continue
        variant = find_variant(table, row, name)
        if share in ("both", "no-share"):
            cells.append(_cell(table, row, variant, False))
        if share == "share" or (share == "both" and variant.share is not None):
            cells.append(_cell(table, row, variant, True))
    unique = list(dict.fromkeys(cells))
    return unique
