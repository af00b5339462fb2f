"""Reading ``tables/*.yaml``: a regular file of bounded size, parsed by a safe YAML loader that
keeps printed precision, then validated field by field into a :class:`~rkrepro.paper.model.Table`.

Torch-free on purpose: ``rkrepro list`` must answer in well under a second.
"""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from rkrepro.errors import TableError
from rkrepro.paper import readings as readings_mod
from rkrepro.paper.claims import check_claim_references, parse_claims
from rkrepro.paper.limits import (
    LIMITS,
    MAX_NESTING,
    MAX_TABLE_BYTES,
    estimate_model_size,
    short_repr,
)
from rkrepro.paper.model import (
    Printed,
    Reported,
    Row,
    Table,
    Variant,
    format_variant_name,
    parse_variant_name,
)
from rkrepro.paper.schema import (
    FAMILIES,
    ID_PATTERN,
    PROTOCOL_KEYS,
    PROTOCOL_REQUIRED,
    REPORTED_KEYS,
    ROW_KEYS,
    SCHEDULE_KEYS,
    STAR_KEYS,
    TABLE_KEYS,
    VARIANT_KEYS,
    Where,
    check_id_length,
    check_mapping,
    check_size,
    get_or_default,
)
from rkrepro.spec import NUM_CLASSES, LrSchedule, Protocol
from rkrepro.textsafe import clean

TABLES_DIR_ENV = "RKREPRO_TABLES_DIR"


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
                None, None, f"duplicate key {short_repr(key)}", key_node.start_mark
            )
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_TableLoader.add_constructor("tag:yaml.org,2002:float", _construct_number)
_TableLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,  # type: ignore[arg-type]
)


# --------------------------------------------------------------------------------------------
# Validation: each part of a table against the schema, one error line naming file, place and field.


def _positive_ints(value: Any, where: Where, name: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise where.fail(f"field {short_repr(name)} must be a non-empty list of positive integers")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or item < 1:
            raise where.fail(
                f"field {short_repr(name)} must hold positive integers, got {short_repr(item)}"
            )
    return tuple(value)


def _printed(value: Any) -> Printed | None:
    if value is None:
        return None
    if isinstance(value, Printed):
        return value
    return Printed(float(value), 0)


def _parse_reported(data: Any, where: Where, dataset: str) -> Reported:
    data = check_mapping(data, REPORTED_KEYS, where, what="reported numbers")
    imagenet = dataset == "imagenet"
    wrong = "error" if imagenet else "top1"
    if wrong in data:
        right = "top1/top5" if imagenet else "error"
        raise where.fail(f"field {short_repr(wrong)} does not apply to {dataset}; use {right}")
    if not imagenet and "top5" in data:
        raise where.fail(f"field 'top5' does not apply to {dataset}")
    for key in ("params_m", "error", "top1", "top5"):
        value = data.get(key)
        if value is not None and (
            not math.isfinite(value) or value < 0 or (key != "params_m" and value > 100)
        ):
            raise where.fail(f"field {short_repr(key)} is out of range: {short_repr(value)}")
    return Reported(
        params_m=_printed(data.get("params_m")),
        error=_printed(data.get("top1" if imagenet else "error")),
        top5=_printed(data.get("top5")),
        bold=bool(data.get("bold", False)),
        star=bool(data.get("star", False)),
    )


def _parse_protocol(data: Any, where: Where) -> Protocol:
    data = check_mapping(data, PROTOCOL_KEYS, where, PROTOCOL_REQUIRED, "protocol")
    if data["dataset"] not in NUM_CLASSES:
        raise where.fail(
            f"unknown dataset {short_repr(data['dataset'])}; known: {', '.join(NUM_CLASSES)}"
        )
    for key in ("batch_size", "epochs"):
        if data[key] < 1:
            raise where.fail(f"field {short_repr(key)} must be >= 1, got {short_repr(data[key])}")
    for key in ("lr", "momentum", "weight_decay"):
        if not math.isfinite(data[key]) or data[key] < 0:
            raise where.fail(f"field {short_repr(key)} must be >= 0, got {short_repr(data[key])}")
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
        lr_gamma=float(get_or_default(data, "lr_gamma", 0.1)),
        nesterov=bool(data.get("nesterov", True)),
    )


def _schedule(value: Any, where: Where) -> LrSchedule | None:
    """``{drop_at: [0.5, 0.75]}`` or ``{drop_every: 30}`` (see :class:`LrSchedule`)."""
    if value is None:
        return None
    data = check_mapping(value, SCHEDULE_KEYS, where, what="lr_schedule")
    if (data.get("drop_at") is None) == (data.get("drop_every") is None):
        raise where.fail("give exactly one of 'drop_at' (fractions) or 'drop_every' (epochs)")
    if data.get("drop_every") is not None:
        if data["drop_every"] < 1:
            raise where.fail(f"'drop_every' must be >= 1, got {short_repr(data['drop_every'])}")
        return LrSchedule(drop_every=data["drop_every"])
    fractions = data["drop_at"]
    if not fractions or any(
        isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1 for f in fractions
    ):
        raise where.fail(f"'drop_at' must list fractions in (0, 1], got {short_repr(fractions)}")
    if list(fractions) != sorted(fractions):
        raise where.fail("'drop_at' fractions must increase")
    return LrSchedule(drop_at=tuple(float(f) for f in fractions))


def _checked_milestones(
    value: Any, schedule: LrSchedule | None, epochs: int, where: Where
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


def _milestones(value: Any, epochs: int, where: Where) -> tuple[int, ...]:
    if value == []:
        return ()
    milestones = _positive_ints(value, where, "lr_milestones")
    if list(milestones) != sorted(set(milestones)) or milestones[-1] > epochs:
        raise where.fail(f"lr_milestones must increase and stay within {epochs} epochs")
    return milestones


def _periods_of(family: str, dataset: str) -> int:
    return 4 if dataset == "imagenet" else 3


def _parse_row(data: Any, table_where: Where, index: int, dataset: str) -> Row:
    where = table_where.at(f"row #{index + 1}")
    if isinstance(data, dict) and isinstance(data.get("id"), str):
        where = table_where.at(f"row {short_repr(data['id'])}")
    data = check_mapping(data, ROW_KEYS, where, ("id", "family", "depth", "original"), "row")
    row_id = data["id"]
    if not ID_PATTERN.match(row_id):
        raise where.fail(
            f"row id {short_repr(row_id)} must be lower-case letters, digits, '-' or '.'"
        )
    check_id_length(row_id, where, "row id")
    family = data["family"]
    if family not in FAMILIES:
        raise where.fail(f"unknown family {short_repr(family)}; known: {', '.join(FAMILIES)}")
    depth = data["depth"]
    if depth < 1:
        raise where.fail(f"field 'depth' must be >= 1, got {short_repr(depth)}")
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
    compression = get_or_default(data, "compression", 0.5 if data.get("bottleneck") else 1.0)
    if not 0 < compression <= 1:
        raise where.fail(f"field 'compression' must be in (0, 1], got {short_repr(compression)}")

    bottleneck = bool(data.get("bottleneck", family == "densenet-bc"))
    check_size(
        where, "the original", estimate_model_size(family, depth, growth, m, None, bottleneck)
    )
    variants: list[Variant] = []
    seen: dict[str, str] = {}
    for index, raw in enumerate(data.get("variants") or []):
        vwhere = where.at(f"variant #{index + 1}")
        raw = check_mapping(raw, VARIANT_KEYS, vwhere, ("name",), "variant")
        vwhere = where.at(f"variant {short_repr(raw['name'])}")
        shape = parse_variant_name_at(raw["name"], vwhere)
        if len(shape) != periods:
            raise vwhere.fail(
                f"has {len(shape)} s×r parts but a {dataset} model has {periods} periods"
            )
        name = format_variant_name(shape)
        check_size(vwhere, name, estimate_model_size(family, depth, growth, m, shape, bottleneck))
        if name in seen:
            raise vwhere.fail(f"duplicate variant (same as {short_repr(seen[name])})")
        seen[name] = raw["name"]
        numbers = {k: v for k, v in raw.items() if k in REPORTED_KEYS}
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


def _readings(value: Any, where: Where) -> dict[str, str]:
    if value is None:
        return {}
    try:
        return readings_mod.check(value, "readings")
    except TableError as error:
        raise where.fail(str(error)) from None


def parse_variant_name_at(name: str, where: Where) -> tuple[tuple[int, int], ...]:
    try:
        return parse_variant_name(name)
    except TableError as error:
        raise where.fail(str(error)) from None


def parse_table(data: Any, source: Path) -> Table:
    """Validate one loaded YAML document; raise :class:`TableError` naming the bad field."""
    where = Where(source)
    data = check_mapping(
        data, TABLE_KEYS, where, ("id", "dataset", "protocol", "rows"), "the table"
    )
    if not ID_PATTERN.match(data["id"]):
        raise where.fail(
            f"table id {short_repr(data['id'])} must be lower-case letters, digits or '-'"
        )
    check_id_length(data["id"], where, "table id")
    dataset = data["dataset"]
    if dataset not in NUM_CLASSES:
        raise where.fail(f"unknown dataset {short_repr(dataset)}; known: {', '.join(NUM_CLASSES)}")
    protocol = _parse_protocol(data["protocol"], where.at("protocol"))
    if protocol.dataset != dataset:
        raise where.fail(
            f"protocol dataset {short_repr(protocol.dataset)} differs from table's "
            f"{short_repr(dataset)}"
        )
    star_protocol, star_note = None, None
    if data.get("star_protocol") is not None:
        swhere = where.at("star_protocol")
        star = check_mapping(data["star_protocol"], STAR_KEYS, swhere, what="star_protocol")
        epochs = get_or_default(star, "epochs", protocol.epochs)
        batch_size = get_or_default(star, "batch_size", protocol.batch_size)
        if epochs < 1 or batch_size < 1:
            raise swhere.fail("epochs and batch_size must be >= 1")
        if protocol.lr_schedule is not None:
            star_milestones = _checked_milestones(
                star.get("lr_milestones"), protocol.lr_schedule, epochs, swhere
            )
        else:
            star_milestones = _milestones(
                get_or_default(star, "lr_milestones", list(protocol.lr_milestones)), epochs, swhere
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
                raise where.at(f"row {short_repr(row.id)}").fail(
                    f"duplicate row id {short_repr(name)}"
                )
            ids.add(name)
        rows.append(row)
        cells = [row.original, *(v.reported for v in row.variants)]
        cells += [v.share for v in row.variants if v.share is not None]
        if star_protocol is None and any(c.star for c in cells):
            raise where.at(f"row {short_repr(row.id)}").fail(
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
        claims=parse_claims(data.get("claims"), where, data["id"]),
    )


# --------------------------------------------------------------------------------------------
# Loading a tables folder.


def default_tables_dir() -> Path:
    """``$RKREPRO_TABLES_DIR``, else the tables shipped with the package."""
    env = os.environ.get(TABLES_DIR_ENV)
    if env:
        return Path(env)
    package = Path(__file__).resolve().parent.parent  # rkrepro/
    packaged = package / "tables"
    if packaged.is_dir():  # non-editable install: tables are package data
        return packaged
    return package.parent / "tables"


def load_tables(tables_dir: Path | str | None = None) -> dict[str, Table]:
    """Every ``*.yaml`` of the tables directory, validated, in file-name order."""
    directory = Path(tables_dir) if tables_dir is not None else default_tables_dir()
    if not directory.is_dir():
        raise TableError(f"tables directory {directory} does not exist")
    tables: dict[str, Table] = {}
    for path in sorted(directory.glob("*.y*ml")):
        table = load_table_file(path)
        if table.id in tables:
            raise TableError(
                f"{path}: duplicate table id {short_repr(table.id)} "
                f"(also in {tables[table.id].source})"
            )
        tables[table.id] = table
    if not tables:
        raise TableError(f"no tables (*.yaml) found in {directory}")
    check_claim_references(tables)
    return tables


def _read_table_text(path: Path) -> str:
    """The file's text, if it is a regular file of at most :data:`MAX_TABLE_BYTES` of UTF-8.

    Opened non-blocking and checked on the open descriptor: a FIFO would block ``open`` and
    ``read`` forever, and a symlink to ``/dev/zero`` never ends."""
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as error:
        raise TableError(f"{path}: cannot read: {error.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise TableError(f"{path}: not a regular file; table files must be plain files")
        if info.st_size > MAX_TABLE_BYTES:
            raise TableError(
                f"{path}: {info.st_size} bytes; a table file is at most {MAX_TABLE_BYTES} bytes"
            )
        with os.fdopen(os.dup(fd), "rb") as handle:
            blob = handle.read(MAX_TABLE_BYTES + 1)
    except OSError as error:
        raise TableError(f"{path}: cannot read: {error.strerror}") from None
    finally:
        os.close(fd)
    if len(blob) > MAX_TABLE_BYTES:
        raise TableError(f"{path}: a table file is at most {MAX_TABLE_BYTES} bytes")
    try:
        return blob.decode("utf-8")
    except UnicodeDecodeError as error:
        raise TableError(
            f"{path}: not UTF-8 text (byte {error.start} cannot be decoded); "
            "a table file is YAML in UTF-8"
        ) from None


def load_table_file(path: Path) -> Table:
    text = _read_table_text(path)
    try:
        return _parse_text(text, path)
    except TableError:
        raise
    except (RecursionError, MemoryError, ValueError, TypeError, OverflowError) as error:
        # Whatever slips past the checks above (an int of 5000 digits, ...): still one line.
        detail = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        raise TableError(
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
        raise TableError(f"{path}:{line} YAML syntax error: {problem}") from None
    except yaml.YAMLError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else "invalid YAML"
        raise TableError(f"{path}: YAML error: {first_line}") from None
    return parse_table(data, path)
