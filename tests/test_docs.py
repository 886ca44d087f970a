"""The docs stand alone: citations resolve inside the repository, and every suite key, Recipe field
and command-line flag is documented.

Pure file reading plus imports of ddbench modules (no torch work). A citation is a docs page
followed by section marks: ``docs/methods.md §5``, ``docs/theory.md §4.2``, ``docs/design.md §3,
§4`` or, inside docs/, a link such as ``[methods.md](methods.md) §3``; a section is a numbered
heading of that page (``## 5. Title``, ``### 4.2 Title``). A bare ``§N`` refers to a page the
same file cites (or, in docs/, to the page itself).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
from functools import cache
from pathlib import Path

import pytest

import ddbench.cli
import ddbench.contracts.recipe
import ddbench.run.suite

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TREES = ("ddbench", "plugins", "tests", "docs", "examples", "README.md")
SUFFIXES = {".py", ".md", ".toml", ".txt", ".rst", ".cfg", ".ini", ".yaml", ".yml"}
SKIP_DIRS = {".git", ".venv", "venv", "__pycache__", "node_modules", "build", "dist", ".pytest_cache", ".ddbench",
             ".benchmarks"}
THIS = Path(__file__).resolve()

SECTION = r"\d+(?:\.\d+)*"
# A page name followed by its section marks. The page may be spelt docs/NAME.md, NAME.md, ``docs/NAME.md``
# or a Markdown link [NAME.md](NAME.md); a list such as "§3, §5", "§4-§6" or "§4 and §6" continues it.
CITATION = re.compile(
    r"(?<![\w-])(?P<page>[A-Za-z][\w-]*)\.md(?:`{1,2}|\]\([^)\s]*\))?[ \t]*(?:\n[ \t#*>]*)?§\s*(?P<first>" + SECTION + r")"
    r"(?P<more>(?:\s*(?:,|-|–|and|or)\s*§\s*" + SECTION + r")*)")
MARK = re.compile(r"§\s*(" + SECTION + r")")
HEADING = re.compile(r"^#{2,4}\s+(" + SECTION + r")\.?\s+\S", re.M)
# What must not be cited: pages outside the repository. Spelt in pieces so the rewrite script and
# this file's own check leave this file alone.
OUTSIDE = [re.compile(p) for p in (r"(?<![\w-])spec" + "s/", "DESIGN" + r"\.md", r"\.\./" + "shared")]
CODE_SPAN = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
FIRST_TOKEN = re.compile(r"\s*\[*([^\s=\[\]]+)")


# --------------------------------------------------------------------------------------------
# The files and the pages
# --------------------------------------------------------------------------------------------
@cache
def text_files() -> tuple[Path, ...]:
    """Every text file of the documented trees, this file excluded."""
    found = []
    for tree in TREES:
        top = ROOT / tree
        if top.is_file():
            found.append(top)
            continue
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".egg-info"))
            found += [Path(dirpath) / f for f in sorted(filenames) if Path(f).suffix in SUFFIXES]
    return tuple(p for p in found if p.resolve() != THIS and p.is_file())


@cache
def read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return ""


@cache
def sections(page: str) -> frozenset[str]:
    """The section numbers of docs/PAGE.md (empty if the page does not exist)."""
    path = DOCS / f"{page}.md"
    return frozenset(HEADING.findall(read(path))) if path.is_file() else frozenset()


def numbered_pages() -> list[str]:
    return sorted(p.stem for p in DOCS.glob("*.md") if sections(p.stem))


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def citations(text: str) -> list[tuple[str, list[str], int, int]]:
    """(page, section numbers, start, end) of every citation in ``text``."""
    out = []
    for m in CITATION.finditer(text):
        marks = [m.group("first"), *MARK.findall(m.group("more"))]
        out.append((m.group("page"), marks, m.start(), m.end()))
    return out


def test_the_numbered_pages_exist_and_number_each_section_once():
    for page in ("methods", "theory", "design"):
        assert (DOCS / f"{page}.md").is_file(), f"docs/{page}.md is missing: the code cites it by section."
        numbers = HEADING.findall(read(DOCS / f"{page}.md"))
        duplicates = sorted({n for n in numbers if numbers.count(n) > 1})
        assert not duplicates, f"docs/{page}.md numbers sections {duplicates} more than once: give each heading its own number."
    assert {str(n) for n in range(1, 14)} <= sections("methods"), "docs/methods.md must keep sections 1 to 13."
    assert {*map(str, range(1, 10)), "4.1", "4.2", "4.3"} <= sections("theory"), "docs/theory.md must keep §1-§9, §4.1-§4.3."
    assert {str(n) for n in range(1, 8)} <= sections("design"), "docs/design.md must keep sections 1 to 7."


def test_every_citation_names_an_existing_section():
    problems = []
    for path in text_files():
        text = read(path)
        for page, marks, start, _ in citations(text):
            if not (DOCS / f"{page}.md").is_file():
                problems.append(f"{rel(path)}:{line_of(text, start)}: cites {page}.md §{marks[0]}, but docs/{page}.md does not "
                                f"exist: cite a page of docs/ (methods, theory, design, ...).")
                continue
            for mark in marks:
                if mark not in sections(page):
                    problems.append(f"{rel(path)}:{line_of(text, start)}: cites docs/{page}.md §{mark}, which has no heading "
                                    f"'{mark}. ...': cite one of its sections ({', '.join(sorted(sections(page), key=_order))}) "
                                    "or add the heading.")
    assert not problems, "\n".join(problems)


def _order(number: str) -> tuple[int, ...]:
    return tuple(int(p) for p in number.split("."))


def test_every_bare_section_mark_resolves_in_a_page_the_file_cites():
    """``§13.1`` alone: a section of a page the same file cites (docs/ pages: of themselves too)."""
    problems = []
    for path in text_files():
        text = read(path)
        if "§" not in text:
            continue
        found = citations(text)
        cited = {page for page, *_ in found if (DOCS / f"{page}.md").is_file()}
        if path.parent == DOCS and sections(path.stem):
            cited.add(path.stem)
        candidates = sorted(cited) or numbered_pages()
        spans = [(start, end) for *_, start, end in found]
        for m in MARK.finditer(text):
            if any(start <= m.start() < end for start, end in spans):
                continue
            if not any(m.group(1) in sections(page) for page in candidates):
                problems.append(f"{rel(path)}:{line_of(text, m.start())}: §{m.group(1)} is a section of none of "
                                f"{', '.join(f'docs/{p}.md' for p in candidates)}: name the page (e.g. docs/methods.md "
                                f"§{m.group(1)}) or fix the number.")
    assert not problems, "\n".join(problems)


def test_nothing_cites_outside_the_repository():
    problems = []
    for path in text_files():
        for number, line in enumerate(read(path).splitlines(), 1):
            for pattern in OUTSIDE:
                if pattern.search(line):
                    problems.append(f"{rel(path)}:{number}: {line.strip()[:120]!r} points outside the repository: cite "
                                    "docs/methods.md, docs/theory.md or docs/design.md §N instead.")
                    break
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------------------------
# Everything a user can type is documented
# --------------------------------------------------------------------------------------------
@cache
def documented() -> frozenset[str]:
    """The first word of every inline code span in README.md and docs/*.md (fenced blocks left out)."""
    words = set()
    for path in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        text = FENCE.sub("", read(path))
        for span in CODE_SPAN.findall(text):
            m = FIRST_TOKEN.match(span)
            if m:
                words.add(m.group(1).rstrip(",.:;"))
    return frozenset(words)


@cache
def docs_text() -> str:
    return "\n".join(read(p) for p in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))])


@cache
def parser() -> argparse.ArgumentParser:
    return ddbench.cli.build_parser()


def commands(top: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """``top`` and every subcommand parser below it, however deep (plugin subcommands included)."""
    found, seen = [top], {id(top)}
    for parent in found:
        for action in parent._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    if id(sub) not in seen:
                        seen.add(id(sub))
                        found.append(sub)
    return found


def flags() -> list[tuple[str, str]]:
    """(command, flag) for every optional argument of every command, help and version aside."""
    out = []
    for command in commands(parser()):
        for action in command._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
                continue
            names = [s for s in action.option_strings if s.startswith("--")] or list(action.option_strings)
            out += [(command.prog, name) for name in names if name not in ("-h", "--help", "--version")]
    return sorted(set(out))


@pytest.mark.parametrize("command", sorted(p.prog for p in commands(parser())[1:]))
def test_every_subcommand_is_documented(command):
    assert command in docs_text(), f"document `{command}` in docs/cli.md (a section for it, with its flags)."


@pytest.mark.parametrize(("command", "flag"), flags(), ids=[f"{c}:{f}" for c, f in flags()])
def test_every_flag_is_documented(command, flag):
    assert flag in documented(), (
        f"document `{flag}` of `{command}` in docs/cli.md: a row or sentence that starts a code span with it, "
        f"e.g. `{flag} VALUE`.")


SUITE_KEYS = sorted([("suite", k) for k in ddbench.run.suite.SUITE_KEYS] + [("[[task]]", k) for k in ddbench.run.suite.TASK_KEYS]
                    + [("[[distiller]]", k) for k in ddbench.run.suite.DISTILLER_KEYS])


@pytest.mark.parametrize(("table", "key"), SUITE_KEYS, ids=[f"{t}:{k}" for t, k in SUITE_KEYS])
def test_every_suite_key_is_documented(table, key):
    assert key in documented(), f"document the {table} key `{key}` of suite files in docs/suites.md (its table of keys)."


@pytest.mark.parametrize("field", sorted(f.name for f in dataclasses.fields(ddbench.contracts.recipe.Recipe)))
def test_every_recipe_field_is_documented(field):
    assert field in documented(), (
        f"document the Recipe field `{field}` in docs/design.md §3.2 (the evaluation recipe's table): its default, "
        "meaning and whether an artifact may declare it.")
