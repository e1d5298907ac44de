"""The whole graph over HTTP against a running Serve app (tiny model, CPU)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from ray._common.test_utils import wait_for_condition

from serve_app.video import decode_mp4, probe_mp4

pytestmark = pytest.mark.integration

SMALL = {"width": 64, "height": 64, "num_frames": 9, "num_inference_steps": 3, "fps": 8}
# Big enough that 100 steps take seconds on a CPU (each step ~50 ms), so a
# deadline or a disconnect lands mid-loop.
SLOW = {"width": 640, "height": 480, "num_frames": 17, "num_inference_steps": 100, "guidance_scale": 5.0}


@pytest.mark.parametrize(
    "request_fields",
    [
        SMALL,
        {"size": "96x64", "num_frames": 13, "num_inference_steps": 2, "fps": 12, "seed": 5},
        {"width": 64, "height": 128, "num_frames": 5, "num_inference_steps": 2, "fps": 24, "guidance_scale": 1.0},
    ],
    ids=["square", "size-string", "portrait-no-guidance"],
)
def test_post_then_download_mp4_matches_request(client, request_fields):
    resp = client.post("/v1/videos", json={"prompt": "a lighthouse at dusk", **request_fields})
    assert resp.status_code == 200, resp.text
    video = resp.json()
    assert video["object"] == "video" and video["status"] == "completed" and video["progress"] == 100
    width, height = (
        map(int, request_fields["size"].split("x"))
        if "size" in request_fields
        else (request_fields["width"], request_fields["height"])
    )
    assert video["size"] == f"{width}x{height}"
    assert video["num_frames"] == request_fields["num_frames"]
    assert float(video["seconds"]) == pytest.approx(request_fields["num_frames"] / request_fields["fps"], abs=0.01)
    if "seed" in request_fields:
        assert video["seed"] == request_fields["seed"]

    content = client.get(f"/v1/videos/{video['id']}/content")
    assert content.status_code == 200
    assert content.headers["content-type"] == "video/mp4"
    info = probe_mp4(content.content)
    assert (info.frames, info.width, info.height) == (request_fields["num_frames"], width, height)
    assert info.fps == pytest.approx(request_fields["fps"])
    assert info.codec == "h264"

    again = client.get(f"/v1/videos/{video['id']}")
    assert again.status_code == 200 and again.json() == video


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_same_seed_same_video(client):
    def frames(seed: int) -> np.ndarray:
        video = client.post("/v1/videos", json={"prompt": "rain on a window", "seed": seed, **SMALL}).json()
        return decode_mp4(client.get(f"/v1/videos/{video['id']}/content").content)

    first, second, other = frames(42), frames(42), frames(43)
    # The generated frames are bit-identical for a seed (see the stage
    # equivalence test); x264 in a Ray worker is not bit-reproducible from one
    # encode to the next, so compare pictures by PSNR: same seed ~30+ dB,
    # another seed (the tiny model's noise) well under 20 dB.
    assert _psnr(first, second) > 25.0
    assert _psnr(first, other) < 20.0


def test_invalid_request_is_400_naming_the_field(client):
    resp = client.post("/v1/videos", json={"prompt": "x", "num_frames": 16})
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["code"] == "invalid_request" and error["param"] == "num_frames"
    assert "16" in error["message"] and "4k+1" in error["message"]


def test_deadline_mid_loop_stops_denoising(client, denoiser_stats):
    # Prefer: wait makes it synchronous whatever the estimate says.
    resp = client.post(
        "/v1/videos", json={"prompt": "a slow sunrise", "deadline_s": 1.5, **SLOW}, headers={"Prefer": "wait=60"}
    )
    assert resp.status_code == 504, resp.text
    error = resp.json()["error"]
    assert error["code"] == "deadline_exceeded"
    assert error["stage"] == "denoise"
    assert 0 < error["step"] < SLOW["num_inference_steps"]
    # The denoiser's own record: it stopped at the step it reported, not later.
    last = denoiser_stats()["last_run"]
    assert {k: last[k] for k in ("outcome", "steps_done", "total_steps")} == {
        "outcome": "deadline_exceeded",
        "steps_done": error["step"],
        "total_steps": 100,
    }
    assert last["resumed_from_step"] == 0  # a first run (checkpoints on, nothing to resume)
    failed = client.get(f"/v1/videos/{error['video_id']}").json()
    assert failed["status"] == "failed" and failed["error"]["code"] == "deadline_exceeded"
    assert client.get(f"/v1/videos/{error['video_id']}/content").status_code == 409


def test_client_disconnect_stops_denoising(serve_url, denoiser_stats):
    before = denoiser_stats()["outcomes"].get("cancelled", 0)
    with pytest.raises(httpx.ReadTimeout):
        # The client gives up after 1 s and closes the connection.
        httpx.post(
            f"{serve_url}/v1/videos",
            json={"prompt": "a long walk", "deadline_s": 100, **SLOW},
            headers={"Prefer": "wait=100"},
            timeout=1.0,
        )

    def cancelled() -> bool:
        return denoiser_stats()["outcomes"].get("cancelled", 0) == before + 1

    wait_for_condition(cancelled, timeout=30)
    last = denoiser_stats()["last_run"]
    assert last["outcome"] == "cancelled"
    assert last["steps_done"] < SLOW["num_inference_steps"]


def test_healthz_reports_every_stage(client):
    resp = client.get("/healthz")
    assert resp.status_code == 200
    health = resp.json()
    assert health["status"] == "ok"
    assert set(health["stages"]) == {"prompt_encoder", "denoiser", "video_encoder"}
    for stage in health["stages"].values():
        assert stage["ok"] and stage["replica"]["device"] == "cpu"
        assert stage["replica"]["model"] == "wan2.2-ti2v-tiny@seed0"


def test_openapi_docs_served(client):
    spec = client.get("/openapi.json").json()
    assert "/v1/videos" in spec["paths"] and "/v1/videos/{video_id}/content" in spec["paths"]
    assert client.get("/docs").status_code == 200
