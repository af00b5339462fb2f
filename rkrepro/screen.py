"""Tables that fit the terminal they are printed on.

A row id, a model name or a number broken over two lines (``densenet-bc-k24-d25`` / ``0``,
``1,040,`` / ``578``) cannot be typed or read, and rich breaks any column when a table is wider
than the terminal. So every table command offers its layouts, widest first, and prints the
first one whose *whole* cells fit: ids, names and numbers never break; only the columns named as
free text (a status, a note) wrap, between words. On a wide terminal that is the widest layout;
at 80 columns (a normal terminal, and rich's width for a pipe or a file) a narrower one: a
group's label on a line of its own above its members, fewer columns with a legend, or a row's
models one per line.

Torch- and mlflow-free: ``rkrepro list`` uses it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

from rich import box
from rich.console import Console, RenderableType
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

# A rendered table never measures wider than this (a bound for measuring, not a width).
_UNBOUNDED = 100_000
INDENT = "  "


def plain(renderable: Any) -> str:
    """The text of a cell or header."""
    if isinstance(renderable, Text):
        return renderable.plain
    return renderable if isinstance(renderable, str) else ""


def keep_whole(table: Table, console: Console, wrap: Collection[str] = ()) -> Table:
    """Make every column of ``table`` keep its cells whole (never wrapped, never squeezed below
    its longest line), except the columns whose header is in ``wrap``, which wrap between words
    (at their longest word). Returns ``table``."""
    options = console.options.update_width(_UNBOUNDED)
    for column in table.columns:
        if plain(column.header).replace("\n", " ") in wrap:
            column.no_wrap = False
            continue
        column.no_wrap = True
        cells = [column.header, *column.cells]
        widest = max(Measurement.get(console, options, cell).maximum for cell in cells)
        column.min_width = max(column.min_width or 0, widest)
    return table


def widths(console: Console, renderable: RenderableType) -> Measurement:
    """The fewest columns ``renderable`` needs without breaking what must stay whole
    (``minimum``), and the columns it takes with nothing wrapped at all (``maximum``)."""
    options = console.options.update_width(_UNBOUNDED)
    return Measurement.get(console, options, renderable)


def fits(console: Console, renderable: RenderableType) -> bool:
    return widths(console, renderable).minimum <= console.width


def first_fitting(
    console: Console,
    layouts: Sequence[Callable[[], Table]],
    wrap: Collection[str] = (),
) -> Table:
    """The first of ``layouts`` (widest first) that fits ``console`` with nothing wrapped; else
    the first that fits with only its free-text columns (``wrap``) wrapped; else the last one
    (which then breaks as little as rich can)."""
    made = [keep_whole(make(), console, wrap) for make in layouts]
    measured = [widths(console, table) for table in made]
    for table, measure in zip(made, measured, strict=True):
        if measure.maximum <= console.width:
            return table
    for table, measure in zip(made, measured, strict=True):
        if measure.minimum <= console.width:
            return table
    return made[-1]


def stacked(table: Table) -> Table:
    """``table`` without its first column: each value of that column (a label printed once per
    group, e.g. a row id; a repeated one counts once) becomes a bold line of its own in the next
    column, above its group's lines, which are indented. The table is drawn without side
    borders."""
    first, second, *rest = table.columns
    out = Table(
        title=table.title,
        caption=table.caption,
        header_style=table.header_style,
        title_justify=table.title_justify,
        caption_justify=table.caption_justify,
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
    )
    for column in (second, *rest):
        out.add_column(
            column.header,
            justify=column.justify,
            style=column.style,
            header_style=column.header_style,
            no_wrap=column.no_wrap,
        )
    labels, cells = list(first.cells), [list(column.cells) for column in (second, *rest)]
    previous = None
    for index, row in enumerate(table.rows):
        label = labels[index]
        if plain(label) and plain(label) != previous:
            previous = plain(label)
            if index and len(out.rows):
                out.rows[-1].end_section = True
            heading = label if isinstance(label, Text) else Text(str(label))
            heading = heading.copy()
            heading.stylize("bold")
            out.add_row(heading, *([""] * len(rest)))
        values = [column[index] for column in cells]
        out.add_row(indented(values[0]), *values[1:], style=row.style)
    return out


def indented(cell: Any) -> Any:
    """``cell`` moved right by :data:`INDENT`, every line of it, also the lines it wraps to."""
    from rich.padding import Padding

    return Padding(cell, (0, 0, 0, len(INDENT)))


def show(
    console: Console,
    table: Table,
    *,
    wrap: Collection[str] = (),
    narrow: Callable[[Table], Table] | None = stacked,
) -> None:
    """Print ``table`` as it is where it fits with its cells whole, else ``narrow(table)``."""
    layouts: list[Callable[[], Table]] = [lambda: table]
    if narrow is not None:
        layouts.append(lambda: narrow(table))
    console.print(first_fitting(console, layouts, wrap))
