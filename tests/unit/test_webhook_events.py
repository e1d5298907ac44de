"""Issue 16: a webhook is OpenAI's event (video.completed / video.failed), signed so that the
official SDK's own `client.webhooks.unwrap(body, headers, secret=...)` accepts it.

End to end: a gateway as `build_gateway` makes it (tests/helpers/webhooks.py) posts to a real
local receiver (tests/helpers/webhook_receiver.py), and the SDK checks what arrived.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time

import openai
import pytest

from serve_app.api.create import Preference
from serve_app.api.protocol import CreateVideoRequest
from serve_app.errors import StageFailed
from serve_app.webhooks import signature_headers, video_event
from serve_app.webhooks.delivery import message_id
from tests.helpers.service import REQUEST
from tests.helpers.webhook_receiver import receiver
from tests.helpers.webhooks import SECRET, webhook_gateway

web = pytest.importorskip("aiohttp.web")
WAIT_S = 10.0


def _sent(tmp_path, *, fail: bool = False):
    """(the video object, what the receiver got) for one job with a webhook."""

    async def scenario():
        arrived = asyncio.Event()

        async def respond(rec, request):
            arrived.set()
            return web.Response(status=200, text="ok")

        async with receiver(respond) as rec:
            gateway = webhook_gateway(tmp_path)
            if fail:
                gateway.runner.generator.error = StageFailed("the denoiser raised")
            request = CreateVideoRequest(**{**REQUEST, "webhook_url": rec.url})
            # Asynchronous: a failed job is then a 202, not the error it would raise in a sync answer.
            accepted = await gateway.creator.create_video(request, Preference(respond_async=True))
            await asyncio.wait_for(arrived.wait(), WAIT_S)
            await asyncio.wait_for(asyncio.gather(*gateway.webhooks._deliveries), WAIT_S)
            video = gateway.stores.jobs.get(accepted.video.id).video
            await gateway.close()
            return video, rec.seen

    return asyncio.run(scenario())


def _sdk() -> openai.OpenAI:
    return openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9/v1")


def test_the_sdk_unwraps_a_completed_videos_webhook(tmp_path):
    video, seen = _sent(tmp_path)
    [delivery] = seen
    event = _sdk().webhooks.unwrap(delivery.body, delivery.headers, secret=SECRET)
    assert (event.type, event.object, event.data.id) == ("video.completed", "event", video.id)
    assert event.id.startswith("evt_") and event.created_at == video.completed_at
    # Nothing else: the receiver reads the video with GET /v1/videos/{id}, as from OpenAI.
    assert set(json.loads(delivery.body)) == {"id", "object", "type", "created_at", "data"}
    assert json.loads(delivery.body)["data"] == {"id": video.id}
    # One outcome, one id: the header's message id and the event's share their digest.
    assert delivery.headers["webhook-id"] == message_id(video.model_dump()) == "msg_" + event.id[4:]


def test_the_sdk_unwraps_a_failed_videos_webhook(tmp_path):
    video, [delivery] = _sent(tmp_path, fail=True)
    assert video.status == "failed"
    event = _sdk().webhooks.unwrap(delivery.body, delivery.headers, secret=SECRET)
    assert (event.type, event.data.id) == ("video.failed", video.id)


def test_the_sdk_refuses_a_tampered_or_wrongly_signed_webhook(tmp_path):
    video, [delivery] = _sent(tmp_path)
    sdk = _sdk()
    forged = delivery.body.replace(video.id.encode(), b"video_" + b"0" * 32)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        sdk.webhooks.unwrap(forged, delivery.headers, secret=SECRET)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        sdk.webhooks.unwrap(delivery.body, delivery.headers, secret="another-secret")


def test_a_whsec_secret_signs_as_the_sdk_verifies():
    secret = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
    video = {"id": "video_1", "status": "completed", "completed_at": int(time.time())}
    event = video_event(video)
    body = json.dumps(event, separators=(",", ":")).encode()
    headers = signature_headers(secret, message_id(event), int(time.time()), body)
    unwrapped = _sdk().webhooks.unwrap(body, headers, secret=secret)
    assert (unwrapped.type, unwrapped.data.id) == ("video.completed", "video_1")


def test_every_sending_of_one_outcome_is_the_same_event():
    video = {"id": "video_1", "status": "failed", "completed_at": 1_700_000_000}
    assert (
        video_event(video)
        == video_event(dict(video))
        == {
            "id": video_event(video)["id"],
            "object": "event",
            "type": "video.failed",
            "created_at": 1_700_000_000,
            "data": {"id": "video_1"},
        }
    )
    assert video_event(video)["id"] != video_event({**video, "status": "completed"})["id"]
    with pytest.raises(ValueError):
        video_event({**video, "status": "queued"})  # only ended videos have events
