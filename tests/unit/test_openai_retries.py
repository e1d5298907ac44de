"""Issue 16 (OpenAI fidelity): the official SDK, unchanged and with its default retries, never
makes the service start the same generation twice; its usual exception classes come out of
our errors; and a keyed retry of a finished job answers as its first request did.

The SDK retries 408/409/429/5xx twice by default, without an idempotency key, unless the
answer says `x-should-retry`. Driven through the real FastAPI app (build_gateway around a
fake generator, no Ray), the SDK talking to it over the test client.
"""

from __future__ import annotations

import openai
import pytest

from serve_app.errors import DeadlineExceeded, StageFailed
from tests.helpers import gateway_fixtures
from tests.helpers.service import REQUEST, Service, api_client

# Fixtures: the in-process gateway over this module's generator, and its HTTP client.
client, gateway, generator = gateway_fixtures.client, gateway_fixtures.gateway, gateway_fixtures.generator

SMALL = {"width": 64, "height": 64, "num_frames": 5, "fps": 8, "num_inference_steps": 2, "seed": 11}
EXTRA = {"num_frames": 5, "fps": 8, "num_inference_steps": 2, "seed": 11}


def sdk_over(client) -> openai.OpenAI:
    """The SDK as a user makes it: default retries (2), pointed at the in-process gateway."""
    sdk = openai.OpenAI(api_key="unused", base_url="http://testserver/v1", http_client=client)
    assert sdk.max_retries == openai.DEFAULT_MAX_RETRIES == 2  # the defaults this file is about
    return sdk


def _jobs(gateway) -> list:
    return gateway.stores.jobs.list(None, 100, "asc")[0]


@pytest.mark.parametrize(
    "error, status, sdk_error",
    [
        (StageFailed("the denoiser raised"), 500, openai.InternalServerError),
        (DeadlineExceeded("stopped after step 1 of 2", stage="denoise", step=1, total_steps=2), 504, None),
        (RuntimeError("CUDA exploded"), 500, openai.InternalServerError),
    ],
)
def test_a_failed_synchronous_create_starts_one_generation_not_three(
    client, gateway, generator, error, status, sdk_error
):
    generator.error = error
    with pytest.raises(openai.APIStatusError) as info:
        sdk_over(client).videos.create(prompt="a red boat", size="64x64", extra_body=EXTRA)
    # main: the SDK retried the 5xx twice, three jobs and three generations.
    assert len(generator.calls) == 1
    assert len(_jobs(gateway)) == 1
    assert info.value.status_code == status
    if sdk_error is not None:
        assert isinstance(info.value, sdk_error)
    assert info.value.response.headers["x-should-retry"] == "false"


def test_an_unexpected_error_after_the_job_exists_is_final_too(client, gateway, generator, monkeypatch):
    async def broken_wait(job_id, timeout):
        raise RuntimeError("the store went away mid-wait")

    monkeypatch.setattr(gateway.runner, "wait", broken_wait)
    with pytest.raises(openai.InternalServerError) as info:
        sdk_over(client).videos.create(prompt="a red boat", size="64x64", extra_body=EXTRA)
    assert len(_jobs(gateway)) == 1  # main: three jobs
    assert info.value.response.headers["x-should-retry"] == "false"
    assert info.value.body["code"] == "internal_error" and "the store" not in info.value.message


def test_invalid_parameters_are_400_and_the_sdk_raises_bad_request(client, generator):
    with pytest.raises(openai.BadRequestError) as info:
        sdk_over(client).videos.create(prompt="a red boat", size="64x64", extra_body={**EXTRA, "num_frames": 6})
    assert info.value.status_code == 400
    # The body is OpenAI's {"error": {type, code, param, message}}; the SDK reads it.
    assert (info.value.type, info.value.code, info.value.param) == (
        "invalid_request_error",
        "invalid_request",
        "num_frames",
    )
    assert "nearest allowed: 5 or 9" in info.value.message
    assert info.value.response.headers["x-should-retry"] == "false"
    assert generator.calls == []


def test_pydantic_validation_errors_are_400_too(client):
    response = client.post("/v1/videos", json={**SMALL, "prompt": "p", "colour": "red"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "colour"
    assert response.headers["x-should-retry"] == "false"


def test_unknown_ids_are_404_not_found_errors_and_final(client):
    sdk = sdk_over(client)
    with pytest.raises(openai.NotFoundError) as info:
        sdk.videos.retrieve("video_nope")
    assert info.value.code == "not_found" and info.value.param == "video_id"
    assert info.value.response.headers["x-should-retry"] == "false"
    unrouted = client.get("/v1/nothing-here")
    assert unrouted.status_code == 404 and unrouted.headers["x-should-retry"] == "false"


def test_content_of_a_failed_video_is_a_final_conflict(client, generator):
    # 409 is one of the statuses the SDK retries by default: this one would answer the same.
    generator.error = StageFailed("boom")
    video_id = client.post("/v1/videos", json={"prompt": "p", **SMALL}).json()["error"]["video_id"]
    with pytest.raises(openai.ConflictError) as info:
        sdk_over(client).videos.download_content(video_id)
    assert info.value.code == "video_not_ready"
    assert info.value.response.headers["x-should-retry"] == "false"


def test_over_capacity_is_a_rate_limit_error_the_sdk_may_retry(tmp_path):
    service = Service(tmp_path)
    service.busy(4)  # every slot of the one denoiser replica: admission refuses before any job exists
    with api_client(service.gateway) as client:
        response = client.post("/v1/videos", json=REQUEST, headers={"Prefer": "wait=30"})
        assert response.status_code == 429 and response.headers["x-should-retry"] == "true"
        sdk = openai.OpenAI(api_key="unused", base_url="http://testserver/v1", http_client=client, max_retries=0)
        with pytest.raises(openai.RateLimitError):
            sdk.videos.create(prompt="a red boat", size="64x64", extra_body=EXTRA, extra_headers={"Prefer": "wait=30"})
    assert service.generator.calls == []
    service.store.close()


# --- a keyed retry of a finished job answers as its first request did ---------------------------


def test_a_keyed_retry_of_a_completed_job_gets_200_with_the_video(client, generator):
    headers = {"Idempotency-Key": "order-1"}
    first = client.post("/v1/videos", json={"prompt": "a red boat", **SMALL}, headers=headers)
    assert first.status_code == 200 and first.json()["status"] == "completed"
    retry = client.post("/v1/videos", json={"prompt": "a red boat", **SMALL}, headers=headers)
    # main: 202 with the completed object, as if the job had just been queued.
    assert retry.status_code == 200, retry.text
    assert retry.json()["id"] == first.json()["id"] and retry.json()["status"] == "completed"
    assert len(generator.calls) == 1


def test_a_keyed_retry_of_a_failed_job_gets_its_error(client, generator):
    generator.error = StageFailed("the denoiser raised")
    headers = {"Idempotency-Key": "order-2"}
    first = client.post("/v1/videos", json={"prompt": "a red boat", **SMALL}, headers=headers)
    retry = client.post("/v1/videos", json={"prompt": "a red boat", **SMALL}, headers=headers)
    assert first.status_code == retry.status_code == 500, retry.text
    assert retry.json()["error"] == first.json()["error"]
    assert retry.headers["x-should-retry"] == "false"
    assert len(generator.calls) == 1


def test_a_keyed_retry_that_asks_for_async_still_gets_202(client, generator):
    headers = {"Idempotency-Key": "order-3"}
    client.post("/v1/videos", json={"prompt": "a red boat", **SMALL}, headers=headers)
    retry = client.post(
        "/v1/videos", json={"prompt": "a red boat", **SMALL}, headers={**headers, "Prefer": "respond-async"}
    )
    assert retry.status_code == 202 and retry.json()["status"] == "completed"
    assert len(generator.calls) == 1


def test_the_sdk_with_an_idempotency_key_gets_one_video(client, generator):
    sdk = sdk_over(client)
    key = {"Idempotency-Key": "order-4"}
    first = sdk.videos.create(prompt="a red boat", size="64x64", extra_body=EXTRA, extra_headers=key)
    again = sdk.videos.create(prompt="a red boat", size="64x64", extra_body=EXTRA, extra_headers=key)
    assert first.id == again.id and again.status == "completed"
    assert len(generator.calls) == 1
