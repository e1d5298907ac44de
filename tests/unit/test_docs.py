"""The README's configuration reference is the one generated from the models."""

from __future__ import annotations

from serve_app.config_doc import readme_block, render
from serve_app.paths import PROJECT_ROOT


def test_readme_config_reference_is_current():
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert readme_block(readme) == render(), "run `python -m serve_app.config_doc --write`"


def test_quickstart_has_exactly_two_commands_and_ci_runs_the_test_one():
    readme = (PROJECT_ROOT / "README.md").read_text()
    quickstart = readme.split("## Quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in quickstart.strip().splitlines()]
    assert commands == ["make run", "make test"]
    assert "make test" in (PROJECT_ROOT / ".ci" / "run").read_text()
