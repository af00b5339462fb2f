"""Text that came from a file or a store (a table's title, caption, labels; a run's tags) on its
way to a terminal, a page or a spreadsheet.

A table file and a shared store are data, but a terminal obeys escape sequences (``ESC]0;title``,
``ESC[2J``) and rich obeys its markup (``[bold]``, ``[link=...]``). :func:`clean` drops control
characters where the text is read (tables at load time, run tags by the reader) and again where
it is shown; :func:`one_line` also makes line breaks spaces, for values that must stay on one
line (a store's tags, a Markdown cell); :func:`rich_text` makes a renderable that rich prints
literally. Each report format escapes its own syntax on top (``rkrepro.report.render``).
"""

from __future__ import annotations

import re

# C0 controls except tab and newline, DEL, the C1 block (0x80-0x9f, e.g. CSI 0x9b), and the
# bidirectional overrides and isolates (they reorder what a terminal or page shows).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def clean(text: str) -> str:
    """``text`` without control characters (tabs and newlines kept)."""
    return _CONTROL.sub("", text)


def one_line(text: str) -> str:
    """``text`` without control characters, its tabs and line breaks made spaces."""
    return clean(text).replace("\n", " ").replace("\t", " ")


def escape(text: str) -> str:
    """For a string that rich will parse as markup: cleaned, with ``[`` escaped."""
    from rich.markup import escape as rich_escape

    return rich_escape(clean(text))


def rich_text(text: str, style: str = ""):
    """A :class:`rich.text.Text` of ``text``: never parsed as markup, no control characters."""
    from rich.text import Text

    return Text(clean(text), style=style)
