"""Webhook delivery against a real local receiver: signatures on the wire, retries, backoff, pinning, timeouts.

Nothing here sleeps for real: `deliver` gets a `sleep` that records the
backoff delays, and a fake clock for the signature timestamps. The receiver is
an aiohttp server on 127.0.0.1 (port 0) inside the test's own event loop
(tests/helpers/webhook_receiver.py).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import pytest

from serve_app.webhooks import backoff_delay, deliver, verify
from tests.helpers.webhook_receiver import receiver, statuses
from tests.helpers.webhooks import PAYLOAD, SECRET, T0, Clock, RecordingSleep, local_config, resolver_for

web = pytest.importorskip("aiohttp.web")


def test_delivered_on_200_with_verifiable_signature():
    async def scenario():
        sleep, clock = RecordingSleep(), Clock()
        async with receiver(statuses(200)) as rec:
            result = await deliver(rec.url, PAYLOAD, local_config(), sleep=sleep, now=clock)
        return result, rec, sleep

    result, rec, sleep = asyncio.run(scenario())
    assert (result.delivered, result.attempts, result.last_status, result.last_error) == (True, 1, 200, None)
    assert sleep.delays == []
    [req] = rec.seen
    assert req.path == "/hook"
    assert req.headers["content-type"] == "application/json"
    assert json.loads(req.body) == PAYLOAD
    assert req.headers["webhook-id"].startswith("msg_") and req.headers["webhook-id"] == result.msg_id
    assert req.headers["webhook-timestamp"] == str(T0)
    assert req.headers["webhook-signature"].startswith("v1,")
    assert verify(SECRET, req.headers, req.body, now=T0)
    assert not verify("other-secret", req.headers, req.body, now=T0)


def test_each_sending_of_one_jobs_outcome_carries_the_same_webhook_id():
    # Issue 15 item 10: a fresh id per call left receivers nothing to deduplicate a
    # second sending of the same outcome on (a gateway retrying after a restart).
    async def scenario():
        async with receiver(statuses(200, 200, 200)) as rec:
            for payload in (PAYLOAD, dict(PAYLOAD), {**PAYLOAD, "status": "failed"}):
                await deliver(rec.url, payload, local_config(), sleep=RecordingSleep(), now=Clock())
        return rec

    first, again, other_status = (r.headers["webhook-id"] for r in asyncio.run(scenario()).seen)
    assert first == again and first.startswith("msg_")
    assert other_status != first  # a different outcome of the job is a different message


def test_fails_twice_then_delivers_with_same_id_fresh_signatures_and_backoff():
    async def scenario():
        sleep, clock = RecordingSleep(), Clock()
        async with receiver(statuses(500, 500, 200)) as rec:
            result = await deliver(rec.url, PAYLOAD, local_config(), sleep=sleep, now=clock)
        return result, rec, sleep, clock

    result, rec, sleep, clock = asyncio.run(scenario())
    assert (result.delivered, result.attempts, result.last_status) == (True, 3, 200)
    assert sleep.delays == [1.0, 2.0]
    assert len(rec.seen) == 3
    assert len({r.headers["webhook-id"] for r in rec.seen}) == 1
    timestamps = [int(r.headers["webhook-timestamp"]) for r in rec.seen]
    assert timestamps == clock.readings == [T0, T0 + 7, T0 + 14]
    assert len({r.headers["webhook-signature"] for r in rec.seen}) == 3
    for r, ts in zip(rec.seen, timestamps):
        assert verify(SECRET, r.headers, r.body, now=ts)


def test_always_failing_receiver_gets_max_attempts_and_backoff_is_capped():
    async def scenario():
        sleep = RecordingSleep()
        config = local_config(max_attempts=5, backoff_initial_s=1.0, backoff_max_s=3.0)
        async with receiver(statuses(503)) as rec:
            result = await deliver(rec.url, PAYLOAD, config, sleep=sleep, now=Clock())
        return result, rec, sleep

    result, rec, sleep = asyncio.run(scenario())
    assert (result.delivered, result.attempts, result.last_status) == (False, 5, 503)
    assert result.last_error == "HTTP 503"
    assert len(rec.seen) == 5
    assert sleep.delays == [1.0, 2.0, 3.0, 3.0]


def test_full_jitter_scales_the_delay_by_the_injected_random():
    async def scenario():
        sleep = RecordingSleep()
        async with receiver(statuses(500)) as rec:
            result = await deliver(
                rec.url, PAYLOAD, local_config(max_attempts=3), sleep=sleep, now=Clock(), random=lambda: 0.5
            )
        return result, sleep

    result, sleep = asyncio.run(scenario())
    assert result.attempts == 3
    assert sleep.delays == [0.5, 1.0]


def test_backoff_delay_does_not_overflow():
    config = local_config(backoff_initial_s=1.0, backoff_max_s=60.0)
    assert [backoff_delay(config, n) for n in (1, 2, 3, 7, 8, 5000)] == [1, 2, 4, 60, 60, 60]


def test_redirect_is_not_followed_and_counts_as_failure():
    async def respond(rec, request):
        if request.path == "/elsewhere":
            return web.Response(status=200)
        raise web.HTTPFound(location=f"http://127.0.0.1:{rec.port}/elsewhere")

    async def scenario():
        sleep = RecordingSleep()
        # A client that follows redirects by default: deliver must override it per request.
        async with httpx.AsyncClient(follow_redirects=True) as client:
            async with receiver(respond) as rec:
                result = await deliver(
                    rec.url, PAYLOAD, local_config(max_attempts=2), client=client, sleep=sleep, now=Clock()
                )
        return result, rec

    result, rec = asyncio.run(scenario())
    assert (result.delivered, result.attempts, result.last_status) == (False, 2, 302)
    assert "redirect" in result.last_error
    assert [r.path for r in rec.seen] == ["/hook", "/hook"]


def test_receiver_that_never_answers_times_out_without_hanging():
    async def never(rec, request):
        await rec.release.wait()
        return web.Response(status=200)

    async def scenario():
        sleep = RecordingSleep()
        async with receiver(never) as rec:
            start = time.monotonic()
            result = await deliver(
                rec.url, PAYLOAD, local_config(timeout_s=0.2, max_attempts=2), sleep=sleep, now=Clock()
            )
            elapsed = time.monotonic() - start
        return result, elapsed, sleep

    result, elapsed, sleep = asyncio.run(scenario())
    assert (result.delivered, result.attempts, result.last_status) == (False, 2, None)
    assert "timed out" in result.last_error
    assert sleep.delays == [1.0]
    assert elapsed < 3.0  # two 0.2 s attempts; generous for slow CI, far below a hang


def test_connection_refused_is_retried():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on `port` any more.

    async def scenario():
        sleep = RecordingSleep()
        result = await deliver(
            f"http://127.0.0.1:{port}/hook", PAYLOAD, local_config(max_attempts=3), sleep=sleep, now=Clock()
        )
        return result, sleep

    result, sleep = asyncio.run(scenario())
    assert (result.delivered, result.attempts, result.last_status) == (False, 3, None)
    assert "ConnectError" in result.last_error
    assert sleep.delays == [1.0, 2.0]


def test_rejected_destination_makes_no_request():
    async def scenario():
        sleep = RecordingSleep()
        config = local_config(allowed_hosts=["hooks.example.com"])
        async with receiver(statuses(200)) as rec:
            result = await deliver(rec.url, PAYLOAD, config, sleep=sleep, now=Clock())
        return result, rec, sleep

    result, rec, sleep = asyncio.run(scenario())
    assert (result.delivered, result.attempts, result.last_status) == (False, 0, None)
    assert "allowed_hosts" in result.last_error
    assert rec.seen == [] and sleep.delays == []


def test_destination_is_rechecked_before_every_attempt_and_pinned():
    """First answer 127.0.0.1 (allowlisted), then 10.0.0.5 (not): the retry must not be sent.

    'hooks.test' exists only in the injected resolver, so the first request
    reaching the receiver also proves the checked address was the one used.
    """
    answers = [["127.0.0.1"], ["10.0.0.5"]]
    calls = []

    def resolve(host, port):
        calls.append((host, port))
        return answers[min(len(calls) - 1, 1)]

    async def scenario():
        sleep = RecordingSleep()
        config = local_config(allowed_hosts=["hooks.test", "127.0.0.1"])
        async with receiver(statuses(500)) as rec:
            url = f"http://hooks.test:{rec.port}/hook"
            result = await deliver(url, PAYLOAD, config, sleep=sleep, now=Clock(), resolver=resolve)
        return result, rec, sleep

    result, rec, sleep = asyncio.run(scenario())
    assert (result.delivered, result.attempts, result.last_status) == (False, 1, 500)
    assert "10.0.0.5" in result.last_error
    assert len(calls) == 2 and sleep.delays == [1.0]
    [req] = rec.seen
    assert req.headers["host"] == f"hooks.test:{rec.port}"


def test_pinned_delivery_to_a_resolved_name_succeeds():
    async def scenario():
        config = local_config(allowed_hosts=["hooks.test", "127.0.0.1"])
        resolve = resolver_for({"hooks.test": ["127.0.0.1"]})
        async with receiver(statuses(204)) as rec:
            result = await deliver(
                f"http://hooks.test:{rec.port}/hook", PAYLOAD, config, sleep=RecordingSleep(), resolver=resolve
            )
        return result, rec

    result, rec = asyncio.run(scenario())
    assert (result.delivered, result.attempts, result.last_status) == (True, 1, 204)
    assert rec.seen[0].headers["host"] == f"hooks.test:{rec.port}"


def test_unresolvable_host_is_retried_not_refused():
    async def scenario():
        sleep = RecordingSleep()
        config = local_config(allowed_hosts=["hooks.test"], max_attempts=3)
        result = await deliver(
            "http://hooks.test/hook", PAYLOAD, config, sleep=sleep, now=Clock(), resolver=resolver_for({})
        )
        return result, sleep

    result, sleep = asyncio.run(scenario())
    assert (result.delivered, result.attempts, result.last_status) == (False, 3, None)
    assert "does not resolve" in result.last_error
    assert sleep.delays == [1.0, 2.0]


def test_payload_that_is_not_json_is_reported_not_raised():
    result = asyncio.run(deliver("http://127.0.0.1:9/hook", {"x": object()}, local_config(), sleep=RecordingSleep()))
    assert (result.delivered, result.attempts) == (False, 0)
    assert "JSON" in result.last_error
