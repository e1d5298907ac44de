"""`input_reference` over HTTP: the OpenAI SDK's file part, JSON data URLs, and every refusal.

Through the real FastAPI app (build_gateway around a fake generator, no Ray):
what a request carries, what the job runs with (the image's hash), where the
bytes are kept, the limits, and that the hash is part of the cache key.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from serve_app.config import ServiceArgs
from tests.helpers import gateway_fixtures
from tests.helpers.images import animated, data_url, encoded, picture, png, png_16bit
from tests.helpers.service import REQUEST, TEST_TIMINGS, Service, api_client, gateway_over

# Fixtures: the in-process gateway over this module's generator, and its HTTP client.
client, generator = gateway_fixtures.client, gateway_fixtures.generator

SMALL = {"prompt": "a red boat", "width": 64, "height": 64, "num_frames": 5, "fps": 8, "num_inference_steps": 2}
# Larger than the 64 KiB body limit on its own: what used to get a misleading 413.
LARGE_IMAGE = png(256, 256)


def _gateway(tmp_path, generator, **args):
    return gateway_over(tmp_path, generator, args=ServiceArgs(data_dir=str(tmp_path), **TEST_TIMINGS, **args))


@pytest.fixture
def gateway(tmp_path, generator):
    gateway = _gateway(tmp_path, generator)
    yield gateway
    gateway.stores.jobs.close()


def error_of(response, status: int, param: str, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


def _form(fields: dict) -> dict:
    return {k: (None, str(v)) for k, v in fields.items()}


def test_a_large_image_fits_its_own_limit_not_the_body_limit():
    assert len(LARGE_IMAGE) > ServiceArgs().access.max_body_bytes


def test_the_openai_sdk_uploads_the_image_as_a_file_part(client, gateway, generator):
    import openai

    sdk = openai.OpenAI(api_key="unused", base_url="http://testserver/v1", http_client=client, max_retries=0)
    video = sdk.videos.create(
        prompt="a red boat",
        input_reference=("boat.png", LARGE_IMAGE, "image/png"),
        size="64x64",
        extra_body={"num_frames": 5, "fps": 8, "num_inference_steps": 2, "seed": 11},
    )
    sha = hashlib.sha256(LARGE_IMAGE).hexdigest()
    assert video.status == "completed"
    assert video.model_extra["input_reference_sha256"] == sha
    [(params, _)] = generator.calls
    assert params.input_reference_sha256 == sha and (params.width, params.height) == (64, 64)
    # Kept where whichever replica runs (or reruns) the job reads it.
    assert gateway.stores.images.get(sha) == LARGE_IMAGE
    assert gateway.stores.jobs.get(video.id).params.input_reference_sha256 == sha


def test_a_file_part_with_no_type_is_sniffed(client, generator):
    # The SDK sends a bare file object as application/octet-stream named "upload".
    files = {**_form(SMALL), "input_reference": ("upload", LARGE_IMAGE, "application/octet-stream")}
    response = client.post("/v1/videos", files=files)
    assert response.status_code == 200, response.text
    assert generator.calls[0][0].input_reference_sha256 == hashlib.sha256(LARGE_IMAGE).hexdigest()


def test_a_json_data_url_is_the_same_image(client, generator):
    response = client.post("/v1/videos", json={**SMALL, "input_reference": {"image_url": data_url(LARGE_IMAGE)}})
    assert response.status_code == 200, response.text
    assert response.json()["input_reference_sha256"] == hashlib.sha256(LARGE_IMAGE).hexdigest()
    assert generator.calls[0][0].input_reference_sha256 == hashlib.sha256(LARGE_IMAGE).hexdigest()


def test_the_form_spelling_of_the_object_works_too(client, generator):
    fields = {**SMALL, "input_reference[image_url]": data_url(LARGE_IMAGE)}
    response = client.post("/v1/videos", files=_form(fields))
    assert response.status_code == 200, response.text
    assert generator.calls[0][0].input_reference_sha256 == hashlib.sha256(LARGE_IMAGE).hexdigest()


def test_a_text_request_has_no_image(client, generator):
    response = client.post("/v1/videos", json=SMALL)
    assert response.status_code == 200, response.text
    assert response.json()["input_reference_sha256"] is None and generator.calls[0][0].input_reference_sha256 is None


@pytest.mark.parametrize(
    "reference, param, fragment",
    [
        ({"image_url": "https://example.com/cat.png"}, "input_reference.image_url", "remote URLs are not fetched"),
        ({"image_url": "http://169.254.169.254/latest"}, "input_reference.image_url", "remote URLs are not fetched"),
        ({"image_url": "file:///etc/passwd"}, "input_reference.image_url", "remote URLs are not fetched"),
        ({"image_url": "cat.png"}, "input_reference.image_url", "is not a base64 data URL"),
        ({"image_url": "data:image/png,%89PNG"}, "input_reference.image_url", "is not a base64 data URL"),
        ({"image_url": "data:text/plain;base64,aGk="}, "input_reference.image_url", "an image/* type is expected"),
        ({"image_url": "data:image/png;base64,***"}, "input_reference.image_url", "not valid base64"),
        ({"file_id": "file-abc123"}, "input_reference.file_id", "file ids are not served here"),
        ({}, "input_reference", "needs image_url"),
    ],
)
def test_what_is_not_an_inline_image_is_refused_naming_the_field(client, generator, reference, param, fragment):
    error = error_of(client.post("/v1/videos", json={**SMALL, "input_reference": reference}), 400, param)
    assert fragment in error["message"]
    assert generator.calls == []


@pytest.mark.parametrize(
    "data, fragment",
    [
        (b"definitely not an image", "is not a PNG, JPEG or WebP image"),
        (png(80, 64)[:3000], "is truncated"),
        (animated("WEBP"), "is animated"),
        (encoded(picture(32, 32), "JPEG", mode="CMYK"), "is a CMYK image"),
        (png_16bit(8, 4), "has 16 bits per channel"),
    ],
    ids=["corrupt", "truncated", "animated", "cmyk", "16-bit"],
)
def test_images_the_model_cannot_start_from_get_a_400_naming_input_reference(client, generator, data, fragment):
    files = {**_form(SMALL), "input_reference": ("x.png", data, "image/png")}
    error = error_of(client.post("/v1/videos", files=files), 400, "input_reference", "invalid_image")
    assert fragment in error["message"]
    error = error_of(
        client.post("/v1/videos", json={**SMALL, "input_reference": {"image_url": data_url(data)}}),
        400,
        "input_reference",
        "invalid_image",
    )
    assert fragment in error["message"]
    assert generator.calls == []


def test_an_image_over_its_own_limit_is_413_naming_input_reference(tmp_path, generator):
    gateway = _gateway(tmp_path, generator, image_input={"max_bytes": 4096})
    image = png(64, 64)
    assert len(image) > 4096
    try:
        with api_client(gateway) as client:
            files = {**_form(SMALL), "input_reference": ("x.png", image, "image/png")}
            error = error_of(client.post("/v1/videos", files=files), 413, "input_reference", "request_too_large")
            assert error["max_image_bytes"] == 4096 and f"{len(image)} bytes" in error["message"]
            as_json = {**SMALL, "input_reference": {"image_url": data_url(image)}}
            error_of(client.post("/v1/videos", json=as_json), 413, "input_reference", "request_too_large")
            # Far past both limits: refused while reading, and the message gives both.
            huge = {**_form(SMALL), "input_reference": ("x.png", b"\0" * 200_000, "image/png")}
            error = error_of(client.post("/v1/videos", files=huge), 413, "body", "request_too_large")
            assert "4096" in error["message"] and "input_reference" in error["message"]
    finally:
        gateway.stores.jobs.close()
    assert generator.calls == []


def test_the_rest_of_the_body_keeps_the_plain_limit_beside_an_image(client, generator):
    limit = ServiceArgs().access.max_body_bytes
    body = {**SMALL, "input_reference": {"image_url": data_url(png(16, 16))}, "padding": "x" * (limit + 10)}
    error = error_of(client.post("/v1/videos", content=json.dumps(body)), 413, "body", "request_too_large")
    assert f"at most {limit}" in error["message"]
    # Without an image the body limit is what it always was.
    plain = {**SMALL, "padding": "x" * (limit + 10)}
    error_of(client.post("/v1/videos", content=json.dumps(plain)), 413, "body", "request_too_large")
    assert generator.calls == []


def test_with_image_input_off_an_image_is_refused(tmp_path, generator):
    gateway = _gateway(tmp_path, generator, image_input={"enabled": False})
    try:
        with api_client(gateway) as client:
            files = {**_form(SMALL), "input_reference": ("x.png", png(16, 16), "image/png")}
            assert "turned off" in error_of(client.post("/v1/videos", files=files), 400, "input_reference")["message"]
            as_json = {**SMALL, "input_reference": {"image_url": data_url(png(16, 16))}}
            error_of(client.post("/v1/videos", json=as_json), 400, "input_reference")
            # ... and text requests are untouched.
            assert client.post("/v1/videos", json=SMALL).status_code == 200
    finally:
        gateway.stores.jobs.close()


def test_an_input_reference_must_be_a_file_part_or_the_object_once(client):
    as_text = _form({**SMALL, "input_reference": "data:image/png;base64,AAAA"})
    assert (
        "must be a file part" in error_of(client.post("/v1/videos", files=as_text), 400, "input_reference")["message"]
    )
    twice = [
        *_form(SMALL).items(),
        ("input_reference", ("a.png", png(8, 8))),
        ("input_reference", ("b.png", png(8, 8))),
    ]
    # The multipart parser takes one file part at most, before anything else looks.
    assert "Too many files" in error_of(client.post("/v1/videos", files=twice), 400, "body")["message"]
    both = [
        *_form({**SMALL, "input_reference[image_url]": data_url(png(8, 8))}).items(),
        ("input_reference", ("a.png", png(8, 8))),
    ]
    assert "more than once" in error_of(client.post("/v1/videos", files=both), 400, "input_reference")["message"]
    other_file = {**_form(SMALL), "negative_prompt": ("n.txt", b"blurry")}
    error_of(client.post("/v1/videos", files=other_file), 400, "negative_prompt")


def test_the_image_is_part_of_the_cache_key(tmp_path):
    service = Service(tmp_path)
    image_a, image_b = png(32, 32, seed=1), png(32, 32, seed=2)

    def post(image: bytes | None) -> dict:
        body = dict(REQUEST)
        if image is not None:
            body["input_reference"] = {"image_url": data_url(image)}
        with api_client(service.gateway) as client:
            response = client.post("/v1/videos", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    try:
        first = post(image_a)
        again = post(image_a)
        other = post(image_b)
        text = post(None)
    finally:
        service.store.close()
    assert not first["cached"] and again["cached"] and again["cache_key"] == first["cache_key"]
    assert not other["cached"] and not text["cached"]
    assert len({first["cache_key"], other["cache_key"], text["cache_key"]}) == 3
    # The same image, the same derived seed; another image, another video.
    assert again["seed"] == first["seed"]
    assert [p.input_reference_sha256 for p, _ in service.generator.calls] == [
        hashlib.sha256(image_a).hexdigest(),
        hashlib.sha256(image_b).hexdigest(),
        None,
    ]


def test_a_tier_keeps_the_image():
    from serve_app.params import GenerationParams
    from serve_app.policy.tiers import Tier, apply_tier

    params = GenerationParams(
        prompt="p",
        negative_prompt="",
        width=64,
        height=64,
        num_frames=17,
        num_inference_steps=25,
        guidance_scale=5.0,
        fps=8,
        seed=1,
        preset="preview",
        input_reference_sha256="a" * 64,
    )
    lowered = apply_tier(params, Tier(name="minimal", max_load=1.0, max_steps=15, max_frames=9))
    assert (lowered.num_frames, lowered.num_inference_steps, lowered.input_reference_sha256) == (9, 15, "a" * 64)
