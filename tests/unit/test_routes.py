"""The HTTP API end to end through FastAPI (build_gateway), with a fake generator in place of the Ray graph."""

from __future__ import annotations

import time

import pytest

from serve_app.config import ServiceArgs
from serve_app.errors import DeadlineExceeded
from serve_app.video import probe_mp4
from tests.helpers import gateway_fixtures
from tests.helpers.service import api_client

# Fixtures: the in-process gateway over this module's generator, and its HTTP client.
gateway, generator = gateway_fixtures.gateway, gateway_fixtures.generator

# Small enough that the fake's mp4 is made in milliseconds.
REQUEST = {
    "prompt": "a red boat",
    "width": 64,
    "height": 64,
    "num_frames": 5,
    "fps": 8,
    "num_inference_steps": 4,
    "seed": 11,
}


@pytest.fixture
def store(gateway):
    return gateway.stores.jobs


@pytest.fixture
def client(gateway):
    # Unhandled errors must come back as our 500 JSON, not be re-raised into the test.
    with api_client(gateway) as c:
        yield c


def assert_error(response, status: int, code: str, param: str | None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, param)
    assert error["message"]
    return error


def test_create_video(client, generator):
    response = client.post("/v1/videos", json=REQUEST)
    assert response.status_code == 200, response.text
    video = response.json()
    assert video["id"].startswith("video_") and len(video["id"]) == len("video_") + 32
    assert (video["object"], video["status"], video["progress"]) == ("video", "completed", 100)
    assert video["model"] == "wan2.2-ti2v-tiny"
    assert video["size"] == "64x64"
    assert video["seconds"] == "0.62"  # 5 frames at 8 fps
    for field, value in REQUEST.items():
        assert video[field] == value
    assert video["preset"] == "preview"
    assert video["guidance_scale"] == 5.0  # from the preset
    assert video["error"] is None and video["completed_at"] >= video["created_at"]
    assert video["timings"] == {
        "prompt_encode_s": 0.1,
        "denoise_s": 0.5,
        "decode_s": 0.01,
        "encode_s": 0.02,
        "total_s": 0.6,
    }
    params, deadline = generator.calls[0]
    assert params.seed == 11
    assert 0 < deadline.remaining() <= ServiceArgs().default_deadline_s
    # The gateway's share of the answer, and within it the body read.
    timing = dict(part.strip().split(";dur=") for part in response.headers["server-timing"].split(","))
    assert set(timing) == {"body", "gateway"}
    assert 0 <= float(timing["body"]) <= float(timing["gateway"])


def test_progress_is_recorded_as_events(client, store):
    video_id = client.post("/v1/videos", json=REQUEST).json()["id"]
    events = [e for _, e in store.events_after(video_id, 0)]
    assert [e["type"] for e in events] == ["queued", "progress", "completed"]
    assert (events[1]["step"], events[1]["total_steps"], events[1]["progress"]) == (1, 4, 25)


def test_requested_deadline_is_passed_on(client, generator):
    # Bracket the request with wall-clock reads: exact, however slow the machine.
    before = time.time()
    client.post("/v1/videos", json={**REQUEST, "deadline_s": 2.5})
    after = time.time()
    assert before + 2.5 <= generator.calls[0][1].at <= after + 2.5


def test_random_seed_is_reported(client, generator):
    request = {k: v for k, v in REQUEST.items() if k != "seed"}
    video = client.post("/v1/videos", json=request).json()
    assert video["seed"] == generator.calls[0][0].seed
    assert 0 <= video["seed"] <= 2**32 - 1


def test_get_video_and_content(client):
    created = client.post("/v1/videos", json=REQUEST).json()
    fetched = client.get(f"/v1/videos/{created['id']}")
    assert fetched.status_code == 200
    assert fetched.json() == created

    content = client.get(f"/v1/videos/{created['id']}/content")
    assert content.status_code == 200
    assert content.headers["content-type"] == "video/mp4"
    info = probe_mp4(content.content)
    assert (info.frames, info.width, info.height, info.fps) == (5, 64, 64, 8.0)


@pytest.mark.parametrize(
    "change, param",
    [
        ({"num_frames": "abc"}, "num_frames"),
        ({"guidance_scale": [1]}, "guidance_scale"),
        ({"colour": "red"}, "colour"),  # extra=forbid
        ({"prompt": None}, "prompt"),
        ({"model": "sora-2"}, "model"),
        ({"deadline_s": 0}, "deadline_s"),
        ({"deadline_s": -1}, "deadline_s"),
        ({"deadline_s": 600.5}, "deadline_s"),
        ({"num_frames": 16}, "num_frames"),
        ({"width": 100}, "width"),
        ({"preset": "cinema"}, "preset"),
        ({"size": "64x64"}, "size"),  # together with width/height
    ],
)
def test_invalid_request_is_400_naming_the_field(client, generator, change, param):
    error = assert_error(client.post("/v1/videos", json={**REQUEST, **change}), 400, "invalid_request", param)
    assert error["type"] == "invalid_request_error"
    assert generator.calls == []


def test_missing_prompt(client):
    request = {k: v for k, v in REQUEST.items() if k != "prompt"}
    error = assert_error(client.post("/v1/videos", json=request), 400, "invalid_request", "prompt")
    assert "required" in error["message"].lower()


def test_wrong_type_message_quotes_the_value(client):
    error = assert_error(
        client.post("/v1/videos", json={**REQUEST, "num_frames": "abc"}), 400, "invalid_request", "num_frames"
    )
    assert "'abc'" in error["message"]


def test_largest_deadline_is_accepted(client):
    assert client.post("/v1/videos", json={**REQUEST, "deadline_s": 600}).status_code == 200


def test_model_by_id_or_profile_name(client):
    for model in ("wan2.2-ti2v-tiny", "tiny"):
        assert client.post("/v1/videos", json={**REQUEST, "model": model}).status_code == 200


@pytest.mark.parametrize("video_id", ["video_" + "0" * 32, "video_nothex", "video_..", "x" * 300])
@pytest.mark.parametrize("suffix", ["", "/content"])
def test_unknown_or_malformed_id_is_404(client, video_id, suffix):
    assert_error(client.get(f"/v1/videos/{video_id}{suffix}"), 404, "not_found", "video_id")


@pytest.mark.parametrize("method, path, status", [("get", "/v1/nope", 404), ("put", "/v1/videos", 405)])
def test_unrouted_requests_get_the_error_shape(client, method, path, status):
    response = getattr(client, method)(path)
    assert response.status_code == status
    assert response.json()["error"]["code"]


def test_malformed_json_names_the_body(client):
    response = client.post("/v1/videos", content=b"{not json", headers={"content-type": "application/json"})
    assert_error(response, 400, "invalid_request", "body")


def test_deadline_exceeded_is_504_and_recorded(client, generator):
    generator.error = DeadlineExceeded("stopped after step 3 of 4", stage="denoise", step=3, total_steps=4)
    error = assert_error(client.post("/v1/videos", json=REQUEST), 504, "deadline_exceeded", None)
    assert (error["step"], error["total_steps"], error["stage"]) == (3, 4, "denoise")
    video = client.get(f"/v1/videos/{error['video_id']}").json()
    assert video["status"] == "failed"
    assert video["error"] == {"code": "deadline_exceeded", "message": "stopped after step 3 of 4"}

    # No content for a failed video: 409, not 404 and not an empty file.
    conflict = assert_error(client.get(f"/v1/videos/{error['video_id']}/content"), 409, "video_not_ready", "video_id")
    assert conflict["status"] == "failed"


def test_unexpected_error_is_500_without_internals(client, generator):
    generator.error = RuntimeError("CUDA exploded at /secret/path.py line 42")
    response = client.post("/v1/videos", json=REQUEST)
    error = assert_error(response, 500, "stage_failed", None)
    assert error["type"] == "server_error"
    assert error["video_id"].startswith("video_")
    assert "Traceback" not in response.text
    assert "secret" not in response.text and "CUDA" not in response.text


def test_unexpected_error_marks_the_video_failed(client, generator):
    generator.error = RuntimeError("boom")
    video_id = client.post("/v1/videos", json=REQUEST).json()["error"]["video_id"]
    assert client.get(f"/v1/videos/{video_id}").json()["status"] == "failed"


def test_unknown_variant(client):
    video_id = client.post("/v1/videos", json=REQUEST).json()["id"]
    assert_error(client.get(f"/v1/videos/{video_id}/content?variant=poster"), 400, "invalid_request", "variant")


def test_openapi_lists_the_routes(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert {"/v1/videos", "/v1/videos/{video_id}", "/v1/videos/{video_id}/content"} <= set(paths)
    assert "post" in paths["/v1/videos"]


def test_healthz_without_probe(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "model": "wan2.2-ti2v-tiny@seed0",
        "attention_backend": "sdpa",
        "default_deadline_s": 30.0,
        "stages": {},
        "access": None,
        "load": None,
    }


def test_presets(client):
    body = client.get("/v1/presets").json()
    assert sorted(body["presets"]) == ["official", "preview", "standard"]
    assert body["default_preset"] == "preview"
    assert body["presets"]["official"]["width"] == 1280
    assert body["limits"]["max_frames"] == 121


def test_openapi_documents_the_error_shape_the_service_sends(client):
    """/openapi.json shows our error body for 400 (and no FastAPI 422, never sent), and a real 400 fits it."""
    from serve_app.api.protocol import ErrorResponse

    spec = client.get("/openapi.json").json()
    create = spec["paths"]["/v1/videos"]["post"]["responses"]
    assert create["400"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
    assert "422" not in create
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for status in ("401", "404", "429", "503"):
        assert status in spec["paths"]["/v1/videos/{video_id}"]["get"]["responses"]
    rejected = client.post("/v1/videos", json={**REQUEST, "width": -1})
    assert rejected.status_code == 400
    error = ErrorResponse.model_validate(rejected.json()).error
    assert (error.code, error.param) == ("invalid_request", "width")
