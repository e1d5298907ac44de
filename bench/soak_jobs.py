"""One soak job's life as a careful client lives it, and what the soak counts as wrong.

Every create carries an Idempotency-Key. A create that gets no answer (its
gateway replica was killed, the connection dropped) or a 5xx is sent again with
the same key, as a client that follows the API's advice does; so is a sync
request that the client itself hangs up on ("retry_after_disconnect"). The
service must then answer with the same video, run once.

Situations (what the client does to its job):
- plain: create (sync or async) and follow it to its end;
- cancelled: cancel at a random moment while it runs;
- cancel_at_end: cancel once it reports >= 75% progress, racing its completion;
- short_deadline: a 0.3 s deadline it cannot meet;
- retry_after_disconnect: a sync create the client hangs up on after 0.3 s,
  then the same create again with the same key.

What is counted (bench/results/soak-*.json):
- lost: a job the service gave an id for that is later unknown (404), never
  reaches a terminal state, or completed without a playable mp4 of its size;
- duplicated_runs: one Idempotency-Key answered with two video ids, or a
  finished job whose final record changed after it was first seen finished
  (it ran again, or a stale write replaced it);
- wrong_state: a terminal state its situation does not allow (e.g. `cancelled`
  for a job nobody cancelled, a deadline failure before its deadline passed).
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass, field

import httpx

BASE = {"width": 64, "height": 64, "fps": 8, "cache": False}
SHORT_DEADLINE_S = 0.3
HANG_UP_AFTER_S = 0.3
# ServiceArgs' defaults: a synchronous request's deadline, and an asynchronous job's.
DEFAULT_SYNC_DEADLINE_S, DEFAULT_JOB_DEADLINE_S = 30.0, 600.0
SITUATIONS = {"plain": 0.55, "cancelled": 0.12, "cancel_at_end": 0.12, "short_deadline": 0.08}
SITUATIONS["retry_after_disconnect"] = 1.0 - sum(SITUATIONS.values())
# Failures a job may end in beyond its situation's own: replicas killed, faults injected,
# a store unreachable for a while can each cost a run its attempts.
INFRASTRUCTURE = {"stage_failed", "stage_lost", "gpu_out_of_memory", "service_unavailable", "deadline_exceeded"}
ALLOWED_FAILURES = {
    "plain": INFRASTRUCTURE,
    "cancelled": INFRASTRUCTURE | {"cancelled"},
    "cancel_at_end": INFRASTRUCTURE | {"cancelled"},
    "short_deadline": INFRASTRUCTURE,
    "retry_after_disconnect": INFRASTRUCTURE,
}
# A create refused for capacity or an unreachable store is a correct answer under
# faults, once the client has tried for this long.
PATIENCE_S = 90.0
FOLLOW_FOR_S = 600.0


@dataclass
class JobOutcome:
    n: int
    situation: str
    status: str  # completed / failed / refused / lost
    code: str | None = None
    video_id: str | None = None
    ids_seen: set[str] = field(default_factory=set)
    final: dict | None = None
    lost: bool = False
    wrong_state: bool = False
    note: str = ""
    # Answers a client sees when the gateway replica serving its request is killed under
    # it (Serve's proxy answers 500) or the store is blackholed (503): retried, and counted.
    transient_errors: int = 0

    def summary(self) -> dict:
        return {
            "n": self.n,
            "situation": self.situation,
            "status": self.status,
            "code": self.code,
            "video_id": self.video_id,
            "ids_seen": sorted(self.ids_seen),
            "note": self.note,
            "transient_errors": self.transient_errors,
        }


def pick_situation(rng: random.Random) -> str:
    return rng.choices(list(SITUATIONS), weights=list(SITUATIONS.values()))[0]


def create(http: httpx.Client, body: dict, headers: dict, outcome: JobOutcome) -> dict | None:
    """POST until the service answers for this key: the create's JSON (with `id`), or None when
    it kept refusing (429/503) for PATIENCE_S. Answers without an id are refusals."""
    give_up = time.monotonic() + PATIENCE_S
    hang_up_once = outcome.situation == "retry_after_disconnect"
    while time.monotonic() < give_up:
        try:
            timeout = HANG_UP_AFTER_S if hang_up_once else 120.0
            answer = http.post("/v1/videos", json=body, headers=headers, timeout=timeout)
        except httpx.TimeoutException:
            hang_up_once = False  # the client hung up; it asks again with the same key
            continue
        except httpx.TransportError:
            outcome.transient_errors += 1
            time.sleep(0.5)  # the gateway replica died under the request
            continue
        data = answer.json() if answer.headers.get("content-type", "").startswith("application/json") else {}
        video_id = data.get("id") or (data.get("error") or {}).get("video_id")
        if video_id:
            outcome.ids_seen.add(video_id)
            return data | {"id": video_id}
        if answer.status_code in (429, 503) or answer.status_code >= 500:
            outcome.transient_errors += answer.status_code >= 500
            outcome.code = (data.get("error") or {}).get("code")  # the last refusal's, if it stays refused
            time.sleep(min(float(answer.headers.get("Retry-After") or 1), 5))
            continue
        outcome.note = f"create answered {answer.status_code}: {answer.text[:200]}"
        return None
    return None


def follow(http: httpx.Client, video_id: str, outcome: JobOutcome, rng: random.Random) -> dict | None:
    """Poll the job to its terminal object (None if it never gets there, or vanishes), cancelling
    it on the way as its situation says."""
    cancel_at = rng.uniform(0.0, 0.5) if outcome.situation == "cancelled" else None
    started = time.monotonic()
    cancelled = False
    while time.monotonic() - started < FOLLOW_FOR_S:
        try:
            answer = http.get(f"/v1/videos/{video_id}", timeout=30)
        except httpx.TransportError:
            outcome.transient_errors += 1
            time.sleep(0.5)
            continue
        if answer.status_code == 404:
            outcome.note = "404 for an id the service gave"
            return None
        if answer.status_code != 200:
            outcome.transient_errors += answer.status_code >= 500
            time.sleep(0.5)  # a store blackhole or a dying replica: ask again
            continue
        video = answer.json()
        if video["status"] in ("completed", "failed"):
            return video
        due = (cancel_at is not None and time.monotonic() - started >= cancel_at) or (
            outcome.situation == "cancel_at_end" and video.get("progress", 0) >= 75
        )
        if due and not cancelled:
            try:
                cancelled = http.post(f"/v1/videos/{video_id}/cancel", timeout=30).status_code in (200, 409)
            except httpx.TransportError:
                pass
        time.sleep(0.1)
    outcome.note = "never reached a terminal state"
    return None


def run_job(base_url: str, n: int, rng: random.Random, steps: list[int], frames: list[int]) -> JobOutcome:
    outcome = JobOutcome(n=n, situation=pick_situation(rng), status="refused")
    body = {**BASE, "prompt": f"soak {n}", "num_frames": rng.choice(frames), "num_inference_steps": rng.choice(steps)}
    sync = outcome.situation == "retry_after_disconnect" or (outcome.situation == "plain" and rng.random() < 0.5)
    headers = {"Idempotency-Key": uuid.uuid4().hex}
    if not sync:
        headers["Prefer"] = "respond-async"
    if outcome.situation == "short_deadline":
        body["deadline_s"] = SHORT_DEADLINE_S
    with httpx.Client(base_url=base_url, follow_redirects=True) as http:
        created = create(http, body, headers, outcome)
        if created is None:
            return outcome
        outcome.video_id, outcome.code = created["id"], None
        video = follow(http, outcome.video_id, outcome, rng)
        if video is None:
            outcome.status, outcome.lost = "lost", True
            return outcome
        outcome.final = video
        outcome.status = video["status"]
        if video["status"] == "completed":
            outcome.code = video.get("tier")
            mp4 = fetch_content(http, outcome)
            if mp4.status_code != 200 or not playable(mp4.content, video):
                outcome.lost, outcome.note = True, f"content {mp4.status_code}, not the video it reports"
            return outcome
        outcome.code = video["error"]["code"]
        outcome.wrong_state = not failure_allowed(outcome, video, sync)
        return outcome


def fetch_content(http: httpx.Client, outcome: JobOutcome) -> httpx.Response:
    """GET the mp4, asking again (for up to PATIENCE_S) after a 5xx or a dropped connection:
    a gateway replica killed mid-request, or a store blackholed for a few seconds."""
    give_up = time.monotonic() + PATIENCE_S
    while True:
        try:
            answer = http.get(f"/v1/videos/{outcome.video_id}/content", timeout=60)
        except httpx.TransportError:
            answer = None
        if answer is not None and answer.status_code < 500:
            return answer
        outcome.transient_errors += 1
        if time.monotonic() > give_up:
            if answer is None:
                raise RuntimeError(f"content of {outcome.video_id} unreachable for {PATIENCE_S:.0f} s")
            return answer
        time.sleep(0.5)


def failure_allowed(outcome: JobOutcome, video: dict, sync: bool) -> bool:
    code = video["error"]["code"]
    if code not in ALLOWED_FAILURES[outcome.situation]:
        return False
    if code == "deadline_exceeded" and outcome.situation != "short_deadline":
        # Kills and reruns may use up any deadline, but a job must not fail for its
        # deadline before that deadline has passed.
        deadline = DEFAULT_SYNC_DEADLINE_S if sync else DEFAULT_JOB_DEADLINE_S
        return video["completed_at"] - video["created_at"] >= deadline - 1
    return True


def playable(mp4: bytes, video: dict) -> bool:
    from serve_app.video import probe_mp4

    try:
        info = probe_mp4(mp4)
    except Exception:  # noqa: BLE001 - an unplayable file is the failure being looked for
        return False
    return (info.frames, info.width, info.height) == (video["num_frames"], video["width"], video["height"])


def recheck(base_url: str, outcomes: list[JobOutcome]) -> None:
    """After every job has ended: each finished job's record must still be the one first seen
    finished. A changed one ran again or was overwritten by a stale write."""
    with httpx.Client(base_url=base_url, timeout=30) as http:
        for outcome in outcomes:
            if outcome.final is None or outcome.video_id is None:
                continue
            answer = http.get(f"/v1/videos/{outcome.video_id}")
            if answer.status_code == 404:
                outcome.lost, outcome.note = True, "gone after it finished"
                continue
            now = answer.json()
            fields = ("status", "completed_at", "error")
            if any(now.get(f) != outcome.final.get(f) for f in fields):
                outcome.note = f"final record changed: {[(f, outcome.final.get(f), now.get(f)) for f in fields]}"
                outcome.ids_seen.add(f"rewritten:{outcome.video_id}")


def duplicated(outcome: JobOutcome) -> bool:
    return len(outcome.ids_seen) > 1
