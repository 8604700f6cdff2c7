"""Every citation of the protocol reference names a section docs/protocol.md really has.

Code comments cite the reference as `docs/protocol.md §4.1` or, in the older form, as
`PROTOCOL.md §4.1`; both name the same sections. A bare `§2.3` counts too, in a file that cites
the reference somewhere (it continues that citation: "PROTOCOL.md §3.1, §4.1"), unless another
document's name stands right before it ("ARCHITECTURE.md §2").
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "protocol.md"
# Where citations live: the code, the tests, the benchmarks, the docs and the README.
SCANNED = ("bbx", "tests", "bench", "docs", "README.md")
TEXT_SUFFIXES = {".py", ".md", ".rst", ".txt", ".toml", ".sh", ".cfg"}

_NUMBER = r"(\d+(?:\.\d+)*)"
# A numbered heading: "## 4. Session sequences", "### 4.1 Attach".
_HEADING = re.compile(rf"^#{{1,6}}\s+{_NUMBER}\.?\s")
# Any section sign with a number, and the word standing right before it.
_SECTION = re.compile(rf"(\S*)\s*§{_NUMBER}")
# The two names of the reference (older code says PROTOCOL.md).
_OURS = re.compile(r"(?:^|[\s(\"'`])(?:docs/protocol\.md|PROTOCOL\.md)$")
# Another document's name right before the sign: its sections are not ours to check.
_OTHER_DOC = re.compile(r"\.(?:md|rst|txt)$")


def headings(doc: Path) -> list[str]:
    """The section numbers of the numbered headings of `doc`, in order."""
    out = []
    in_code = False
    for line in doc.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        m = None if in_code else _HEADING.match(line)
        if m:
            out.append(m.group(1))
    return out


def _shown(m: re.Match) -> str:
    return m.group(0).strip().lstrip("([\"'`,;: ")


def citations(text: str) -> list[tuple[int, str, str]]:
    """(line number, section, what the citation says) for each citation of the reference."""
    found = []
    cites_us = False
    candidates = []
    for number, line in enumerate(text.splitlines(), 1):
        for m in _SECTION.finditer(line):
            before, section = m.group(1), m.group(2)
            if _OURS.search(" " + before):
                cites_us = True
                found.append((number, section, _shown(m)))
            elif not _OTHER_DOC.search(before.rstrip(",;:")):
                candidates.append((number, section, _shown(m)))
    if cites_us:
        found.extend(candidates)
    return sorted(found)


def scanned_files(root: Path):
    for name in SCANNED:
        path = root / name
        if path.is_file():
            yield path
        elif path.is_dir():
            for p in sorted(path.rglob("*")):
                if (p.is_file() and p.suffix in TEXT_SUFFIXES and "__pycache__" not in p.parts
                        and p.resolve() != Path(__file__).resolve()):
                    yield p


def broken_citations(root: Path, doc: Path) -> list[str]:
    """One line per citation under `root` that names no heading of `doc`."""
    known = set(headings(doc))
    problems = []
    for path in scanned_files(root):
        text = path.read_text(encoding="utf-8", errors="replace")
        for line, section, cited in citations(text):
            if section not in known:
                problems.append(f"{path.relative_to(root)}:{line}: {cited!r} — "
                                f"{doc.name} has no heading numbered {section}")
    return problems


def test_every_cited_section_is_a_heading_of_docs_protocol_md():
    problems = broken_citations(ROOT, DOC)
    assert not problems, ("citations of sections docs/protocol.md does not have (add the section "
                          "or fix the citation):\n" + "\n".join(problems))


def test_the_code_does_cite_the_reference():
    # If the citation syntax changed, the check above would pass vacuously.
    cited = {s for p in scanned_files(ROOT) for _, s, _ in citations(p.read_text(errors="replace"))}
    assert {"1.1", "4.1", "5.4", "6"} <= cited


def test_section_numbers_are_unique_and_every_chapter_is_there():
    numbers = headings(DOC)
    assert len(numbers) == len(set(numbers)), sorted(n for n in numbers if numbers.count(n) > 1)
    chapters = [int(n) for n in numbers if "." not in n]
    assert chapters == list(range(len(chapters))) and len(chapters) >= 12
    for n in numbers:
        if "." in n:
            assert n.rsplit(".", 1)[0] in numbers, f"section {n} has no chapter heading"


def test_the_checker_names_file_and_line_and_accepts_both_forms(tmp_path):
    (tmp_path / "docs").mkdir()
    doc = tmp_path / "docs" / "protocol.md"
    doc.write_text("# Title\n\n## 1. One\n\n### 1.1 Sub\n\n```\n## 9. not a heading\n```\n")
    (tmp_path / "bbx").mkdir()
    (tmp_path / "bbx" / "a.py").write_text(
        "# fine (PROTOCOL.md §1.1, §1)\n"
        "# fine: docs/protocol.md §1\n"
        "# broken (PROTOCOL.md §1.2)\n"
        "# broken continuation (docs/protocol.md §1, §9)\n"
        "# someone else's: ARCHITECTURE.md §7\n")
    (tmp_path / "bbx" / "b.py").write_text("# no citation of ours here, so this is not one: §8\n")
    problems = broken_citations(tmp_path, doc)
    assert problems == [
        "bbx/a.py:3: 'PROTOCOL.md §1.2' — protocol.md has no heading numbered 1.2",
        "bbx/a.py:4: '§9' — protocol.md has no heading numbered 9",
    ]
