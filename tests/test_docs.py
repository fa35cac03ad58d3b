"""The README is a user's guide (short, no dated records), and every relative link in the docs resolves."""

import re

from conftest import ROOT

DOCS = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "benchmarks" / "results").glob("*.md")),
]


def test_readme_is_a_short_guide_without_dated_records():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    assert not re.search(r"20[0-9]{2}-[01][0-9]-[0-3][0-9]", text), "dates belong in benchmarks/results/"
    for command in ("make demo", "make test", "scripts/embed.py", "scripts/plot_run.py", "docs/reproducing.md"):
        assert command in text


def test_every_relative_link_resolves():
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" in target:
                continue
            assert (doc.parent / target).exists(), f"{doc.relative_to(ROOT)} links to missing {target}"
