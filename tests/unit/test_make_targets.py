"""`make run` installs the runtime dependencies only; `make test` adds the test extras.

Read from `make -n` (what make would run, nothing run) for a venv that does not exist yet,
as on a fresh machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from serve_app.paths import PROJECT_ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make, which `make test` itself needs")


def planned(target: str, tmp_path) -> list[str]:
    # Run by `make test`, this make is a sub-make: without the outer one's variables it
    # neither prints "Entering directory" lines nor inherits its flags.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    done = subprocess.run(
        ["make", "--no-print-directory", "-n", target, f"VENV={tmp_path / 'venv'}"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.splitlines()


def test_make_run_installs_no_test_extras_and_serves(tmp_path):
    lines = planned("run", tmp_path)
    installs = [line for line in lines if "pip install" in line]
    assert any(line.endswith("pip install -q -e .") for line in installs)
    assert not [line for line in installs if "[test]" in line]
    assert lines[-1] == f"{tmp_path / 'venv'}/bin/wan-video serve"


def test_make_test_installs_the_test_extras_before_running_pytest(tmp_path):
    lines = planned("test", tmp_path)
    extras = next(i for i, line in enumerate(lines) if line.endswith('pip install -q -e ".[test]"'))
    pytest_run = next(i for i, line in enumerate(lines) if line.endswith("-m pytest"))
    assert extras < pytest_run
