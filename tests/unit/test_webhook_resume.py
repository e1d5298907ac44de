"""Issue 15 item 10: a webhook pending when its gateway dies is sent by another gateway (once),
and an answer from the result cache sends its webhook too.

Gateways are what `build_gateway` makes (tests/helpers/webhooks.py: `webhook_gateway`), over
one data directory as replicas on one host share it; webhooks go over real HTTP to a local
receiver (tests/helpers/webhook_receiver.py). "Later" is a gateway clock moved past the claim
of the gateway that died, never a sleep.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from serve_app.api.create import Preference
from serve_app.api.protocol import CreateVideoRequest
from serve_app.webhooks import verify
from serve_app.webhooks.delivery import message_id
from tests.helpers.service import REQUEST
from tests.helpers.webhook_receiver import receiver
from tests.helpers.webhooks import SECRET, webhook_gateway

web = pytest.importorskip("aiohttp.web")
WAIT_S = 10.0


def _responder(*, hang_first: bool = False):
    """Answers 200, or (hang_first) holds the first request until the receiver closes; sets
    `arrived` on every request, so a test waits for one without polling."""
    arrived = asyncio.Event()

    async def respond(rec, request):
        arrived.set()
        if hang_first and len(rec.seen) == 1:
            await rec.release.wait()  # the first gateway's attempt: never answered while it matters
        return web.Response(status=200, text="ok")

    respond.arrived = arrived
    return respond


async def _next_request(respond) -> None:
    await asyncio.wait_for(respond.arrived.wait(), WAIT_S)
    respond.arrived.clear()


async def _create(gateway, webhook_url: str, **changes):
    request = CreateVideoRequest(**{**REQUEST, **changes, "webhook_url": webhook_url})
    return await gateway.creator.create_video(request, Preference())


async def _settled(gateway) -> None:
    """Until every delivery this gateway started has recorded how it went."""
    await asyncio.wait_for(asyncio.gather(*gateway.webhooks._deliveries), WAIT_S)


def _later(gateway, seconds: float) -> None:
    gateway.webhooks.clock = lambda: time.time() + seconds


def test_a_webhook_left_pending_by_a_dead_gateway_is_sent_by_the_next_to_start(tmp_path):
    async def scenario():
        respond = _responder(hang_first=True)
        async with receiver(respond) as rec:
            a = webhook_gateway(tmp_path, replica_id="gateway-a")
            video = (await _create(a, rec.url)).video
            assert video.status == "completed"
            await _next_request(respond)  # a's delivery is on the wire... and a dies there
            assert a.stores.jobs.get(video.id).webhook_state == "pending"

            b = webhook_gateway(tmp_path, replica_id="gateway-b")
            # While a's claim holds (a may only be slow), b leaves the webhook alone.
            assert await b.webhooks.resume_due() == 0
            _later(b, a.webhooks.claim_s + 1)  # a never came back
            b.start()  # resumes at start, without waiting for its first interval
            await _next_request(respond)
            await _settled(b)
            stored = b.stores.jobs.get(video.id)
            for task in a.webhooks._deliveries:  # a is gone: its task dies with it
                task.cancel()
            await b.close()
            return video, rec.seen, stored

    video, seen, stored = asyncio.run(scenario())
    assert (stored.webhook_state, stored.webhook_attempts) == ("delivered", 1)
    first, resumed = seen
    # The resumed sending is the same message: a receiver that got a's can drop it.
    assert resumed.headers["webhook-id"] == first.headers["webhook-id"] == message_id(video.model_dump())
    assert verify(SECRET, resumed.headers, resumed.body)
    event = json.loads(resumed.body)
    assert (event["type"], event["data"]) == ("video.completed", {"id": video.id})


def test_two_gateways_resuming_together_send_a_webhook_once(tmp_path):
    async def scenario():
        respond = _responder(hang_first=True)
        async with receiver(respond) as rec:
            dead = webhook_gateway(tmp_path, replica_id="gateway-dead")
            video = (await _create(dead, rec.url)).video
            await _next_request(respond)
            first, second = (webhook_gateway(tmp_path, replica_id=f"gateway-{n}") for n in (1, 2))
            for gateway in (first, second):
                _later(gateway, dead.webhooks.claim_s + 1)
            started = [await first.webhooks.resume_due(), await second.webhooks.resume_due()]
            await _next_request(respond)
            await _settled(first)
            await _settled(second)
            for task in dead.webhooks._deliveries:
                task.cancel()
            return video, started, len(rec.seen)

    video, started, requests = asyncio.run(scenario())
    assert started == [1, 0]  # the second found it claimed
    assert requests == 2  # the dead gateway's attempt and one resumed sending, not two


def test_shutdown_cut_short_hands_the_webhook_to_another_gateway_at_once(tmp_path):
    async def scenario():
        respond = _responder(hang_first=True)
        async with receiver(respond) as rec:
            a = webhook_gateway(tmp_path, replica_id="gateway-a")
            video = (await _create(a, rec.url)).video
            await _next_request(respond)
            await a.webhooks.drain(timeout_s=0.05)  # the receiver outlasts a's shutdown
            b = webhook_gateway(tmp_path, replica_id="gateway-b")
            started = await b.webhooks.resume_due()  # now, not after a's claim would have run out
            await _next_request(respond)
            await _settled(b)
            return started, b.stores.jobs.get(video.id).webhook_state

    assert asyncio.run(scenario()) == (1, "delivered")


def test_resuming_settles_what_is_not_owed_and_keeps_a_job_that_runs_again(tmp_path):
    async def scenario():
        async with receiver(_responder()) as rec:
            gateway = webhook_gateway(tmp_path)
            outbox, store = gateway.stores.webhook_outbox, gateway.stores.jobs
            deleted = (await _create(gateway, rec.url, seed=1)).video
            delivered = (await _create(gateway, rec.url, seed=2)).video
            await _settled(gateway)
            sent = len(rec.seen)
            store.delete(deleted.id)
            # As if each gateway died before removing the entry: owed, with nobody's claim.
            running = store.get(delivered.id).model_copy(deep=True)
            running.video.id, running.video.status = "video_running", "in_progress"
            running.webhook_state, running.idempotency_key = "none", None
            store.create(running)
            for job_id in (deleted.id, delivered.id, running.id):
                outbox.owe(job_id, busy_until=0)
            started = await gateway.webhooks.resume_due()
            later = time.time() + gateway.webhooks.claim_s + 1
            return started, sent, len(rec.seen), outbox.due(later, 10)

    started, sent_before, sent_after, left = asyncio.run(scenario())
    assert started == 0 and sent_after == sent_before == 2  # nothing sent a second time
    # The running job's entry stays, so its end (or its runner's death) still owes it.
    assert left == ["video_running"]


def test_an_answer_from_the_cache_sends_its_webhook(tmp_path):
    async def scenario():
        respond = _responder()
        async with receiver(respond) as rec:
            gateway = webhook_gateway(tmp_path, cache=True)
            generated = await _create(gateway, rec.url)
            await _next_request(respond)
            hit = await _create(gateway, rec.url)
            await _next_request(respond)
            await _settled(gateway)
            stored = gateway.stores.jobs.get(hit.video.id)
            left = gateway.stores.webhook_outbox.due(time.time() + 3600, 10)
            return generated.video, hit, stored, rec.seen, left

    generated, hit, stored, seen, left = asyncio.run(scenario())
    assert hit.video.cached and hit.video.id != generated.id
    assert [json.loads(s.body)["data"]["id"] for s in seen] == [generated.id, hit.video.id]
    assert json.loads(seen[1].body)["type"] == "video.completed" and stored.video.cached
    assert verify(SECRET, seen[1].headers, seen[1].body)
    assert seen[1].headers["webhook-id"] == message_id(hit.video.model_dump())
    assert (stored.webhook_state, stored.webhook_attempts) == ("delivered", 1)
    assert left == []  # both settled


def test_a_cache_hit_that_an_idempotent_retry_answers_owes_no_second_webhook(tmp_path):
    async def scenario():
        respond = _responder()
        async with receiver(respond) as rec:
            gateway = webhook_gateway(tmp_path, cache=True)
            await _create(gateway, rec.url)
            await _next_request(respond)
            request = CreateVideoRequest(**{**REQUEST, "webhook_url": rec.url})
            first = await gateway.creator.create_video(request, Preference(), idempotency_key="k-1")
            await _next_request(respond)
            again = await gateway.creator.create_video(request, Preference(), idempotency_key="k-1")
            await _settled(gateway)
            left = gateway.stores.webhook_outbox.due(time.time() + 3600, 10)
            return first.video.id, again.video.id, len(rec.seen), left

    first, again, requests, left = asyncio.run(scenario())
    assert first == again and requests == 2 and left == []
