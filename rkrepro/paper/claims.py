"""The ``claims:`` block of a table file, read and checked: each claim becomes a
:class:`~rkrepro.paper.model.ClaimSpec`, and a side that selects no cell is an error. Judging a
claim against the numbers is the report's (:mod:`rkrepro.report.claims`).
"""

from __future__ import annotations

import math
from typing import Any

from rkrepro.paper.limits import MAX_CLAIMS
from rkrepro.paper.lookup import row_cells
from rkrepro.paper.model import (
    CLAIM_MODELS,
    CLAIM_PAIRS,
    CLAIM_QUANTITIES,
    CLAIM_RELATIONS,
    CellSelector,
    ClaimSpec,
    Table,
)
from rkrepro.paper.schema import (
    CLAIM_KEYS,
    FAMILIES,
    ID_PATTERN,
    SELECTOR_KEYS,
    Where,
    check_id_length,
    check_mapping,
    get_or_default,
)
from rkrepro.textsafe import clean


def _choice(value: Any, choices: tuple[str, ...], where: Where, name: str) -> str:
    if value not in choices:
        shown = repr(value) if isinstance(value, str) and len(value) <= 40 else "this value"
        raise where.fail(f"field {name!r} must be one of {', '.join(choices)}, got {shown}")
    return value


def _parse_selector(data: Any, where: Where, table_id: str) -> CellSelector:
    data = check_mapping(data or {}, SELECTOR_KEYS, where, what="a claim side")
    tables = data.get("tables") or [table_id]
    for item in tables:
        if not isinstance(item, str) or not ID_PATTERN.match(item):
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


def parse_claims(raw: Any, where: Where, table_id: str) -> tuple[ClaimSpec, ...]:
    if raw is None:
        return ()
    if len(raw) > MAX_CLAIMS:
        raise where.fail(f"at most {MAX_CLAIMS} claims per table")
    claims: list[ClaimSpec] = []
    seen: set[str] = set()
    for index, data in enumerate(raw):
        cwhere = where.at(f"claim #{index + 1}")
        data = check_mapping(
            data, CLAIM_KEYS, cwhere, ("id", "text", "quantity", "relation"), "claim"
        )
        if not ID_PATTERN.match(data["id"]):
            raise cwhere.fail("claim id must be lower-case letters, digits, '-' or '.'")
        check_id_length(data["id"], cwhere, "claim id")
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
        factor, margin = get_or_default(data, "factor", 1.0), get_or_default(data, "margin", 0.0)
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
                pairs=_choice(get_or_default(data, "pairs", "row"), CLAIM_PAIRS, cwhere, "pairs"),
                factor=float(factor),
                margin=float(margin),
            )
        )
    return tuple(claims)


def check_claim_references(tables: dict[str, Table]) -> None:
    """A side that selects no cell is a typo. A claim naming a table that is not in the folder
    (a folder with only some of the paper's tables) is kept but cannot be judged."""
    for table in tables.values():
        for claim in table.claims:
            where = Where(table.source, f"claim {claim.id!r}")
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
