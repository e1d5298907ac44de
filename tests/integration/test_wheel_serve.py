"""`pip install .` then `wan-video serve` from another directory: the whole app, from a wheel.

The wheel is built from a copy of this tree and installed into a fresh venv that sees this
environment's dependencies but not the checkout (tests/helpers/wheel.py). `wan-video serve`
then runs from an empty directory with a home of its own: `serve run` of the shipped
serve_config.yaml (package data), on a Ray cluster of its own (RAY_ADDRESS=local: never the
session's), on a free port. A video generated through it by the installed `wan-video` proves
the configs, the tiny model's build and the data directory all work outside the source tree.

The fast checks of the same wheel (configs, data dir, `--check`) are tests/unit/test_wheel.py.
"""

from __future__ import annotations

import os
import signal
import subprocess

import httpx
import pytest
from ray._common.test_utils import wait_for_condition

from serve_app.video import probe_mp4
from tests.helpers.app import free_port
from tests.helpers.wheel import build_wheel, install_in_fresh_venv, user_env

pytestmark = pytest.mark.integration

START_TIMEOUT_S = 300


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _tail(path, lines: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def test_wan_video_serve_from_a_wheel_serves_videos(tmp_path):
    installed = install_in_fresh_venv(build_wheel(tmp_path / "build"), tmp_path / "venv")
    cwd, home = tmp_path / "cwd", tmp_path / "home"
    cwd.mkdir()
    home.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # A relative data dir, as a user types it: made absolute before Ray starts, so the replicas
    # (which run elsewhere) write where the user meant.
    env = user_env(home, WAN_VIDEO_DATA_DIR="data", RAY_ADDRESS="local")
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [str(installed.wan_video), "serve", "--port", str(port)],
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_condition(lambda: server.poll() is not None or _healthy(url), timeout=START_TIMEOUT_S)
        assert server.poll() is None, f"wan-video serve exited with {server.returncode}:\n{_tail(log_path)}"

        done = subprocess.run(
            [str(installed.wan_video), "generate", "a kite", "--size", "64x64", "--frames", "9", "--steps", "3", "-q"]
            + ["-o", "kite.mp4", "--url", url],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"{done.stderr}\n{_tail(log_path)}"
        info = probe_mp4((cwd / "kite.mp4").read_bytes())
        assert (info.frames, info.width, info.height) == (9, 64, 64)

        presets = subprocess.run(
            [str(installed.wan_video), "presets", "--url", url], cwd=cwd, env=env, capture_output=True, text=True
        )
        assert presets.returncode == 0 and "preview (default)" in presets.stdout
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)  # as Ctrl-C: serve run shuts the app and its Ray down
            try:
                server.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()

    # Jobs, videos and the tiny model went to the data directory the user named, not into the package.
    data = cwd / "data"
    assert (data / "jobs.sqlite3").is_file() and any((data / "videos").rglob("*.mp4"))
    assert (data / "models").is_dir()
    assert not (installed.site_packages / "data").exists()
    assert not (installed.site_packages / "serve_app" / "bundled" / "data").exists()
