"""Issue 16: POST /v1/videos/{id}/remix, OpenAI's remix, through the official SDK.

A remix re-runs the source video's settings and seed with a new prompt, says
`remixed_from_video_id`, and is a create like any other: the result cache,
admission and tiers, API keys and idempotency keys all apply. Through the real
FastAPI app (build_gateway around a fake generator, no Ray).
"""

from __future__ import annotations

import hashlib
import time

import openai
import pytest

from serve_app.access.config import AccessConfig
from serve_app.access.guard import AccessGuard
from serve_app.access.keys import hash_secret
from tests.helpers import gateway_fixtures
from tests.helpers.access import ALICE, BOB, bearer
from tests.helpers.images import png
from tests.helpers.service import REQUEST, Service, api_client

# Fixtures: the in-process gateway over this module's generator, and its HTTP client.
client, gateway, generator = gateway_fixtures.client, gateway_fixtures.gateway, gateway_fixtures.generator

SOURCE = {
    "prompt": "a red boat",
    "negative_prompt": "fog",
    "size": "96x64",
    "fps": 8,
    "num_inference_steps": 3,
    "guidance_scale": 4.5,
    "seed": 1234,
}


@pytest.fixture
def sdk(client):
    return openai.OpenAI(api_key="unused", base_url="http://testserver/v1", http_client=client)


def _settings(params) -> dict:
    return params.model_dump(exclude={"prompt"})


def test_the_sdk_remixes_a_video_with_its_settings_and_seed(sdk, generator):
    source = sdk.videos.create(prompt=SOURCE["prompt"], size="96x64", seconds="1", extra_body=_extra(SOURCE))
    remix = sdk.videos.remix(source.id, prompt="a blue boat at night")

    assert remix.status == "completed" and remix.id != source.id
    assert remix.remixed_from_video_id == source.id and source.remixed_from_video_id is None
    assert remix.prompt == "a blue boat at night" and remix.seconds == source.seconds == "1"
    (source_params, _), (remix_params, _) = generator.calls
    assert remix_params.prompt == "a blue boat at night"
    assert _settings(remix_params) == _settings(source_params)  # size, frames, fps, steps, guidance, seed...
    assert (remix_params.seed, remix_params.negative_prompt, remix_params.num_frames) == (1234, "fog", 9)
    # Stored like any video: retrieve and list show it as a remix.
    assert sdk.videos.retrieve(remix.id).remixed_from_video_id == source.id


def _extra(fields: dict) -> dict:
    return {k: v for k, v in fields.items() if k not in ("prompt", "size")}


def test_an_unknown_source_is_an_openai_404(sdk, generator):
    with pytest.raises(openai.NotFoundError) as info:
        sdk.videos.remix("video_nope", prompt="anything")
    assert (info.value.type, info.value.code, info.value.param) == ("invalid_request_error", "not_found", "video_id")
    assert info.value.response.headers["x-should-retry"] == "false"
    assert generator.calls == []


def test_a_deleted_source_is_a_404(client, generator):
    source = client.post("/v1/videos", json=SOURCE).json()
    assert client.delete(f"/v1/videos/{source['id']}").status_code == 200
    assert client.post(f"/v1/videos/{source['id']}/remix", json={"prompt": "x"}).status_code == 404
    assert len(generator.calls) == 1


@pytest.mark.parametrize(
    "body, param",
    [({}, "prompt"), ({"prompt": "x", "size": "64x64"}, "size"), ({"prompt": ""}, "prompt"), ([1], "body")],
)
def test_a_bad_body_is_a_400_naming_the_field(client, generator, body, param):
    source = client.post("/v1/videos", json=SOURCE).json()
    response = client.post(f"/v1/videos/{source['id']}/remix", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert len(generator.calls) == 1


def test_run_options_and_the_idempotency_key_work_as_on_a_create(client, generator):
    source = client.post("/v1/videos", json=SOURCE).json()
    key = {"Idempotency-Key": "remix-1"}
    queued = client.post(
        f"/v1/videos/{source['id']}/remix",
        json={"prompt": "a blue boat", "deadline_s": 20},
        headers={**key, "Prefer": "respond-async"},
    )
    assert queued.status_code == 202 and queued.json()["remixed_from_video_id"] == source["id"]
    again = client.post(f"/v1/videos/{source['id']}/remix", json={"prompt": "a blue boat"}, headers=key)
    assert again.json()["id"] == queued.json()["id"]
    assert len(generator.calls) == 2  # the source and one remix


def test_another_keys_video_cannot_be_remixed(tmp_path):
    guard = AccessGuard(
        AccessConfig(
            api_keys=[{"id": "alice", "sha256": hash_secret(ALICE)}, {"id": "bob", "sha256": hash_secret(BOB)}],
            api_keys_env="",
        ),
        {},
    )
    service = Service(tmp_path, access=guard)
    with api_client(service.gateway) as client:
        mine = client.post("/v1/videos", json=REQUEST, headers=bearer(ALICE)).json()
        theirs = client.post(f"/v1/videos/{mine['id']}/remix", json={"prompt": "stolen"}, headers=bearer(BOB))
        assert theirs.status_code == 404 and theirs.json()["error"]["code"] == "not_found"
        assert client.post(f"/v1/videos/{mine['id']}/remix", json={"prompt": "x"}).status_code == 401
        own = client.post(f"/v1/videos/{mine['id']}/remix", json={"prompt": "mine again"}, headers=bearer(ALICE))
        assert own.status_code == 200 and own.json()["remixed_from_video_id"] == mine["id"]
        # The remix is alice's: bob cannot see it either.
        assert client.get(f"/v1/videos/{own.json()['id']}", headers=bearer(BOB)).status_code == 404
    assert len(service.generator.calls) == 2
    service.store.close()


def test_a_remix_goes_through_the_result_cache(tmp_path):
    service = Service(tmp_path)
    with api_client(service.gateway) as client:
        source = client.post("/v1/videos", json=REQUEST).json()
        first = client.post(f"/v1/videos/{source['id']}/remix", json={"prompt": "a green boat"}).json()
        second = client.post(f"/v1/videos/{source['id']}/remix", json={"prompt": "a green boat"}).json()
        # The same remix twice is one generation; the cached answer is a remix too.
        assert (first["cached"], second["cached"]) == (False, True)
        assert first["remixed_from_video_id"] == second["remixed_from_video_id"] == source["id"]
        # A create of the same settings, seed and prompt is the same video: a hit as well.
        same = client.post("/v1/videos", json={**REQUEST, "prompt": "a green boat"}).json()
        assert same["cached"] and same["remixed_from_video_id"] is None
    assert len(service.generator.calls) == 2
    service.store.close()


def test_a_remix_is_admitted_like_a_create(tmp_path):
    service = Service(tmp_path)
    with api_client(service.gateway) as client:
        source = client.post("/v1/videos", json=REQUEST).json()
        service.busy(4)  # every slot taken
        refused = client.post(
            f"/v1/videos/{source['id']}/remix", json={"prompt": "a green boat"}, headers={"Prefer": "wait=30"}
        )
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "over_capacity"
        assert refused.headers["x-should-retry"] == "true"
    assert len(service.generator.calls) == 1
    service.store.close()


def test_a_remix_asks_for_what_a_tier_lowered_in_its_source(tmp_path):
    service = Service(tmp_path)
    service.busy(2)  # half load: the "reduced" tier lowers steps and frames
    with api_client(service.gateway) as client:
        source = client.post("/v1/videos", json=REQUEST).json()
        assert source["tier"] == "reduced" and source["requested"] == {"num_inference_steps": 25, "num_frames": 17}
        for job in service.store.active(100):  # the load is gone
            service.store.delete(job.id)
        remix = client.post(f"/v1/videos/{source['id']}/remix", json={"prompt": "a green boat"}).json()
    # Admitted at its own tier: idle now, it runs what the source asked for.
    assert (remix["tier"], remix["num_inference_steps"], remix["num_frames"]) == ("full", 25, 17)
    assert remix["seconds"] == f"{17 / 8:.2f}" and remix["seed"] == source["seed"]
    service.store.close()


def test_an_image_to_video_source_lends_its_first_frame(client, gateway, generator):
    image = png(96, 64)
    sha = hashlib.sha256(image).hexdigest()
    files = {**{k: (None, str(v)) for k, v in SOURCE.items()}, "input_reference": ("boat.png", image, "image/png")}
    source = client.post("/v1/videos", files=files).json()
    assert source["input_reference_sha256"] == sha
    remix = client.post(f"/v1/videos/{source['id']}/remix", json={"prompt": "the boat sails off"})
    assert remix.status_code == 200, remix.text
    assert remix.json()["input_reference_sha256"] == sha
    assert generator.calls[-1][0].input_reference_sha256 == sha

    gateway.stores.images.sweep(older_than=time.time() + 60)  # its keep time ran out
    gone = client.post(f"/v1/videos/{source['id']}/remix", json={"prompt": "the boat sinks"})
    assert gone.status_code == 410 and gone.json()["error"]["code"] == "input_reference_gone"
    assert len(generator.calls) == 2
