"""On a GPU: the shipped GPU config starts as the README starts it and makes a video per preset.

Every other test runs the tiny model; this one runs `serve run
configs/serve_gpu.yaml` (5B architecture, random weights) in a subprocess
with a fresh data_dir, so a deployment that cannot start a replica (a
warm-up that dies, a packing that does not fit, a speed option that fails
inside a replica) fails here. One request per preset at the preset's shape
and frame count (what compiles, warms and allocates), with 4 steps: the step
count changes nothing the deployment could fail on. About 2-3 minutes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

from bench.common import free_port  # noqa: E402
from bench.serve_process import ServeRun, write_config  # noqa: E402
from serve_app.paths import CONFIG_DIR  # noqa: E402
from serve_app.video import probe_mp4  # noqa: E402

CONFIG = os.environ.get("WAN_GPU_CONFIG", str(CONFIG_DIR / "serve_gpu.yaml"))
START_LIMIT_S = 300


@pytest.fixture(scope="module")
def gpu_app(tmp_path_factory):
    work = tmp_path_factory.mktemp("gpu-app")
    (work / "data").mkdir()
    port = free_port()
    server = ServeRun(write_config(Path(CONFIG), work / "data", port, {}), work / "serve.log")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.stop()


def _wait_until_serving(client: httpx.Client, server: ServeRun) -> None:
    while time.perf_counter() - server.started_at < START_LIMIT_S:
        assert server.alive(), f"serve run exited; log: {server.log_path.read_text()[-3000:]}"
        try:
            health = client.get("/healthz", timeout=10)
            if health.status_code == 200 and health.json().get("status") == "ok":
                return
        except httpx.TransportError:
            pass
        time.sleep(2)
    pytest.fail(f"the app was not healthy within {START_LIMIT_S} s; log: {server.log_path.read_text()[-3000:]}")


@pytest.mark.parametrize("preset", ["preview", "standard", "official"])
def test_shipped_gpu_config_makes_a_video_per_preset(gpu_app, preset):
    url, server = gpu_app
    with httpx.Client(base_url=url, timeout=600) as client:
        _wait_until_serving(client, server)
        answer = client.post(
            "/v1/videos",
            json={
                "prompt": f"smoke test {preset}",
                "preset": preset,
                "num_inference_steps": 4,
                "quality": "exact",
                "cache": False,
            },
            headers={"Prefer": "wait=600"},
        )
        assert answer.status_code == 200, answer.text
        video = answer.json()
        assert video["status"] == "completed" and video["preset"] == preset
        mp4 = client.get(f"/v1/videos/{video['id']}/content").content
    info = probe_mp4(mp4)
    assert (info.frames, info.width, info.height) == (video["num_frames"], video["width"], video["height"])
