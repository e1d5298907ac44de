"""Traffic for bench/gpu_e2e.py: hostile requests, bursts, following jobs to their end."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

# A refusal answered within this long counts as immediate.
IMMEDIATE_S = 1.0
TERMINAL = ("completed", "failed", "cancelled")
BURST_SIZE = 30
IDENTICAL = 10

BURSTS: dict[str, dict[str, Any]] = {
    "default_deadline": {"headers": {}, "deadline_s": None},
    "deadline_20s": {"headers": {}, "deadline_s": 20.0},
    "respond_async": {"headers": {"Prefer": "respond-async"}, "deadline_s": None},
}


async def follow_jobs(client: httpx.AsyncClient, ids: list[str], limit_s: float, every_s: float = 0.25) -> list[dict]:
    """Poll each job until it ends (or `limit_s` passes); each answer gets `seen_at` (perf_counter)."""
    final: dict[str, dict] = {}
    ends = time.perf_counter() + limit_s
    while len(final) < len(set(ids)) and time.perf_counter() < ends:
        for job_id in set(ids) - set(final):
            response = await client.get(f"/v1/videos/{job_id}", timeout=30)
            video = response.json() if response.status_code == 200 else {"status": f"http_{response.status_code}"}
            if video.get("status") in TERMINAL or response.status_code != 200:
                final[job_id] = {**video, "seen_at": time.perf_counter()}
        await asyncio.sleep(every_s)
    return [final.get(job_id, {"id": job_id, "status": "unfinished", "seen_at": time.perf_counter()}) for job_id in ids]


def _bodies(name: str, extra: dict, deadline_s: float | None) -> list[dict]:
    bodies = []
    for n in range(BURST_SIZE):
        same = n < IDENTICAL
        body = {
            "preset": "preview",
            "prompt": f"burst {name}: " + ("one prompt for ten" if same else f"video {n}"),
            "seed": 1 if same else 100 + n,
            **extra,
        }
        if deadline_s is not None:
            body["deadline_s"] = deadline_s
        bodies.append(body)
    return bodies


async def _send(client: httpx.AsyncClient, body: dict, headers: dict, timeout: float) -> dict:
    started = time.perf_counter()
    try:
        response = await client.post("/v1/videos", json=body, headers=headers, timeout=timeout)
        answer = {
            "status": response.status_code,
            "body": response.json(),
            "retry_after": response.headers.get("retry-after"),
            "tier": response.headers.get("wan-tier"),
        }
    except (httpx.HTTPError, ValueError) as exc:
        answer = {"status": 0, "body": {"error": {"code": type(exc).__name__}}, "retry_after": None, "tier": None}
    return {**answer, "sent_at": started, "answered_s": time.perf_counter() - started}


def classify(answer: dict, deadline_s: float, final: dict | None) -> tuple[str, float | None]:
    """(outcome, seconds from send to the video or the failure) of one burst request."""
    status, body = answer["status"], answer["body"]
    if status == 200:
        done = body.get("status") == "completed"
        late = answer["answered_s"] > deadline_s
        return ("ok_in_deadline" if done and not late else "accepted_then_failed"), answer["answered_s"]
    if status == 202 and final is not None:
        took = final["seen_at"] - answer["sent_at"]
        ok = final.get("status") == "completed" and took <= deadline_s
        return ("ok_in_deadline" if ok else "accepted_then_failed"), took
    if status in (429, 503) and answer["retry_after"]:
        return ("refused_immediately" if answer["answered_s"] <= IMMEDIATE_S else "refused_late"), None
    if status == 504:
        return "accepted_then_failed", answer["answered_s"]
    if 400 <= status < 500:
        return "client_errors", None
    return "server_errors", answer["answered_s"]


async def burst(
    client: httpx.AsyncClient,
    name: str,
    spec: dict,
    extra: dict,
    sync_deadline_s: float,
    job_deadline_s: float,
    follow_until: float,
) -> dict:
    """30 simultaneous creates, then every accepted job followed to its end (or until
    `follow_until`, a perf_counter time: a job unfinished then counts as failed)."""
    headers = dict(spec["headers"])
    asked = spec["deadline_s"]
    wait_for = (asked or max(sync_deadline_s, 60.0)) + 60
    bodies = _bodies(name, extra, asked)
    started = time.perf_counter()
    answers = await asyncio.gather(*(_send(client, body, headers, wait_for) for body in bodies))
    jobs = [a["body"]["id"] for a in answers if a["status"] == 202]
    limit = min((asked or job_deadline_s) + 120, max(0.0, follow_until - time.perf_counter()))
    finals = {f["id"]: f for f in await follow_jobs(client, jobs, limit)} if jobs else {}
    counts = dict.fromkeys(
        (
            "ok_in_deadline",
            "refused_immediately",
            "accepted_then_failed",
            "server_errors",
            "refused_late",
            "client_errors",
        ),
        0,
    )
    slowest, record = 0.0, []
    for answer in answers:
        final = finals.get(answer["body"].get("id")) if answer["status"] == 202 else None
        # A job's deadline: what the request asked for, else the service's default for
        # its kind (a synchronous answer's, or a job's once it was answered 202).
        deadline = asked if asked is not None else (sync_deadline_s if answer["status"] != 202 else job_deadline_s)
        outcome, took = classify(answer, deadline, final)
        counts[outcome] += 1
        if took is not None:
            slowest = max(slowest, took)
        record.append(
            {
                "status": answer["status"],
                "outcome": outcome,
                "answered_s": round(answer["answered_s"], 3),
                "final": (final or {}).get("status"),
                "took_s": None if took is None else round(took, 3),
                "tier": answer["tier"] or answer["body"].get("tier"),
                "code": (answer["body"].get("error") or {}).get("code"),
                "error": ((final or {}).get("error") or {}).get("message"),
            }
        )
    return {
        "name": name,
        "requests": len(bodies),
        **counts,
        "slowest_s": round(slowest, 3),
        "wall_s": round(time.perf_counter() - started, 3),
        "answers": record,
    }


def _hostile_cases() -> list[tuple[str, str, dict]]:
    """(method, path, httpx keyword arguments): each must get a JSON 4xx with an error code."""
    ok = {"prompt": "a red boat", "preset": "preview"}

    def body(**changes):
        return ("POST", "/v1/videos", {"json": {**ok, **changes}})

    def raw(content: bytes, content_type: str = "application/json"):
        return ("POST", "/v1/videos", {"content": content, "headers": {"content-type": content_type}})

    return [
        raw(b"{"),
        raw(b"[1, 2, 3]"),
        raw(b""),
        raw(b'{"prompt": "x", "guidance_scale": NaN}'),
        raw(b"\xff\xfe\x00garbage"),
        ("POST", "/v1/videos", {"json": {"preset": "preview"}}),
        body(prompt=12),
        body(prompt=""),
        body(prompt="x" * 100_000),
        body(negative_prompt="y" * 100_000),
        body(width=-64),
        body(width=65),
        body(height=0),
        body(width=100_000),
        body(width="wide"),
        body(num_frames=10),
        body(num_frames=1000),
        body(num_frames="seventeen"),
        body(num_inference_steps=0),
        body(num_inference_steps=10_000),
        body(guidance_scale=-1),
        body(fps=0),
        body(seed=-1),
        body(seed=2**70),
        body(size="abcx12"),
        body(size="99999x99999"),
        body(seconds="-1"),
        body(preset="nope"),
        body(model="gpt-7"),
        body(deadline_s=0),
        body(deadline_s=1e9),
        body(webhook_url="file:///etc/passwd"),
        body(webhook_url="http://169.254.169.254/latest"),
        body(quality="ultra"),
        raw(b'{"prompt": "' + b"z" * 2_000_000 + b'"}'),
        ("GET", "/v1/videos/video_does_not_exist", {}),
        ("GET", "/v1/videos/..%2F..%2Fetc%2Fpasswd", {}),
        ("DELETE", "/v1/videos/video_does_not_exist", {}),
        ("GET", "/v1/videos/video_nope/content", {}),
        ("GET", "/v1/videos?limit=-1", {}),
    ]


async def hostile_requests(client: httpx.AsyncClient) -> dict:
    cases = _hostile_cases()
    misses = []
    json_4xx = 0
    for method, path, kwargs in cases:
        response = await client.request(method, path, timeout=30, **kwargs)
        try:
            code = response.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            code = None
        if 400 <= response.status_code < 500 and isinstance(code, str) and code:
            json_4xx += 1
        else:
            misses.append({"method": method, "path": path, "status": response.status_code, "body": response.text[:200]})
    return {"sent": len(cases), "json_4xx": json_4xx, "misses": misses}
