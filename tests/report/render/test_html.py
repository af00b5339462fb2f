"""HTML (:mod:`rkrepro.report.render.html`): one balanced, self-contained page. The page in a
real browser is in ``tests/test_browser.py``."""

from __future__ import annotations

from html.parser import HTMLParser

from rkrepro.report.render.html import to_html

from ..helpers_report import report_of


class _Balanced(HTMLParser):
    VOID = {"meta", "br", "img", "link"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.cells = 0

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.stack.append(tag)
        self.cells += tag == "td"

    def handle_endtag(self, tag):
        assert self.stack and self.stack.pop() == tag, tag


def test_html_is_one_balanced_self_contained_file(store, tmp_path):
    image = tmp_path / "plot.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    text = to_html(report_of(store[0], None), [image])
    parser = _Balanced()
    parser.feed(text)
    parser.close()
    assert parser.stack == [] and parser.cells > 80
    assert "data:image/png;base64," in text
    assert "http" not in text.replace("http-equiv", "")  # nothing fetched from elsewhere
