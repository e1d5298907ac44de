"""The job API over HTTP: OpenAI SDK, async jobs, progress streams, cancel, webhooks."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import httpx
import pytest
from ray._common.test_utils import wait_for_condition

from serve_app.video import probe_mp4
from tests.helpers.app import WEBHOOK_SECRET

pytestmark = pytest.mark.integration

SMALL = {"width": 64, "height": 64, "num_frames": 9, "num_inference_steps": 3, "fps": 8}
# ~50 ms a step on two cores: seconds of denoising, room to act mid-loop.
SLOW = {"width": 640, "height": 480, "num_frames": 17, "num_inference_steps": 100}


def _async_job(client, body) -> dict:
    resp = client.post("/v1/videos", json=body, headers={"Prefer": "respond-async"})
    assert resp.status_code == 202, resp.text
    assert resp.headers["preference-applied"] == "respond-async"
    return resp.json()


def _wait_terminal(client, video_id: str, timeout: float = 60) -> dict:
    state = {}

    def done() -> bool:
        state.update(client.get(f"/v1/videos/{video_id}").json())
        return state["status"] in ("completed", "failed")

    wait_for_condition(done, timeout=timeout, retry_interval_ms=100)
    return state


def _sse_events(serve_url: str, video_id: str) -> list[dict]:
    events = []
    with httpx.stream("GET", f"{serve_url}/v1/videos/{video_id}/events", timeout=60) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    return events


def test_openai_sdk_round_trip(serve_url):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{serve_url}/v1", api_key="unused", max_retries=0)
    video = client.videos.create_and_poll(
        prompt="a paper boat on a puddle",
        seconds="1",
        size="64x64",
        extra_body={"fps": 8, "num_inference_steps": 2},
        poll_interval_ms=100,
    )
    assert video.status == "completed" and video.progress == 100
    assert video.size == "64x64" and video.seconds == "1"  # echoed as sent: 9 frames at 8 fps
    mp4 = client.videos.download_content(video.id).read()
    info = probe_mp4(mp4)
    assert (info.frames, info.width, info.height, info.fps) == (9, 64, 64, 8.0)
    thumbnail = client.videos.download_content(video.id, variant="thumbnail").read()
    assert thumbnail[:2] == b"\xff\xd8"  # JPEG

    assert client.videos.retrieve(video.id).id == video.id
    listed = [v.id for v in client.videos.list(limit=100, order="desc")]
    assert video.id in listed

    # Remix through the real graph: the source's settings and seed, a new prompt.
    remix = client.videos.poll(
        client.videos.remix(video.id, prompt="a paper boat in the rain").id, poll_interval_ms=100
    )
    assert remix.status == "completed" and remix.remixed_from_video_id == video.id
    assert (remix.prompt, remix.size, remix.seconds) == ("a paper boat in the rain", "64x64", "1")
    assert remix.model_extra["seed"] == video.model_extra["seed"]
    assert probe_mp4(client.videos.download_content(remix.id).read()).frames == 9
    with pytest.raises(openai.BadRequestError) as refused:
        client.videos.create(prompt="x", size="1280x720")  # OpenAI's size: not one this model makes
    assert refused.value.param == "size" and "1280x704" in refused.value.message

    deleted = client.videos.delete(video.id)
    assert deleted.deleted is True and deleted.id == video.id
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(video.id)


def test_list_paginates_with_after(client):
    ids = [client.post("/v1/videos", json={"prompt": f"page {i}", **SMALL}).json()["id"] for i in range(3)]
    first = client.get("/v1/videos", params={"limit": 2, "order": "asc"}).json()
    assert first["object"] == "list" and len(first["data"]) == 2 and first["has_more"] is True
    rest = client.get("/v1/videos", params={"limit": 100, "order": "asc", "after": first["last_id"]}).json()
    seen = [v["id"] for v in first["data"]] + [v["id"] for v in rest["data"]]
    assert seen.index(ids[0]) < seen.index(ids[1]) < seen.index(ids[2])
    assert len(seen) == len(set(seen))


def test_async_job_streams_every_step_over_sse(client, serve_url):
    job = _async_job(client, {"prompt": "clouds", **{**SMALL, "num_inference_steps": 6}})
    assert job["status"] == "queued" and job["eta_s"] is not None
    events = _sse_events(serve_url, job["id"])
    kinds = [e["type"] for e in events]
    assert kinds[0] == "queued" and kinds[-1] == "completed"
    steps = [e["step"] for e in events if e["type"] == "progress"]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert all(e["total_steps"] == 6 for e in events if e["type"] == "progress")
    assert events[-1]["video"]["status"] == "completed"
    # Polling shows the same end state.
    assert client.get(f"/v1/videos/{job['id']}").json()["progress"] == 100


def test_websocket_streams_the_same_events(client, serve_url):
    from websockets.sync.client import connect

    job = _async_job(client, {"prompt": "waves", **{**SMALL, "num_inference_steps": 4}})
    messages = []
    with connect(serve_url.replace("http", "ws") + f"/v1/videos/{job['id']}/ws", open_timeout=30) as ws:
        for raw in ws:
            messages.append(json.loads(raw))
    assert [m["step"] for m in messages if m["type"] == "progress"] == [1, 2, 3, 4]
    assert [m["seq"] for m in messages] == sorted(m["seq"] for m in messages)
    assert messages[-1]["type"] == "completed"


def test_a_refused_websocket_is_answered_at_the_handshake_through_the_serve_proxy(serve_url):
    """Checks run before accept, so the handshake itself fails: with uvicorn's denial-response
    extension reaching the replica, as our 404 JSON; without it, as the 403 of a close before accept."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    with pytest.raises(InvalidStatus) as refused:
        connect(serve_url.replace("http", "ws") + "/v1/videos/video_nope/ws", open_timeout=30)
    response = refused.value.response
    assert response.status_code in (404, 403), response.status_code
    if response.status_code == 404:
        assert json.loads(response.body)["error"]["code"] == "not_found"


def test_cancel_stops_the_loop(client, serve_url, denoiser_stats):
    job = _async_job(client, {"prompt": "a long pan", **SLOW})
    seen_step = 0
    with httpx.stream("GET", f"{serve_url}/v1/videos/{job['id']}/events", timeout=60) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: ") and json.loads(line[6:]).get("type") == "progress":
                seen_step = json.loads(line[6:])["step"]
                break
    cancelled = client.post(f"/v1/videos/{job['id']}/cancel")
    assert cancelled.status_code == 200
    final = _wait_terminal(client, job["id"])
    assert final["status"] == "failed" and final["error"]["code"] == "cancelled"
    wait_for_condition(lambda: denoiser_stats()["last_run"].get("outcome") == "cancelled", timeout=30)
    last = denoiser_stats()["last_run"]
    assert seen_step <= last["steps_done"] < SLOW["num_inference_steps"]
    assert client.get(f"/v1/videos/{job['id']}/content").status_code == 409
    assert client.post(f"/v1/videos/{job['id']}/cancel").status_code == 409


def test_delete_running_job_stops_it_and_forgets_it(client, denoiser_stats):
    job = _async_job(client, {"prompt": "to be deleted", **SLOW})
    wait_for_condition(lambda: client.get(f"/v1/videos/{job['id']}").json()["status"] == "in_progress", timeout=30)
    resp = client.delete(f"/v1/videos/{job['id']}")
    assert resp.json() == {"id": job["id"], "object": "video.deleted", "deleted": True}
    wait_for_condition(lambda: client.get(f"/v1/videos/{job['id']}").status_code == 404, timeout=30)
    assert denoiser_stats()["last_run"]["steps_done"] < SLOW["num_inference_steps"]


def test_idempotency_key_returns_the_same_job(client):
    body = {"prompt": "same job twice", **SMALL}
    headers = {"Idempotency-Key": "retry-123", "Prefer": "respond-async"}
    first = client.post("/v1/videos", json=body, headers=headers).json()
    second = client.post("/v1/videos", json=body, headers=headers).json()
    assert first["id"] == second["id"]
    _wait_terminal(client, first["id"])


def test_unknown_ids_and_early_content(client):
    missing = client.get("/v1/videos/video_" + "0" * 32)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    job = _async_job(client, {"prompt": "not yet", **SLOW})
    early = client.get(f"/v1/videos/{job['id']}/content")
    assert early.status_code == 409 and early.json()["error"]["code"] == "video_not_ready"
    client.post(f"/v1/videos/{job['id']}/cancel")
    _wait_terminal(client, job["id"])


class _Receiver(BaseHTTPRequestHandler):
    """Fails the first delivery with 500, accepts the rest; records everything."""

    received: list[tuple[dict, bytes]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        type(self).received.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(500 if len(type(self).received) == 1 else 204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_webhook_is_signed_and_retried(client):
    from serve_app.webhooks import verify

    _Receiver.received = []
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/hook"
        job = _async_job(client, {"prompt": "ring the bell", "webhook_url": url, **SMALL})
        wait_for_condition(lambda: len(_Receiver.received) >= 2, timeout=30)
    finally:
        server.shutdown()
        server.server_close()  # shutdown() only stops the loop; the listening socket stays open
    (h1, b1), (h2, b2) = _Receiver.received[:2]
    assert h1["webhook-id"] == h2["webhook-id"]  # a retry is the same message
    assert verify(WEBHOOK_SECRET, h2, b2)
    assert not verify("whsec_" + "d3Jvbmc=", h2, b2)
    event = json.loads(b2)  # OpenAI's event envelope
    assert (event["object"], event["type"], event["data"]) == ("event", "video.completed", {"id": job["id"]})


def test_webhook_to_a_host_off_the_allowlist_is_400(client):
    resp = client.post("/v1/videos", json={"prompt": "x", "webhook_url": "https://169.254.169.254/latest", **SMALL})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "webhook_url"


def test_prefer_wait_zero_answers_202_and_sync_answers_200(client):
    quick = client.post("/v1/videos", json={"prompt": "quick", **SMALL})
    assert quick.status_code == 200 and quick.json()["status"] == "completed"
    later = client.post("/v1/videos", json={"prompt": "later", **SLOW}, headers={"Prefer": "wait=0.5"})
    assert later.status_code == 202 and later.json()["status"] in ("queued", "in_progress")
    assert later.headers["preference-applied"] == "wait=0.5"
    client.post(f"/v1/videos/{later.json()['id']}/cancel")
    _wait_terminal(client, later.json()["id"])


def test_multipart_body_like_the_sdk_sends(client):
    resp = client.post(
        "/v1/videos",
        files={
            "prompt": (None, "multipart prompt"),
            "size": (None, "64x64"),
            "num_frames": (None, "5"),
            "num_inference_steps": (None, "2"),
            "fps": (None, "8"),
        },
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["num_frames"] == 5
    bad = client.post("/v1/videos", files={"prompt": (None, "x"), "num_frames": (None, "lots")})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "num_frames"
