"""Accepted jobs are never lost: app restarts and gateway crashes mid-job."""

from __future__ import annotations

import json

import httpx
import pytest
from ray._common.test_utils import wait_for_condition

from serve_app.video import probe_mp4
from tests.helpers.app import APP_NAME, app_args, deploy

pytestmark = pytest.mark.integration

SLOW = {"width": 640, "height": 480, "num_frames": 17, "num_inference_steps": 100}


def _submit_and_wait_running(client) -> str:
    # cache: false, so each test really generates (the same request would hit).
    body = {"prompt": "survive a restart", "cache": False, **SLOW}
    resp = client.post("/v1/videos", json=body, headers={"Prefer": "respond-async"})
    assert resp.status_code == 202, resp.text
    video_id = resp.json()["id"]
    wait_for_condition(lambda: client.get(f"/v1/videos/{video_id}").json()["status"] == "in_progress", timeout=60)
    return video_id


def _assert_finished_on_a_later_attempt(client, serve_url, video_id):
    def done() -> bool:
        resp = client.get(f"/v1/videos/{video_id}")
        return resp.status_code == 200 and resp.json()["status"] in ("completed", "failed")

    wait_for_condition(done, timeout=120, retry_interval_ms=250)
    video = client.get(f"/v1/videos/{video_id}").json()
    assert video["status"] == "completed", video
    info = probe_mp4(client.get(f"/v1/videos/{video_id}/content").content)
    assert info.frames == SLOW["num_frames"]
    with httpx.stream("GET", f"{serve_url}/v1/videos/{video_id}/events", timeout=30) as resp:
        events = [json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: ")]
    attempts = [e["attempt"] for e in events if e["type"] == "queued"]
    assert attempts[0] == 1 and max(attempts) >= 2, attempts


def test_app_restart_mid_job_loses_nothing(client, serve_url, data_dir):
    from ray import serve

    video_id = _submit_and_wait_running(client)
    serve.delete(APP_NAME)  # graceful: the gateway hands its running job back
    deploy(app_args(data_dir))
    _assert_finished_on_a_later_attempt(client, serve_url, video_id)


def test_killed_gateway_job_is_taken_over(client, serve_url):
    import ray

    video_id = _submit_and_wait_running(client)
    # This app's gateway: the session runs a second app (tests/helpers/load_app.py).
    prefix = f"SERVE_REPLICA::{APP_NAME}#Gateway#"
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)]
    assert names, "no gateway replica found"
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
    # Serve starts a new gateway; its dispatcher claims the job once the dead
    # one's lease (2 s here) has gone stale.
    _assert_finished_on_a_later_attempt(client, serve_url, video_id)


def test_app_restart_mid_job_with_redis_store(client, serve_url, data_dir, tmp_path):
    from ray import serve

    from tests.helpers.redis_server import RedisServer

    redis = RedisServer(tmp_path)
    redis.start()
    try:
        deploy(app_args(data_dir, job_store=redis.url))
        video_id = _submit_and_wait_running(client)
        serve.delete(APP_NAME)
        deploy(app_args(data_dir, job_store=redis.url))
        _assert_finished_on_a_later_attempt(client, serve_url, video_id)
    finally:
        deploy(app_args(data_dir))  # back to the session's default (SQLite) app
        redis.stop()
