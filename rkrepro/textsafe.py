"""Text that came from a file (a table's title, caption, labels) on its way to a terminal.

A table file is data, but a terminal obeys escape sequences (``ESC]0;title``, ``ESC[2J``) and
rich obeys its markup (``[bold]``, ``[link=...]``). :func:`clean` drops control characters at
load time; :func:`rich_text` makes a renderable that rich prints literally.
"""

from __future__ import annotations

import re

# C0 controls except tab and newline, DEL, and the C1 block (0x80-0x9f, e.g. CSI 0x9b).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean(text: str) -> str:
    """``text`` without control characters (tabs and newlines kept)."""
    return _CONTROL.sub("", text)


def escape(text: str) -> str:
    """For a string that rich will parse as markup: cleaned, with ``[`` escaped."""
    from rich.markup import escape as rich_escape

    return rich_escape(clean(text))


def rich_text(text: str, style: str = ""):
    """A :class:`rich.text.Text` of ``text``: never parsed as markup, no control characters."""
    from rich.text import Text

    return Text(clean(text), style=style)
