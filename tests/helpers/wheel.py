"""The project as a user installs it: a wheel built from a copy of this tree, in a fresh venv.

The venv has no pip and no source tree; its dependencies are this environment's
installed packages, seen through a path line in a `.pth` file. A path line adds a
directory to sys.path without processing the `.pth` files inside it, so the
editable install of this checkout (its `__editable__` finder, started from such a
file) never loads there: `import serve_app` finds the wheel's copy or nothing.
No download: torch, Ray and the rest are not installed again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from serve_app.paths import PROJECT_ROOT

# What a build may not see or need: the venv, git, data, caches, earlier builds.
NOT_COPIED = shutil.ignore_patterns(
    ".git", ".venv", "data", "dist", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".devkit*", ".whl"
)


@dataclass(frozen=True)
class InstalledWheel:
    wheel: Path
    venv: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def wan_video(self) -> Path:
        return self.venv / "bin" / "wan-video"

    @property
    def site_packages(self) -> Path:
        return next((self.venv / "lib").glob("python3*/site-packages"))


def build_wheel(work: Path) -> Path:
    """`pip wheel --no-deps .` of a copy of this tree (so the build's own build/ and egg-info stay out of it)."""
    source = work / "source"
    shutil.copytree(PROJECT_ROOT, source, symlinks=True, ignore=NOT_COPIED)
    dist = work / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    shutil.rmtree(source)  # nothing may run from it
    [wheel] = dist.glob("wan_serve-*.whl")
    return wheel


def install_in_fresh_venv(wheel: Path, venv: Path) -> InstalledWheel:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    installed = InstalledWheel(wheel, venv)
    (installed.site_packages / "project-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(installed.python), "install", "-q", "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return installed


def user_env(home: Path, **extra: str) -> dict[str, str]:
    """A user's shell: no PYTHONPATH or venv of ours, no $WAN_VIDEO_*, and a home of its own
    (so the default data directory, ~/.local/share/wan-video, is under `home`)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "XDG_DATA_HOME") and not k.startswith("WAN_VIDEO_")
    }
    env["HOME"] = str(home)
    env.update(extra)
    return env
