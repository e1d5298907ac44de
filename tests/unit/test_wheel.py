"""`pip install .` works without the source tree: a built wheel, in a fresh venv, from another directory.

The wheel is built from a copy of this tree (deleted before anything runs) and installed
into a venv that sees this environment's dependencies but neither the checkout nor its
editable install (tests/helpers/wheel.py). Everything then runs from an empty working
directory with a home of its own: the configs must come from the package's data, and
the data directory must land in the documented place, never in site-packages.

Starting the application itself (`wan-video serve`, which starts Ray) from the wheel is
tests/integration/test_wheel_serve.py.
"""

from __future__ import annotations

import json
import subprocess
import sysconfig
import zipfile

import pytest

from serve_app.paths import PROJECT_ROOT
from serve_app.video import probe_mp4
from tests.helpers.live_gateway import LiveGateway, SteppedGenerator
from tests.helpers.wheel import InstalledWheel, build_wheel, install_in_fresh_venv, user_env

TIMEOUT_S = 120


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> InstalledWheel:
    work = tmp_path_factory.mktemp("wheel")
    return install_in_fresh_venv(build_wheel(work), work / "venv")


@pytest.fixture
def user(tmp_path):
    """An empty working directory and a home of its own."""
    (tmp_path / "cwd").mkdir()
    (tmp_path / "home").mkdir()
    return tmp_path


def run(installed: InstalledWheel, user, *argv: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(installed.wan_video), *argv],
        cwd=user / "cwd",
        env=user_env(user / "home", **env),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def python(installed: InstalledWheel, user, code: str, **env: str) -> dict:
    """What `code` (which prints one JSON object) says, run by the venv's python."""
    done = subprocess.run(
        [str(installed.python), "-c", code],
        cwd=user / "cwd",
        env=user_env(user / "home", **env),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_wheel_carries_the_configs_and_the_web_page(installed):
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    for shipped in (PROJECT_ROOT / "configs").rglob("*"):
        if shipped.is_file():
            assert f"serve_app/bundled/configs/{shipped.relative_to(PROJECT_ROOT / 'configs')}" in names
    assert "serve_app/bundled/serve_config.yaml" in names
    assert "serve_app/web/index.html" in names
    assert not [n for n in names if n.startswith(("tests/", "bench/"))]


def test_it_imports_from_the_venv_and_finds_its_configs_there(installed, user):
    seen = python(
        installed,
        user,
        "import json, sys, serve_app, deployments.gateway, serve_app.paths as p\n"
        "from serve_app.config import ServiceArgs\n"
        "args = ServiceArgs()\n"
        "profile, catalog = args.model_profile(), args.preset_catalog()\n"
        "args.tier_table()\n"
        "print(json.dumps({'package': serve_app.__file__, 'deployments': deployments.gateway.__file__,\n"
        "  'root': str(p.PROJECT_ROOT), 'checkout': p.SOURCE_CHECKOUT, 'path': sys.path,\n"
        "  'profile': profile.name, 'presets': sorted(catalog.presets), 'data': str(args.data_path)}))",
    )
    site = str(installed.site_packages)
    assert seen["package"].startswith(site) and seen["deployments"].startswith(site)
    assert seen["root"] == f"{site}/serve_app/bundled" and seen["checkout"] is False
    # Nothing of the checkout on the path: only the project venv's packages (reached through
    # the .pth line; in CI that venv lies inside the checkout) may share its prefix.
    deps = sysconfig.get_paths()["purelib"]
    checkout = [entry for entry in seen["path"] if entry.startswith(str(PROJECT_ROOT)) and not entry.startswith(deps)]
    assert not checkout, checkout
    assert (seen["profile"], seen["presets"]) == ("tiny", ["official", "preview", "standard"])
    # The default data directory: the user's, never the package's.
    assert seen["data"] == str(user / "home" / ".local/share/wan-video")


def test_data_dir_follows_the_environment(installed, user):
    code = (
        "import json; from serve_app.config import ServiceArgs as A\n"
        "print(json.dumps([str(A(data_dir=d).data_path) for d in ('', 'videos', '/abs')]))"
    )
    default, relative, absolute = python(installed, user, code, WAN_VIDEO_DATA_DIR=str(user / "srv"))
    assert default == str(user / "srv")
    assert relative == str(user / "home" / ".local/share/wan-video/videos")
    assert absolute == "/abs"
    xdg = python(installed, user, code, XDG_DATA_HOME=str(user / "xdg"))
    assert xdg[0] == str(user / "xdg" / "wan-video")


def test_help_and_offline_presets_from_another_directory(installed, user):
    help_text = run(installed, user, "--help")
    assert help_text.returncode == 0 and "usage: wan-video" in help_text.stdout
    assert "exit codes:" in help_text.stdout and "69   no service answered" in help_text.stdout
    presets = run(installed, user, "presets", "--offline")
    assert presets.returncode == 0, presets.stderr
    assert presets.stdout.splitlines()[1].split()[:3] == ["preview", "(default)", "640x480"]


def test_serve_check_builds_the_shipped_app_from_package_data(installed, user):
    done = run(installed, user, "serve", "--check", WAN_VIDEO_DATA_DIR="relative/data")
    assert done.returncode == 0, done.stderr
    lines = dict(line.strip().split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    bundled = f"{installed.site_packages}/serve_app/bundled"
    assert lines["config"] == f"{bundled}/serve_config.yaml"
    assert lines["presets"] == f"{bundled}/configs/presets.yaml"
    assert lines["tiers"] == f"{bundled}/configs/tiers.yaml"
    assert lines["model"].startswith("tiny")
    # A relative $WAN_VIDEO_DATA_DIR is made absolute where the user typed it, before Ray starts.
    assert lines["data_dir"] == str(user / "cwd" / "relative/data")
    gpu = run(installed, user, "serve", "--config", "configs/serve_gpu.yaml", "--check")
    assert gpu.returncode == 0, gpu.stderr
    assert f"config: {bundled}/configs/serve_gpu.yaml" in gpu.stdout


def test_serve_with_an_unknown_config_lists_the_shipped_ones(installed, user):
    done = run(installed, user, "serve", "--config", "nope.yaml")
    assert done.returncode == 2
    assert "does not exist" in done.stderr and "configs/serve_gpu.yaml" in done.stderr


def test_the_installed_cli_generates_against_a_service(installed, user, tmp_path):
    with LiveGateway(tmp_path / "data", SteppedGenerator(free_running=True)) as live:
        done = run(
            installed, user, "generate", "a kite", "--size", "64x64", "--frames", "9", "--steps", "2", "-q",
            "-o", "kite.mp4", WAN_VIDEO_URL=live.url,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert probe_mp4((user / "cwd" / "kite.mp4").read_bytes()).frames == 9
