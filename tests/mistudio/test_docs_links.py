"""The README and docs/ point only at what exists: every relative link's file, every #anchor's
heading, and every repository path they name (tests/..., engine/..., bench/...). Plain files, no
database: the docs move with the tree, and a moved test or module breaks a sentence somewhere."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted([ROOT / "README.md", ROOT / "bench" / "README.md", *(ROOT / "docs").glob("*.md")])

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
# A path into the repository: one of its top-level folders, then path characters. Not after a
# word, a slash or a placeholder's bracket, so `sae_lens/training/...` and `<data>/models/...`
# (another project's file, a runtime path) are not taken for ours.
TOP = "engine|training|corpora|gpus|mistudio|tests|bench|templates|samples|scripts|docs"
REPO_PATH = re.compile(rf"(?<![\w/.<>{{}}$-])((?:{TOP})/[\w./-]*)")


def prose(text: str) -> str:
    """The text outside fenced code blocks (commands there are examples, not references)."""
    return "\n".join(line for block, line in _blocks(text) if not block)


def _blocks(text: str):
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        yield fenced, line


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for fenced, line in _blocks(path.read_text()):
        match = re.match(r"#{1,6} (.+)", line)
        if fenced or not match:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> list[str]:
    return [target for target in LINK.findall(prose(path.read_text()))
            if not re.match(r"[a-z]+:", target)]  # http:, https:, mailto:


def repo_paths(path: Path) -> list[str]:
    return sorted({match.rstrip(".,;:") for match in REPO_PATH.findall(prose(path.read_text()))})


def _id(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("doc", DOCS, ids=_id)
def test_every_relative_link_names_a_file_that_exists(doc):
    missing = [target for target in links(doc)
               if (file := target.split("#")[0]) and not (doc.parent / file).exists()]
    assert not missing, f"{_id(doc)} links to files that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=_id)
def test_every_anchor_link_resolves_to_a_heading(doc):
    unresolved = []
    for target in links(doc):
        file, _, anchor = target.partition("#")
        if not anchor:
            continue
        linked = (doc.parent / file) if file else doc
        if linked.suffix == ".md" and linked.exists() and anchor not in anchors(linked):
            unresolved.append(target)
    assert not unresolved, f"{_id(doc)} links to headings that do not exist: {unresolved}"


@pytest.mark.parametrize("doc", DOCS, ids=_id)
def test_every_repository_path_named_exists(doc):
    missing = [named for named in repo_paths(doc) if not (ROOT / named).exists()]
    assert not missing, f"{_id(doc)} names paths that do not exist (moved or renamed?): {missing}"


def test_the_readme_links_every_page_of_docs():
    linked = {(ROOT / target.split("#")[0]).resolve() for target in links(ROOT / "README.md")}
    unlinked = [_id(page) for page in (ROOT / "docs").glob("*.md") if page.resolve() not in linked]
    assert not unlinked, f"README.md's index leaves out {unlinked}"


def test_the_slug_is_githubs():
    assert slug("In a notebook: engine.run.run") == "in-a-notebook-enginerunrun"
    assert slug("Workers, GPUs and hosts") == "workers-gpus-and-hosts"
    assert slug("`manage.py train --sweep`") == "managepy-train---sweep"
