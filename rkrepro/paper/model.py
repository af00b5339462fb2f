"""The paper's tables as data: :class:`Table` -> :class:`Row` -> :class:`Variant`, the
:class:`Cell` everything downstream works on, printed numbers with their one rounding rule,
variant names, and the claims a table states about its cells.

A *cell* is one thing that can be trained and compared with the paper: a row's original network
or one RKNet variant, with or without weight sharing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path

from rkrepro.errors import TableError
from rkrepro.paper import readings as readings_mod
from rkrepro.paper.limits import MAX_STAGES, MAX_STEPS, short_repr
from rkrepro.spec import ModelSpec, Protocol, variant_name

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
            raise TableError(
                f"cannot parse variant name {short_repr(name)}: expected RKNet-SxR_SxR_... "
                "(e.g. RKNet-1x8_1x2_1x2)"
            )
        s, r = int(match.group(1)), int(match.group(2))
        if s < 1 or r < 1:
            raise TableError(f"variant {short_repr(name)}: stages s and time-steps r must be >= 1")
        if s > MAX_STAGES or r > MAX_STEPS:
            raise TableError(
                f"variant {short_repr(name)}: at most {MAX_STAGES} stages s and {MAX_STEPS} "
                "time-steps r per period"
            )
        if len(parts) >= 8:
            raise TableError(f"variant {short_repr(name)}: more than 8 periods")
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
    # Every reading (rkrepro.paper.readings) with its value for this cell; ``spec`` follows it.
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
