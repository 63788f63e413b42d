"""The documentation a newcomer reads: every relative link in README.md, BENCHMARKS.md, SECURITY.md and
docs/*.md leads to a file of the repository (and to a heading there, for `#anchor` links), nothing points
outside it, and README's quick-start commands are the ones the repository runs (`.ci/run`)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted([ROOT / "README.md", ROOT / "BENCHMARKS.md", ROOT / "SECURITY.md", *(ROOT / "docs").glob("*.md")])
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _prose(path: Path) -> str:
    return _FENCE.sub("", path.read_text())


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", _prose(path), re.M)}


def _links(path: Path) -> list[str]:
    return [m.group(1) for m in _LINK.finditer(_prose(path))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file_and_heading_of_the_repository(doc):
    broken = []
    for target in _links(doc):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.is_relative_to(ROOT):
            broken.append(f"{target}: outside the repository")
        elif not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, broken


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_document_names_a_path_outside_the_repository(doc):
    text = doc.read_text()
    outside = re.findall(r"(?:\.\./shared|\bshared/[\w-]+\.md|/work/|/root/|/home/)[^\s`)]*", text)
    assert not outside, outside


def test_the_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    said = re.search(r"The test command itself is `([^`]+)`", readme)
    assert said, "README names its test command"
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith("#")]
    assert ci[-1] == said.group(1), (ci[-1], said.group(1))
    quick_start = re.search(r"## Quick start.*?```sh\n(.*?)```", readme, re.S).group(1)
    commands = [line for line in quick_start.splitlines() if line and not line.startswith("#")]
    assert commands == ["scripts/in-venv cache-proxy demo", "bash .ci/run"], commands
    assert os.access(ROOT / "scripts" / "in-venv", os.X_OK)
