"""Under load (issue 5), on the session's second app (tests/helpers/load_app.py):

two gateway replicas sharing a Redis job store and limiter, API keys, a
denoiser autoscaled on queue depth (1-2 replicas), admission with a small
queue, and a step gate that holds jobs so others queue behind them.

Each test sets up what it needs and leaves nothing running, so they pass
alone and in any order.
"""

from __future__ import annotations

import pytest

from tests.helpers.load_app import (
    ALICE,
    BOB,
    CAROL,
    JOB,
    QUEUE_PER_REPLICA,
    bearer,
    denoiser_replicas,
    wait_done,
    wait_for,
    wait_settled,
)

pytestmark = pytest.mark.integration


def burst(http, gate, prompt: str) -> list:
    """QUEUE_PER_REPLICA + 2 async creates on one denoiser replica, its first job held at the
    gate so nothing drains meanwhile: the queue fills, tiers step down, the last are refused.
    The answers, in order; the accepted jobs run on once the gate opens."""
    wait_for(lambda: denoiser_replicas() == 1, 60, "one denoiser replica")
    wait_settled(http)
    with gate.closed():
        return [
            http.post(
                "/v1/videos",
                json={"prompt": f"{prompt} {n}", **JOB, "num_frames": 17, "num_inference_steps": 8},
                headers={**bearer(ALICE), "Prefer": "respond-async"},
            )
            for n in range(QUEUE_PER_REPLICA + 2)
        ]


def test_keys_are_required_and_checked(http):
    response = http.post("/v1/videos", json={"prompt": "a boat", **JOB})
    assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"
    response = http.post("/v1/videos", json={"prompt": "a boat", **JOB}, headers=bearer("wan_nobody-0123456789abcdef"))
    assert response.status_code == 401


def test_a_burst_degrades_by_tier_then_refuses_with_retry_after(http, gate):
    answers = burst(http, gate, "burst")
    accepted = [a for a in answers if a.status_code == 202]
    refused = [a for a in answers if a.status_code == 429]
    assert accepted and refused, [a.status_code for a in answers]
    assert len(accepted) + len(refused) == len(answers)
    # Tiers step down as the queue fills: 0/3 and 1/3 full, then 2/3 (>= 50%) reduced.
    tiers = [a.json()["tier"] for a in accepted]
    assert tiers[0] == "full" and tiers[-1] in ("reduced", "minimal"), tiers
    degraded = accepted[-1].json()
    assert degraded["num_frames"] < 17 and degraded["requested"]["num_frames"] == 17
    assert accepted[-1].headers["Wan-Tier"].startswith(degraded["tier"])
    for answer in refused:
        assert answer.json()["error"]["code"] == "over_capacity"
        assert int(answer.headers["Retry-After"]) >= 1
    videos = wait_done(http, [a.json()["id"] for a in accepted], ALICE)
    assert [v["status"] for v in videos] == ["completed"] * len(accepted)


def test_queue_scales_the_denoiser_up_and_back_down_without_killing_a_job(http, gate):
    wait_for(lambda: denoiser_replicas() == 1, 60, "one denoiser replica")
    wait_settled(http)
    # The gate holds the queue until the second replica is up, however long it
    # takes to start on a busy CI machine (and downscale_delay_s takes it away
    # again). A held job's time is what the gateways' estimates learn, so this
    # long hold gets a shape and a deadline of its own: the other tests' estimates
    # (sync or async, tier) and their jobs' deadlines stay clear of it.
    with gate.closed():
        ids = [
            http.post(
                "/v1/videos",
                json={
                    "prompt": f"scale {n}",
                    **JOB,
                    "width": 128,
                    "height": 128,
                    "num_inference_steps": 24,
                    "quality": "exact",
                    "deadline_s": 120,
                },
                headers={**bearer(ALICE), "Prefer": "respond-async"},
            ).json()["id"]
            for n in range(QUEUE_PER_REPLICA)
        ]
        gate.wait_held(1)
        wait_for(lambda: denoiser_replicas() == 2, 60, "a second denoiser replica")
    videos = wait_done(http, ids, ALICE)
    assert [v["status"] for v in videos] == ["completed"] * len(ids)
    wait_for(lambda: denoiser_replicas() == 1, 60, "scale-down to one replica")


def test_rate_limit_holds_across_both_gateway_replicas(http):
    wait_settled(http)  # the first create is answered synchronously
    first = http.post("/v1/videos", json={"prompt": "rate", **JOB}, headers=bearer(ALICE))
    assert first.status_code == 200, (first.status_code, first.text)
    # Bob repeats a cached request: cheap, and each create spends one of his 3 tokens.
    request = {"prompt": "rate", **JOB, "seed": first.json()["seed"], "cache": True}
    replicas, codes = set(), []
    for _ in range(40):
        response = http.post("/v1/videos", json=request, headers=bearer(BOB))
        codes.append(response.status_code)
        replicas.add(response.headers["Wan-Replica"])
        if response.status_code != 200:
            assert response.status_code == 429 and response.json()["error"]["code"] == "rate_limited"
            assert int(response.headers["Retry-After"]) >= 1
        if len(replicas) == 2 and codes.count(429) >= 4:
            break
    assert len(replicas) == 2, "the proxy never reached the second gateway replica"
    # One bucket for Bob across both replicas: 3 creates in all, not 3 per replica.
    assert codes.count(200) == 3 and codes[:3] == [200, 200, 200], codes


def test_concurrent_job_cap_holds_across_both_gateway_replicas(http, gate):
    wait_settled(http)
    with gate.closed():  # Carol's first job stays unfinished while she tries for more
        first = http.post(
            "/v1/videos", json={"prompt": "cap 0", **JOB}, headers={**bearer(CAROL), "Prefer": "respond-async"}
        )
        assert first.status_code == 202
        for n in range(1, 5):
            response = http.post(
                "/v1/videos", json={"prompt": f"cap {n}", **JOB}, headers={**bearer(CAROL), "Prefer": "respond-async"}
            )
            assert response.status_code == 429, response.text
            assert response.json()["error"]["code"] == "too_many_concurrent_jobs"
    wait_done(http, [first.json()["id"]], CAROL)
    again = http.post(
        "/v1/videos", json={"prompt": "cap again", **JOB}, headers={**bearer(CAROL), "Prefer": "respond-async"}
    )
    assert again.status_code == 202
    wait_done(http, [again.json()["id"]], CAROL)


def test_tiers_and_refusals_show_in_the_metrics(http, gate):
    from ray._common.test_utils import wait_for_condition

    from tests.helpers.metrics import samples, scrape, total

    # Its own burst degrades and refuses requests (the burst test's may have run, or not).
    answers = burst(http, gate, "metrics burst")
    wait_done(http, [a.json()["id"] for a in answers if a.status_code == 202], ALICE)

    def seen() -> bool:
        text = scrape()
        lowered = sum(total(text, "wan_admissions_total", f'tier="{t}"') for t in ("reduced", "minimal"))
        return (
            lowered >= 1
            and total(text, "wan_admissions_total", 'outcome="rejected"') >= 1
            and any(0 < v <= 1 for _, v in samples(text, "wan_load"))
        )

    # Ray exports every few seconds.
    wait_for_condition(seen, timeout=60, retry_interval_ms=1000)
