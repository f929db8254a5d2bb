"""``docs/index.md`` sorts every page into tutorial / how-to / reference / explanation
(tox's layout): a new page must be filed there, and the README links the index."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SECTIONS = ["Tutorials", "How-to guides", "Reference", "Explanation"]


def test_index_has_the_four_kinds_in_order() -> None:
    text = (DOCS / "index.md").read_text(encoding="utf-8")
    assert re.findall(r"^## (.+)$", text, re.M) == SECTIONS


def test_every_page_is_filed_once() -> None:
    text = (DOCS / "index.md").read_text(encoding="utf-8")
    linked = re.findall(r"\]\(([^)#]+)\)", text)
    pages = sorted(p.name for p in [*DOCS.glob("*.md"), *DOCS.glob("*.ipynb")])
    for page in pages:
        if page != "index.md":
            assert linked.count(page) == 1, (
                f"docs/{page}: file it once under one of {SECTIONS} in docs/index.md"
            )
    for target in linked:
        assert (DOCS / target).exists(), f"docs/index.md links to a missing {target}"


def test_readme_and_cli_guide_link_the_index_and_the_reference() -> None:
    assert "](docs/index.md)" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert "](cli-reference.md)" in (DOCS / "cli.md").read_text(encoding="utf-8")
