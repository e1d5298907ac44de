"""The session's second app, for load and failure tests (issues 5 and 7).

Two gateway replicas sharing a Redis job store, cache index and limiter
(its own redis-server, with an append-only file so a restart keeps the
jobs), API keys, a denoiser autoscaled on queue depth (1-2 replicas),
admission with a small queue, and a step gate (tests/helpers/gate.py):
tests hold jobs mid-flight with it, to queue behind them or to kill them in
the middle, rather than counting on a step delay to make jobs last long enough.
"""

from __future__ import annotations

import time

from tests.helpers.access import bearer as bearer

LOAD_APP = "load"
LOAD_GATE = "load-step-gate"  # the load app's faults.step_gate
ALICE = "wan_alice-secret-0123456789abcdef"  # generous limits
BOB = "wan_bob-secret-0123456789abcdef00"  # 3 creates, then 429
CAROL = "wan_carol-secret-0123456789abcdef"  # one unfinished job at a time
# Fast (~0.1 s) unless the gate holds it.
JOB = {"width": 64, "height": 64, "num_frames": 9, "fps": 8, "num_inference_steps": 8, "cache": False}
CHECKPOINT_EVERY_S = 0.4
QUEUE_PER_REPLICA = 3


def load_app_args(data_dir, redis_url: str):
    from serve_app.access.keys import hash_secret
    from tests.helpers.app import app_args

    return app_args(
        data_dir,
        job_store=redis_url,
        cache_store=redis_url,
        # One tenant's keys: the rate-limit test has Bob repeat a request Alice's cached
        # (cache entries are each key's own by default).
        cache_scope="shared",
        # Each run of a job whose replica is killed is a new attempt: room for a few.
        job_max_attempts=4,
        access={
            "api_keys": [
                {
                    "id": "alice",
                    "sha256": hash_secret(ALICE),
                    "burst": 200,
                    "rate_per_s": 50,
                    "read_rate_per_s": 1000,
                    "read_burst": 2000,
                    "max_concurrent_jobs": 50,
                },
                {"id": "bob", "sha256": hash_secret(BOB), "burst": 3, "rate_per_s": 0.001},
                {"id": "carol", "sha256": hash_secret(CAROL), "max_concurrent_jobs": 1},
            ],
            "api_keys_env": "",
            "store": redis_url,
        },
        admission={"enabled": True, "max_queue_per_replica": QUEUE_PER_REPLICA, "refresh_s": 0.2},
        faults={"step_gate": LOAD_GATE},
        # Checkpoints on a cadence, so a killed denoiser's job resumes mid-loop (a
        # job that the gate holds for longer than this saves at its next step boundary).
        checkpoint_every_s=CHECKPOINT_EVERY_S,
        stages={
            "gateway": {"num_replicas": 2, "max_ongoing_requests": 64},
            "denoiser": {
                "max_ongoing_requests": 1,
                "autoscaling": {
                    "policy": "queue_depth",
                    "min_replicas": 1,
                    "max_replicas": 2,
                    "target_ongoing_requests": 1,
                    "upscale_delay_s": 0,
                    "downscale_delay_s": 2,
                    "look_back_period_s": 1,
                },
            },
        },
    )


def deploy_load_app(data_dir, redis_url: str, route_prefix: str) -> None:
    from ray import serve

    from serve_app.app import build_app

    serve.run(build_app(load_app_args(data_dir, redis_url)), name=LOAD_APP, route_prefix=route_prefix)


def denoiser_replicas() -> int:
    from ray import serve

    states = serve.status().applications[LOAD_APP].deployments["Denoiser"].replica_states
    return sum(n for state, n in states.items() if str(getattr(state, "value", state)) == "RUNNING")


# /healthz answers in a row that must agree before the gateways count as settled:
# ~1 s of answers, so both gateway replicas answer and each re-reads Serve's status.
SETTLED_ANSWERS = 10


def wait_settled(http, timeout_s: float = 60) -> None:
    """Until the gateways' admission sees one denoiser replica, serving, and no work ahead:
    the load app as a test that starts from scratch expects it.

    Serve's status can show a scale-down done while a gateway, which polls it
    every refresh_s, still counts the replica that went: a burst sent then
    would be admitted against twice the capacity. A replica still starting
    adds its cold start to every estimate (no answer within the sync budget)."""
    give_up = time.monotonic() + timeout_s
    in_a_row = 0
    while in_a_row < SETTLED_ANSWERS:
        load = http.get("/healthz").json()["load"]
        settled = (load["denoiser_replicas"], load["unfinished_jobs"], load["work_ahead_s"]) == (1, 0, 0)
        in_a_row = in_a_row + 1 if settled else 0
        assert time.monotonic() < give_up, f"the gateways never settled on one idle denoiser replica: {load}"
        time.sleep(0.1)


def wait_for(predicate, timeout_s: float, what: str):
    give_up = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < give_up, f"timed out waiting for {what}"
        time.sleep(0.2)


def wait_done(http, ids: list[str], secret: str, timeout_s: float = 90) -> list[dict]:
    def all_done():
        answers = [http.get(f"/v1/videos/{i}", headers=bearer(secret)) for i in ids]
        for answer in answers:
            assert answer.status_code == 200, answer.text
        videos = [answer.json() for answer in answers]
        return videos if all(v["status"] in ("completed", "failed") for v in videos) else None

    return wait_for(all_done, timeout_s, f"{len(ids)} jobs to finish")
