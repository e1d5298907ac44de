"""The docs stay true to the code: the generated reference is current, the Quickstart is the
two commands CI runs, and no link between pages points at a file that moved."""

from __future__ import annotations

import re

from serve_app.config_doc import DOC_PATH, reference_block, render
from serve_app.paths import PROJECT_ROOT

PAGES = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def test_config_reference_is_current():
    doc = (PROJECT_ROOT / DOC_PATH).read_text()
    assert reference_block(doc) == render(), "run `python -m serve_app.config_doc --write`"


def test_quickstart_has_exactly_two_commands_and_ci_runs_the_test_one():
    readme = (PROJECT_ROOT / "README.md").read_text()
    quickstart = readme.split("## Quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in quickstart.strip().splitlines()]
    assert commands == ["make run", "make test"]
    assert "make test" in (PROJECT_ROOT / ".ci" / "run").read_text()


def test_readme_stays_short():
    # The README is the way in: Quickstart and pointers. Reference text belongs in docs/.
    assert len((PROJECT_ROOT / "README.md").read_text().splitlines()) <= 300


def test_relative_links_point_at_files_that_exist():
    broken, seen = [], 0
    for page in PAGES:
        # Code blocks hold shell and Python, where `a[i](x)` is not a link.
        for target in LINK.findall(FENCE.sub("", page.read_text())):
            if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # http(s), mailto, or an anchor on the same page
            seen += 1
            if not (page.parent / target.split("#", 1)[0]).exists():
                broken.append(f"{page.relative_to(PROJECT_ROOT)}: {target}")
    assert seen, "no relative links found: the pattern no longer matches the pages"
    assert not broken, broken
