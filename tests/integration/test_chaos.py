"""Failures on purpose (issue 7), against the load app (tests/helpers/load_app.py):
replicas killed mid-job, Redis restarted under live traffic. Jobs are held
mid-flight at the load app's step gate (tests/helpers/gate.py) while the
failure happens, then let go."""

from __future__ import annotations

import json
import time

import pytest

from bench.serve_process import kill_replicas
from tests.helpers.load_app import (
    ALICE,
    CHECKPOINT_EVERY_S,
    JOB,
    LOAD_APP,
    bearer,
    denoiser_replicas,
    wait_done,
    wait_for,
)

pytestmark = pytest.mark.integration

KILLS = 10


def kill_denoisers() -> int:
    """ray.kill every running denoiser replica of the load app; how many."""
    return kill_replicas(LOAD_APP, ("Denoiser",))


def events_of(http, video_id: str) -> list[dict]:
    """The job's event log (SSE), ending with its terminal event."""
    with http.stream("GET", f"/v1/videos/{video_id}/events", headers=bearer(ALICE)) as response:
        assert response.status_code == 200
        return [json.loads(line[len("data: ") :]) for line in response.iter_lines() if line.startswith("data: ")]


def submit(http, prompt: str, patience_s: float = 60) -> str:
    """Queue a job as a well-behaved client does: a full queue (429 over_capacity, which
    killed jobs rerunning can cause) is waited out for its Retry-After, then sent again."""
    give_up = time.monotonic() + patience_s
    while True:
        response = http.post(
            "/v1/videos",
            json={"prompt": prompt, **JOB, "quality": "exact"},
            headers={**bearer(ALICE), "Prefer": "respond-async"},
        )
        if response.status_code != 429 or time.monotonic() > give_up:
            break
        assert response.json()["error"]["code"] == "over_capacity", response.text
        time.sleep(float(response.headers["Retry-After"]))
    assert response.status_code == 202, response.text
    return response.json()["id"]


def denoising(http, video_id: str) -> bool:
    video = http.get(f"/v1/videos/{video_id}", headers=bearer(ALICE)).json()
    return video["status"] == "in_progress" and 0 < video["progress"] < 90


def test_denoiser_killed_mid_job_ten_times_loses_and_duplicates_nothing(http, gate):
    ids = []
    for n in range(KILLS):
        wait_for(lambda: denoiser_replicas() >= 1, 60, "a live denoiser replica")
        with gate.closed():  # opened after the kill: the rerun goes through
            video_id = submit(http, f"chaos {n}")
            gate.wait_held(1)
            wait_for(lambda: denoising(http, video_id), 60, f"job {n} to be mid-denoising")  # noqa: B023 - waited here
            assert kill_denoisers() >= 1
        ids.append(video_id)
        # Each job is killed once: the next kill waits until this one's rerun is
        # done. Without the wait, a rerun still going when the next kill comes is
        # killed again, and a job killed job_max_attempts times fails, as it
        # should: most likely why one job failed in a CI run (the assertion
        # below now prints a failed job's error).
        wait_done(http, [video_id], ALICE, timeout_s=120)
    videos = wait_done(http, ids, ALICE, timeout_s=240)
    assert [v["status"] for v in videos] == ["completed"] * KILLS, [
        (v["id"], v["status"], v.get("error")) for v in videos if v["status"] != "completed"
    ]
    for video_id in ids:
        events = events_of(http, video_id)
        types = [e["type"] for e in events]
        # Killed once, run again, finished once: one terminal event, no second result.
        assert types.count("completed") == 1 and "failed" not in types, types
        assert types.count("retry") >= 1, types
        content = http.get(f"/v1/videos/{video_id}/content", headers=bearer(ALICE))
        assert content.status_code == 200 and content.content[4:8] == b"ftyp"


def test_a_killed_denoisers_job_resumes_at_its_last_checkpoint(http, gate, data_dir):
    """The load app checkpoints every CHECKPOINT_EVERY_S: the rerun starts where the lost run saved, not at 0."""
    wait_for(lambda: denoiser_replicas() >= 1, 60, "a live denoiser replica")

    def past_half() -> bool:
        video = http.get(f"/v1/videos/{video_id}", headers=bearer(ALICE)).json()
        return video["status"] == "in_progress" and 50 <= video["progress"] < 90

    with gate.closed():
        video_id = submit(http, "resume after a kill")
        gate.wait_held(1, step=1)
        gate.release(3)
        gate.wait_held(1, step=4)
        # A checkpoint is saved at a step boundary once CHECKPOINT_EVERY_S has passed
        # since the last save (or the start): held at step 4 that long, the job saves
        # step 4 as soon as it goes on, before step 5 (where it is held again, and killed).
        time.sleep(CHECKPOINT_EVERY_S)
        gate.release(1)
        gate.wait_held(1, step=5)
        assert (data_dir / "checkpoints" / f"{video_id}.pt").exists()
        wait_for(past_half, 60, "the job to be past half its steps")
        assert kill_denoisers() >= 1
    (video,) = wait_done(http, [video_id], ALICE, timeout_s=120)
    assert video["status"] == "completed"
    events = events_of(http, video_id)
    types = [e["type"] for e in events]
    retry = types.index("retry")
    before = [e["step"] for e in events[:retry] if e["type"] == "progress"]
    after = [e["step"] for e in events[retry:] if e["type"] == "progress"]
    # Saved at step 4 before the kill (held past CHECKPOINT_EVERY_S there), so
    # the rerun's first report is a step the lost run had reached, not step 1.
    assert max(before) >= 4 and 2 <= after[0] <= max(before), (before, after)
    assert after[-1] == JOB["num_inference_steps"]


def test_redis_restart_is_a_503_meanwhile_and_then_the_service_recovers(http, gate, load_redis):
    with gate.closed():  # the job stays mid-denoising through the restart
        running = submit(http, "through a redis restart")
        gate.wait_held(1)
        wait_for(lambda: denoising(http, running), 60, "the job to be mid-denoising")
        load_redis.stop()
        try:
            during = http.post("/v1/videos", json={"prompt": "while redis is down", **JOB}, headers=bearer(ALICE))
            assert during.status_code == 503, during.text
            error = during.json()["error"]
            assert error["code"] == "service_unavailable" and int(during.headers["Retry-After"]) >= 1
            assert "Traceback" not in during.text and "redis://" not in during.text
            time.sleep(1.0)
        finally:
            load_redis.start()
    # The job that was running when Redis went away still ends, completed.
    (video,) = wait_done(http, [running], ALICE, timeout_s=120)
    assert video["status"] == "completed", video
    after = http.post("/v1/videos", json={"prompt": "after the restart", **JOB}, headers=bearer(ALICE))
    assert after.status_code == 200 and after.json()["status"] == "completed", after.text
