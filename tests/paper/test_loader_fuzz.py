"""rkrepro.paper.loader, property-based: no malformed table document crashes the loader; each
gives a TableError."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rkrepro.errors import TableError
from rkrepro.paper.loader import parse_table

pytestmark = pytest.mark.bad_input

SHIPPED = Path(__file__).resolve().parents[2] / "tables"
BASE = yaml.safe_load((SHIPPED / "table3.yaml").read_text(encoding="utf-8"))

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-5, max_value=400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)


def _paths(node, prefix=()):
    """Every (container, key) place in the document."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield prefix + (key,)
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield prefix + (index,)
            yield from _paths(value, prefix + (index,))


PATHS = list(_paths(BASE))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    edits=st.lists(
        st.tuples(st.sampled_from(PATHS), values, st.sampled_from(["set", "delete"])),
        min_size=1,
        max_size=3,
    )
)
def test_mutated_documents_give_table_errors_only(edits):
    document = copy.deepcopy(BASE)
    for path, value, action in edits:
        parent = document
        try:
            for key in path[:-1]:
                parent = parent[key]
            if action == "delete":
                del parent[path[-1]]
            else:
                parent[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed this place
    try:
        table = parse_table(document, Path("fuzz.yaml"))
    except TableError as error:
        message = str(error)
        assert message.startswith("fuzz.yaml")
        assert "\n" not in message
    else:
        assert table.rows  # a document that loads is a usable table


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_gives_table_errors_only(tmp_path_factory, text):
    directory = tmp_path_factory.mktemp("fuzz")
    (directory / "t.yaml").write_text(text, encoding="utf-8")
    from rkrepro.paper.loader import load_tables

    try:
        load_tables(directory)
    except TableError as error:
        assert "\n" not in str(error)
