"""The documentation points at things that exist.

* every relative link in README.md and docs/*.md resolves to a file (or folder) of the
  repository, and a ``#anchor`` to a heading of the page it names;
* every repository path written in backticks there (``twin/cell.py``,
  ``potline/test_daemon_config.py::test_…`` for tests) exists, and a ``::test`` names a
  test function of that file;
* every ``docs/<page>.md §N`` citation in source, test, config and documentation files
  names a page and a section heading that exist (``§1.2–1.4`` and ``§2–§4`` ranges: both
  ends), and a quoted section name (``docs/domain.md §2 "Quench"``,
  ``docs/architecture.md, "Clock"``) names a heading of that page (under §N when given);
* every repository file named in code, tests and configs (``twin/cell.py`` in a comment)
  exists;
* nothing points outside the repository at the original design brief.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in DOCS.glob("*.md"))]
#: top-level folders and files whose text is scanned for citations
SCANNED_DIRS = ("twin", "potctl", "refining", "plc_bridge", "hil_rigs", "potline", "config", "tests", "benchmarks",
                "deploy", "docs", ".ci")  # fmt: skip
SCANNED_SUFFIXES = {".py", ".toml", ".md", ".service", ""}
SCANNED_FILES = ("README.md", "PERFORMANCE.md", "pyproject.toml")
#: the first component of a path written in backticks that makes it a repository path
REPO_DIRS = {"twin", "potctl", "refining", "plc_bridge", "hil_rigs", "potline", "config", "tests", "benchmarks",
             "deploy", "docs", ".ci"}  # fmt: skip

_SEC = r"[0-9]+[a-z]?(?:\.[0-9]+)?"
#: ``docs/domain.md §1.2–1.4 "Name"``: page, first section, optional last section, optional name
CITE_SECTION = re.compile(
    rf"docs/(?P<page>[\w-]+)\.md[,:]?\s*\(?\s*§\s*(?P<a>{_SEC})(?:\s*[–-]\s*§?\s*(?P<b>{_SEC}))?"
    rf"(?:[,:]?\s*\(?\s*[\"“](?P<name>[^\"”]+)[\"”])?"
)
#: ``docs/domain.md "Name"`` or ``docs/architecture.md, ("Name"``
CITE_NAME = re.compile(r"docs/(?P<page>[\w-]+)\.md[,:]?\s*\(?\s*[\"“](?P<name>[^\"”]+)[\"”]")
#: any mention of a docs page
CITE_PAGE = re.compile(r"docs/(?P<page>[\w-]+)\.md")
#: a section written without § (``docs/domain.md S55``, ``docs/domain.md 5b:``): not a citation that resolves
CITE_BARE = re.compile(r"docs/(?P<page>[\w-]+)\.md,?\s+(?P<label>S\d+|\d+[a-z]?(?:\.\d+)?)\b")
HEADING = re.compile(r"^(?P<hashes>#{1,6})\s+(?P<text>.+?)\s*#*\s*$")
SECTION_ID = re.compile(rf"^§(?P<id>{_SEC})\b")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\((?P<img>[^)\s]+)\)")
#: a repository file named in code (no templates: a brace, angle bracket or star stops the match)
CODE_FILE = re.compile(
    r"(?<![\w/.{<*-])((?:twin|potctl|refining|plc_bridge|hil_rigs|potline|config|tests|benchmarks|deploy|docs)"
    r"/[\w./-]+\.(?:py|toml|md|service|json|csv))(?![\w{<*])"
)
CODE_PATH = re.compile(r"`(?P<path>\.?[\w][\w.\-]*(?:/[\w.\-]+)+/?)(?:::(?P<test>\w+))?`")
#: what would point outside the repository at the design brief it was built from
FORBIDDEN = [
    re.compile(r"\.\./shared\b"),
    re.compile(r"/work/" + r"shared\b"),
    re.compile(r"\bDESIGN" + r"\.md\b"),
    re.compile(r"\bDOMAIN" + r"_BRIEF\b"),
    re.compile(r"\bECOSYSTEM" + r"_BRIEF\b"),
    re.compile(r"\(DESIGN" + r"[:)]|\bDESIGN" + r": "),
]


# ---------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Heading:
    level: int
    text: str
    line: int


def headings(page: Path) -> list[Heading]:
    """The Markdown headings of ``page`` (outside fenced code blocks)."""
    out: list[Heading] = []
    fenced = False
    for i, line in enumerate(page.read_text(encoding="utf-8").splitlines()):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        m = None if fenced else HEADING.match(line)
        if m:
            out.append(Heading(len(m["hashes"]), m["text"].strip(), i))
    return out


def slug(text: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"`", "", text.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for h in headings(page):
        s = slug(h.text)
        n = seen.get(s, 0)
        seen[s] = n + 1
        out.add(s if n == 0 else f"{s}-{n}")
    return out


def sections(page: Path) -> dict[str, list[Heading]]:
    """Section id (``0``, ``1.2``, ``5b``) -> the headings inside that section (its own first)."""
    hs = headings(page)
    out: dict[str, list[Heading]] = {}
    for i, h in enumerate(hs):
        m = SECTION_ID.match(h.text)
        if not m:
            continue
        inside = [h]
        for nxt in hs[i + 1 :]:
            if nxt.level <= h.level:
                break
            inside.append(nxt)
        out[m["id"]] = inside
    return out


def _name_matches(name: str, hs: list[Heading]) -> bool:
    want = " ".join(name.split()).lower()
    return any(want in " ".join(h.text.split()).lower() for h in hs)


def scanned_files() -> Iterator[Path]:
    me = Path(__file__).resolve()
    for name in SCANNED_FILES:
        if (ROOT / name).is_file():
            yield ROOT / name
    for d in SCANNED_DIRS:
        base = ROOT / d
        if not base.is_dir():
            continue
        for p in sorted(base.rglob("*")):
            if not p.is_file() or p.resolve() == me or "__pycache__" in p.parts or "results" in p.parts:
                continue
            if p.suffix in SCANNED_SUFFIXES and (p.suffix or d == ".ci"):
                yield p


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _rel(p: Path) -> str:
    return p.relative_to(ROOT).as_posix()


# ---------------------------------------------------------------------- links and paths in the docs


def test_the_three_docs_pages_exist_and_the_readme_links_them() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for page in ("architecture", "domain", "operations"):
        assert (DOCS / f"{page}.md").is_file(), f"docs/{page}.md is missing"
        assert f"](docs/{page}.md" in readme, f"README.md does not link docs/{page}.md"


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_resolve(page: str) -> None:
    src = ROOT / page
    text = src.read_text(encoding="utf-8")
    bad = []
    for m in LINK.finditer(text):
        target = m["target"] or m["img"]
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:, file: ...
            continue
        path_part, _, anchor = target.partition("#")
        dest = (src.parent / path_part).resolve() if path_part else src.resolve()
        where = f"{page}:{_line_of(text, m.start())}: {target}"
        if not dest.exists():
            bad.append(f"{where}: no such file")
            continue
        if ROOT not in dest.parents and dest != ROOT:
            bad.append(f"{where}: points outside the repository")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{where}: no heading with anchor #{anchor} in {_rel(dest)}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("page", PAGES)
def test_repository_paths_in_backticks_exist(page: str) -> None:
    """``twin/cell.py`` from the root; ``potline/test_x.py::test_y`` under ``tests/`` too."""
    text = (ROOT / page).read_text(encoding="utf-8")
    bad = []
    for m in CODE_PATH.finditer(text):
        path, test = m["path"], m["test"]
        if path.split("/", 1)[0] not in REPO_DIRS or any(c in path for c in "<>*…"):
            continue
        candidates = [ROOT / path, ROOT / "tests" / path]
        found = next((c for c in candidates if c.exists()), None)
        where = f"{page}:{_line_of(text, m.start())}: {m[0]}"
        if found is None:
            bad.append(f"{where}: no such file")
        elif test and not re.search(rf"^\s*(?:async\s+)?def {re.escape(test)}\(", found.read_text(encoding="utf-8"),
                                    re.M):  # fmt: skip
            bad.append(f"{where}: {_rel(found)} has no test {test}")
    assert not bad, "\n".join(bad)


# ---------------------------------------------------------------------- citations in the code


def test_section_citations_name_sections_that_exist() -> None:
    pages: dict[str, dict[str, list[Heading]]] = {}
    bad = []
    for f in scanned_files():
        text = f.read_text(encoding="utf-8", errors="replace")
        for m in CITE_SECTION.finditer(text):
            where = f"{_rel(f)}:{_line_of(text, m.start())}: {' '.join(m[0].split())}"
            page = DOCS / f"{m['page']}.md"
            if not page.is_file():
                bad.append(f"{where}: no page docs/{m['page']}.md")
                continue
            secs = pages.setdefault(m["page"], sections(page))
            for sec in (m["a"], m["b"]):
                if sec is not None and sec not in secs:
                    bad.append(f"{where}: docs/{m['page']}.md has no section §{sec} (has {', '.join(secs)})")
            if m["name"] and m["a"] in secs and not _name_matches(m["name"], secs[m["a"]]):
                bad.append(f"{where}: no heading {m['name']!r} in §{m['a']} of docs/{m['page']}.md")
        for m in CITE_BARE.finditer(text):
            bad.append(f"{_rel(f)}:{_line_of(text, m.start())}: {m[0]!r}: cite a section as "
                       f"docs/{m['page']}.md §N (a heading of that page)")  # fmt: skip
    assert not bad, "\n".join(bad)


def test_named_citations_and_page_mentions_resolve() -> None:
    bad = []
    for f in scanned_files():
        text = f.read_text(encoding="utf-8", errors="replace")
        for m in CITE_PAGE.finditer(text):
            if not (DOCS / f"{m['page']}.md").is_file():
                bad.append(f"{_rel(f)}:{_line_of(text, m.start())}: no page docs/{m['page']}.md")
        for m in CITE_NAME.finditer(text):
            page = DOCS / f"{m['page']}.md"
            if page.is_file() and not _name_matches(m["name"], headings(page)):
                bad.append(f"{_rel(f)}:{_line_of(text, m.start())}: no heading {' '.join(m['name'].split())!r} "
                           f"in docs/{m['page']}.md")  # fmt: skip
    assert not bad, "\n".join(bad)


def test_repository_paths_named_in_code_exist() -> None:
    """A file of the repository named in a comment, docstring or config (``twin/cell.py``,
    ``tests/twin/test_twin_physics.py``) exists; outputs (``benchmarks/results/``) and
    templates (``{name}``, ``<kind>``, ``*``) aside. README.md and docs/ are checked above."""
    bad = []
    for f in scanned_files():
        if f.suffix == ".md" and (f.parent == DOCS or f.parent == ROOT):
            continue
        text = f.read_text(encoding="utf-8", errors="replace")
        for m in CODE_FILE.finditer(text):
            path = m[1]
            if path.startswith("benchmarks/results/") or (ROOT / path).exists():
                continue
            bad.append(f"{_rel(f)}:{_line_of(text, m.start())}: {path}: no such file")
    assert not bad, "\n".join(bad)


def test_nothing_points_at_the_design_brief_outside_the_repository() -> None:
    bad = []
    for f in scanned_files():
        text = f.read_text(encoding="utf-8", errors="replace")
        for pat in FORBIDDEN:
            for m in pat.finditer(text):
                bad.append(f"{_rel(f)}:{_line_of(text, m.start())}: {m[0]!r} (the docs in docs/ are the reference)")
    assert not bad, "\n".join(bad)


# ---------------------------------------------------------------------- the checker itself


def test_the_checker_reads_citations_as_written() -> None:
    """The patterns on the forms the code uses (so a silent regex never passes everything)."""
    forms = {
        "docs/domain.md §1.2–1.4": ("domain", "1.2", "1.4", None),
        "docs/domain.md §2–§4": ("domain", "2", "4", None),
        "docs/domain.md §0: 1.673e-7": ("domain", "0", None, None),
        'docs/domain.md §2 "Quench"': ("domain", "2", None, "Quench"),
        "(docs/domain.md §5b)": ("domain", "5b", None, None),
    }
    for text, want in forms.items():
        m = CITE_SECTION.search(text)
        assert m is not None and (m["page"], m["a"], m["b"], m["name"]) == want, text
    m = CITE_NAME.search('docs/architecture.md, "Clock" contract')
    assert m is not None and (m["page"], m["name"]) == ("architecture", "Clock")
    assert CITE_BARE.search("docs/domain.md S55") and not CITE_BARE.search("docs/domain.md §5b")
    assert slug("§4 Potline electrical system") == "4-potline-electrical-system"
    assert slug("Journal and `potline events`") == "journal-and-potline-events"
    assert "1.3" in sections(DOCS / "domain.md") and "5b" in sections(DOCS / "domain.md")
