"""The docs stay true to the code (issue 19): every setting with a default is in docs/contract.md, every relative
link of the README, UPGRADING.md and docs/ resolves (anchors included), and every ``make`` target the docs name
exists. The checkers are tested on small broken documents too, so that a checker that finds nothing cannot pass."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

from shared.config import DEFAULTS

ROOT = Path(__file__).parents[2]
DOCS = sorted([ROOT / "README.md", ROOT / "UPGRADING.md", *(ROOT / "docs").rglob("*.md")])

FENCE = re.compile(r"^(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"(?<!!)\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
MAKE = re.compile(r"\bmake((?:[ \t]+[A-Za-z_][A-Za-z0-9_]*=\S*)*)((?:[ \t]+[a-z][a-z0-9-]*)+)")
TARGET = re.compile(r"^([A-Za-z0-9_.-]+(?:\s+[A-Za-z0-9_.-]+)*)\s*:(?!=)", re.MULTILINE)


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def code_text(text: str) -> str:
    """What a reader would type: fenced code blocks and inline code spans, one per line."""
    parts, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if fenced:
            parts.append(line)
        else:
            parts.extend(m.group(2) for m in CODE_SPAN.finditer(line))
    return "\n".join(parts)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text without markup, lower-case, only letters, digits, spaces, '-' and
    '_' kept, spaces turned into '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").replace("*", "")
    text = re.sub(r"<[^>]+>", "", text)
    kept = "".join(c for c in text.lower() if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(text: str) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in prose_lines(text):
        m = HEADING.match(line)
        if m:
            base = slug(m.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
        found.update(HTML_ANCHOR.findall(line))
    return found


def broken_links(path: Path) -> list[str]:
    """Every relative link of ``path`` whose file or anchor does not exist."""
    text = path.read_text(encoding="utf-8")
    problems = []
    for line in prose_lines(text):
        for target in LINK.findall(CODE_SPAN.sub("", line)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not ours to check
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            if not dest.exists():
                problems.append(f"{path.name}: {target}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text(encoding="utf-8")):
                problems.append(f"{path.name}: {target}: no heading with the anchor #{anchor}")
    return problems


def make_targets(makefile: str) -> set[str]:
    targets: set[str] = set()
    for m in TARGET.finditer(makefile):
        targets.update(t for t in m.group(1).split() if not t.startswith("."))
    return targets


def named_make_targets(text: str) -> set[str]:
    return {t for m in MAKE.finditer(code_text(text)) for t in m.group(2).split()}


# -- the checkers find what is wrong ------------------------------------------------------------------------------


def test_slugs_follow_githubs_rule() -> None:
    assert slug("Status API") == "status-api"
    assert slug("Migrating from Linux Consumption (Y1)") == "migrating-from-linux-consumption-y1"
    assert slug("The sweep (`sweep_customers`)") == "the-sweep-sweep_customers"
    assert slug("Not built yet / known limits") == "not-built-yet--known-limits"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}


def test_the_link_checker_finds_a_missing_file_and_a_missing_anchor(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Here\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Top\n[ok](other.md#here) [self](#top) [web](https://example.com/x)\n"
        "[gone](missing.md) [bad](other.md#there) [badself](#nowhere)\n"
        "```\n[in code](ignored.md)\n```\n`[span](ignored.md)`\n",
        encoding="utf-8",
    )
    assert broken_links(page) == [
        "page.md: missing.md: no such file",
        "page.md: other.md#there: no heading with the anchor #there",
        "page.md: #nowhere: no heading with the anchor #nowhere",
    ]


def test_make_targets_are_read_from_code_only() -> None:
    text = "Make sure you `make demo`, then `make PYTHON=python3.11 test unit`.\n```sh\nmake bench  # slow\n```\n"
    assert named_make_targets(text) == {"demo", "test", "unit", "bench"}
    assert {"demo", "check", "test"} <= make_targets((ROOT / "Makefile").read_text(encoding="utf-8"))


# -- the docs -----------------------------------------------------------------------------------------------------


def test_the_docs_exist() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in DOCS}
    for page in (
        "UPGRADING.md",
        "docs/contract.md",
        "docs/guarantees.md",
        "docs/design.md",
        "docs/sweep.md",
        "docs/deploy.md",
        "docs/operations.md",
        "docs/local-development.md",
        "docs/testing.md",
        "docs/performance.md",
        "docs/reliability.md",
    ):
        assert page in names


def test_the_readme_is_a_front_page() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; the front page holds at most 200"


@pytest.mark.parametrize("setting", sorted(DEFAULTS))
def test_every_setting_with_a_default_is_in_the_contract(setting: str) -> None:
    contract = (ROOT / "docs" / "contract.md").read_text(encoding="utf-8")
    assert f"`{setting}`" in contract, f"{setting} (shared/config.py DEFAULTS) is not in docs/contract.md"


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken_links(page) == []


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_make_target_named_exists(page: Path) -> None:
    targets = make_targets((ROOT / "Makefile").read_text(encoding="utf-8"))
    named = named_make_targets(page.read_text(encoding="utf-8"))
    assert named - targets == set(), f"{page.name} names make targets the Makefile lacks"
