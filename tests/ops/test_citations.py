"""A comment that gives a reason cites a document the repository has: every ``*.md`` named in
the code, tests, manifests and rules exists, every section of DESIGN.md or docs/ quoted by name
is a heading there, and every invariant cited by number is listed in DESIGN.md."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("services", "libs", "tests", "bench", "deploy", "k8s")
SUFFIXES = {".py", ".yml", ".yaml", ".sql", ".toml", ".json"}
EXTRA = ("Makefile", "Tiltfile", "pyproject.toml", "README.md", "DESIGN.md")

_DOC = re.compile(r"(?<![\w/.-])((?:docs/)?[A-Za-z][\w-]*\.md)\b")
_SECTION = re.compile(r"((?:docs/)?[A-Za-z][\w-]*\.md),?\s+\"([^\"]+)\"")
_INVARIANT = re.compile(r"\b[Ii]nvariants? (\d+)(?: and (\d+))?")


def _files() -> list[Path]:
    found = [p for d in SOURCES for p in (ROOT / d).rglob("*") if p.suffix in SUFFIXES and p.is_file()]
    found += [ROOT / name for name in EXTRA if (ROOT / name).is_file()]
    return [p for p in found if "__pycache__" not in p.parts and p.name != "test_citations.py"]


def _doc(name: str, at: Path) -> Path | None:
    for candidate in (ROOT / name, ROOT / "docs" / name, at.parent / name):
        if candidate.is_file():
            return candidate
    return None


def _headings(doc: Path) -> set[str]:
    return {line.lstrip("#").strip() for line in doc.read_text().splitlines() if line.startswith("#")}


def test_every_cited_document_and_section_exists() -> None:
    missing: list[str] = []
    for path in _files():
        text = path.read_text(errors="replace")
        where = path.relative_to(ROOT)
        missing.extend(
            f"{where}: {name} is not in the repository"
            for name in set(_DOC.findall(text))
            if _doc(name, path) is None
        )
        for name, quoted in set(_SECTION.findall(text)):
            doc = _doc(name, path)
            # A quotation may run over lines of a comment: "Exactly once, as\n    # the publisher ..."
            section = " ".join(quoted.replace("#", " ").split())
            if doc is not None and section not in _headings(doc):
                missing.append(f'{where}: {name} has no section "{section}"')
    assert not missing, "\n".join(sorted(missing))


def test_every_cited_invariant_is_listed_in_design_md() -> None:
    design = (ROOT / "DESIGN.md").read_text()
    section = design.split("## Invariants", 1)[1].split("\n## ", 1)[0]
    listed = {int(n) for n in re.findall(r"^(\d+)\. \*\*", section, flags=re.MULTILINE)}
    assert listed == set(range(1, len(listed) + 1)), listed
    cited: list[str] = []
    for path in _files():
        numbers = [n for pair in _INVARIANT.findall(path.read_text(errors="replace")) for n in pair if n]
        cited.extend(f"{path.relative_to(ROOT)}: invariant {n}" for n in numbers if int(n) not in listed)
    assert not cited, "\n".join(cited)
