"""The README and docs/ as a reader follows them: every relative link and every `#anchor` in README.md,
SECURITY.md and docs/*.md leads somewhere, with GitHub's rules for heading anchors."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", ROOT / "SECURITY.md", *(ROOT / "docs").glob("*.md")])
README_MAX_LINES = 350

FENCE = re.compile(r"^(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
MD_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_LINK = re.compile(r"""<(?:img|a|source)\b[^>]*?\b(?:src|href|srcset)\s*=\s*["']([^"']+)["']""", re.I)
REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")


def prose(text: str) -> list[str]:
    """The lines outside fenced code blocks (links and headings there are code, not markdown)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text (markup removed) lowercased, punctuation dropped except
    `-` and `_`, each space a `-`."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a page has: its headings' slugs (repeats get -1, -2 …) and explicit ids/names."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    lines = prose(path.read_text(encoding="utf-8"))
    for line in lines:
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            n = seen.get(base, 0)
            found.add(base if n == 0 else f"{base}-{n}")
            seen[base] = n + 1
        found.update(re.findall(r"""<[a-z]+\b[^>]*\b(?:id|name)\s*=\s*["']([^"']+)["']""", line, re.I))
    return found


def links(path: Path) -> list[str]:
    out = []
    for line in prose(path.read_text(encoding="utf-8")):
        line = re.sub(r"`[^`]*`", "", line)  # inline code is not a link
        out += MD_LINK.findall(line) + HTML_LINK.findall(line) + REF_DEF.findall(line)
    return out


def test_slug_follows_githubs_rules() -> None:
    assert slug("Sizes on demand") == "sizes-on-demand"
    assert slug("Serve the variants through CloudFront (`Cdn=true`)") == "serve-the-variants-through-cloudfront-cdntrue"
    assert slug("Buffered mode (S3 → SQS → Lambda)") == "buffered-mode-s3--sqs--lambda"
    assert slug("The pipeline's settings") == "the-pipelines-settings"
    assert slug("HDR gain maps: `hdr` variants against libvips") == "hdr-gain-maps-hdr-variants-against-libvips"
    assert slug("snake_case and 2.0") == "snake_case-and-20"


def test_repeated_headings_get_numbered_anchors(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n## Measured\n\n```\n## not a heading\n```\n\n## Measured\n\n## Measured\n")
    assert anchors(page) == {"title", "measured", "measured-1", "measured-2"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("//"):
            continue  # http(s), mailto: not this test's business
        for candidate in target.split(",") if " " in target else [target]:  # srcset lists
            candidate = candidate.strip().split(" ")[0]
            file_part, _, anchor = candidate.partition("#")
            resolved = (page.parent / unquote(file_part)).resolve() if file_part else page
            if not resolved.is_relative_to(ROOT):
                broken.append(f"{candidate}: outside the repository")
                continue
            if not resolved.exists():
                broken.append(f"{candidate}: no file {resolved.relative_to(ROOT)}")
                continue
            if anchor and resolved.suffix == ".md" and unquote(anchor) not in anchors(resolved):
                broken.append(f"{candidate}: no heading #{anchor} in {resolved.relative_to(ROOT)}")
    assert not broken, "\n".join(broken)


def test_the_readme_is_a_front_page() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= README_MAX_LINES
    targets = links(ROOT / "README.md")
    assert "docs/page.webp" in targets, "the picture of the page"
    # A table of contents: every page under docs/ is linked from the README.
    linked = {t.partition("#")[0] for t in targets}
    missing = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if f"docs/{p.name}" not in linked]
    assert not missing, f"docs pages the README does not link: {missing}"


def test_every_docs_page_is_reachable_and_long_ones_start_with_contents() -> None:
    for page in sorted((ROOT / "docs").glob("*.md")):
        lines = page.read_text(encoding="utf-8").splitlines()
        sections = [line for line in prose("\n".join(lines)) if line.startswith("## ")]
        assert lines[0].startswith("# "), f"{page.name} starts with its title"
        if len(lines) > 120 and len(sections) > 3:
            head = "\n".join(lines[:40])
            own = {f"#{slug(s[3:])}" for s in sections}
            listed = set(re.findall(r"\]\((#[^)]+)\)", head))
            assert own <= listed, f"{page.name}: its contents at the top miss {sorted(own - listed)}"
