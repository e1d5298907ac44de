"""The Python client's `image=`: what goes on the wire, and what the real gateway makes of it.

Two views of one request: the bytes `httpx.MockTransport` sees (a multipart body
with the file part `input_reference`, as the OpenAI SDK sends it), and the same
request handed to the real gateway (a fake generator, no Ray), which must store
the job with the image's hash, or refuse a bad image naming `input_reference`.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json

import httpx
import numpy as np
import pytest
from starlette.requests import Request

from serve_app.api.body import read_create_request
from serve_app.client import ClientError, VideoClient
from serve_app.settings.image_input import ImageInputOptions
from tests.helpers.fakes import FakeGenerator
from tests.helpers.images import encoded, picture, png
from tests.helpers.service import api_client, gateway_over
from tests.helpers.wire import video

# Larger than the 64 KiB body limit, so only the image's own limit lets it through.
IMAGE = png(256, 256)
SMALL = {"size": "64x64", "num_frames": 5, "fps": 8, "num_inference_steps": 2, "seed": 11}


def capture(seen: list[httpx.Request]):
    def handler(request: httpx.Request) -> httpx.Response:
        request.read()
        seen.append(request)
        return httpx.Response(202, json=video())

    return httpx.MockTransport(handler)


def parsed_by_the_service(request: httpx.Request):
    """The request as the gateway's own body reader takes it apart (serve_app/api/body.py)."""
    body = request.content
    scope = {
        "type": "http",
        "method": request.method,
        "path": request.url.path,
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in request.headers.items()],
    }
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return asyncio.run(read_create_request(Request(scope, receive), image_input=ImageInputOptions()))


def test_an_image_goes_as_the_sdks_file_part_beside_text_fields():
    seen: list[httpx.Request] = []
    with VideoClient("http://svc", api_key="sk-test", transport=capture(seen)) as client:
        result = client.create(
            "a red kite",
            image=IMAGE,
            idempotency_key="key-1",
            guidance_scale=4.5,
            cache=False,
            negative_prompt=None,
            **SMALL,
        )
    assert result.status == "queued"
    [request] = seen
    assert request.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert request.headers["prefer"] == "respond-async" and request.headers["idempotency-key"] == "key-1"
    assert request.headers["authorization"] == "Bearer sk-test"
    assert b'name="input_reference"; filename="image.png"\r\nContent-Type: image/png\r\n\r\n' in request.content
    assert b"negative_prompt" not in request.content  # None is left out: the same as null to the service

    parsed = parsed_by_the_service(request)
    assert parsed.uploaded_image == IMAGE and parsed.input_reference is None
    assert parsed.model_dump(exclude_unset=True) == {
        "prompt": "a red kite",
        "guidance_scale": 4.5,
        "cache": False,
        **SMALL,
    }


def test_a_text_request_stays_json():
    seen: list[httpx.Request] = []
    with VideoClient("http://svc", transport=capture(seen)) as client:
        client.create("a red kite", **SMALL)
    assert seen[0].headers["content-type"] == "application/json"
    assert json.loads(seen[0].content) == {"prompt": "a red kite", **SMALL}


def _pil_image():
    from PIL import Image

    return Image.fromarray(picture(40, 24, seed=3))


@pytest.mark.parametrize("kind", ["str path", "Path", "bytes", "bytearray", "open file", "PIL image"])
def test_every_kind_of_image_sends_its_bytes(tmp_path, kind):
    path = tmp_path / "kite.webp"
    webp = encoded(picture(40, 24, seed=3), "WEBP", lossless=True)
    path.write_bytes(webp)
    expected_name, expected_bytes, expected_type = "kite.webp", webp, "image/webp"
    seen: list[httpx.Request] = []
    with VideoClient("http://svc", transport=capture(seen)) as client:
        if kind == "str path":
            client.create("a kite", image=str(path))
        elif kind == "Path":
            client.create("a kite", image=path)
        elif kind == "bytes":
            client.create("a kite", image=webp)
            expected_name = "image.webp"
        elif kind == "bytearray":
            client.create("a kite", image=bytearray(webp))
            expected_name = "image.webp"
        elif kind == "open file":
            with open(path, "rb") as f:
                client.create("a kite", image=f)
        else:
            client.create("a kite", image=_pil_image())
            expected_name, expected_bytes, expected_type = "image.png", None, "image/png"
    [request] = seen
    header = f'name="input_reference"; filename="{expected_name}"\r\nContent-Type: {expected_type}\r\n'
    assert header.encode() in request.content
    uploaded = parsed_by_the_service(request).uploaded_image
    if expected_bytes is not None:
        assert uploaded == expected_bytes
    else:
        # A PIL image has no file: it goes as PNG, every pixel kept.
        from PIL import Image

        assert uploaded.startswith(b"\x89PNG")
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(uploaded))), picture(40, 24, seed=3))


@pytest.mark.parametrize(
    "image, fields, message",
    [
        (42, {}, "image: expected a path, bytes, a file opened 'rb' or a PIL image, got int"),
        (io.StringIO("not bytes"), {}, "opened in binary mode"),
        (IMAGE, {"input_reference": {"image_url": "data:image/png;base64,AAAA"}}, "give image or input_reference"),
    ],
)
def test_an_image_the_client_cannot_send_is_a_type_error_before_any_request(image, fields, message):
    def handler(request):
        raise AssertionError("no request expected")

    with VideoClient("http://svc", transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(TypeError, match=message.replace("(", r"\(").replace(")", r"\)")):
            client.create("a kite", image=image, **fields)


def test_a_missing_image_file_is_an_os_error_before_any_request(tmp_path):
    def handler(request):
        raise AssertionError("no request expected")

    with VideoClient("http://svc", transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(FileNotFoundError):
            client.create("a kite", image=tmp_path / "missing.png")


# --- against the real gateway ----------------------------------------------------------


@pytest.fixture
def service(tmp_path):
    generator = FakeGenerator()
    gateway = gateway_over(tmp_path, generator)
    with api_client(gateway) as http:

        def forward(request: httpx.Request) -> httpx.Response:
            # Re-sent byte for byte (TestClient is another httpx's client): only the framing
            # headers it sets itself are left to it.
            headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
            answer = http.request(request.method, request.url.path, headers=headers, content=request.read())
            return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)

        with VideoClient("http://testserver", transport=httpx.MockTransport(forward)) as client:
            yield client, generator, gateway
    gateway.stores.jobs.close()


def test_the_gateway_runs_the_job_with_the_clients_image(service, tmp_path):
    client, generator, gateway = service
    path = tmp_path / "kite.png"
    path.write_bytes(IMAGE)
    result = client.create("a red kite", image=path, wait=True, **SMALL)
    sha = hashlib.sha256(IMAGE).hexdigest()
    assert result.status == "completed" and result.input_reference_sha256 == sha
    [(params, _)] = generator.calls
    assert params.input_reference_sha256 == sha and (params.width, params.height, params.seed) == (64, 64, 11)
    assert gateway.stores.images.get(sha) == IMAGE


def test_an_image_the_service_refuses_is_a_client_error_naming_input_reference(service):
    client, generator, _ = service
    with pytest.raises(ClientError) as info:
        client.create("a red kite", image=b"definitely not an image", **SMALL)
    assert info.value.status == 400 and info.value.param == "input_reference"
    assert "is not a PNG, JPEG or WebP image" in info.value.message
    assert generator.calls == []
