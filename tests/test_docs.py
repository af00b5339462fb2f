"""The README and docs/ cite tests as the evidence for what they promise: every cited test
file and test function exists, so a renamed or moved test cannot leave a promise unbacked."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CITED = re.compile(r"(?<![\w/])((?:tests/)?[\w/]*test_\w+\.py)(?:::(\w+))?")


def _citations(text: str) -> list[tuple[str, str | None]]:
    return [(m.group(1), m.group(2)) for m in CITED.finditer(text) if "MODULE" not in m.group(1)]


def _broken(doc: Path) -> list[str]:
    tests = {p.name: p for p in (ROOT / "tests").rglob("test_*.py")}
    broken = []
    for file, name in _citations(doc.read_text()):
        path = ROOT / file if file.startswith("tests/") else tests.get(Path(file).name)
        if path is None or not path.is_file():
            broken.append(f"{doc.name}: no test file {file}")
        elif name and not re.search(rf"^def {name}\(", path.read_text(), re.MULTILINE):
            broken.append(f"{doc.name}: {file} has no {name}")
    return broken


def test_every_cited_test_exists() -> None:
    assert [b for doc in DOCS for b in _broken(doc)] == []


def test_a_stale_citation_is_found(tmp_path: Path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text(
        "see `tests/test_docs.py::test_every_cited_test_exists`, `test_docs.py::nothing_here`"
        " and `tests/data/test_gone.py`"
    )
    assert _broken(doc) == [
        "x.md: test_docs.py has no nothing_here",
        "x.md: no test file tests/data/test_gone.py",
    ]
