"""Hostile input: everything the API accepts is bounded, ids cannot escape the
artifact folder, webhooks cannot reach outside the allowlist, and error bodies
leak neither stack traces nor secrets.

Through the real FastAPI app (build_gateway around a fake generator, no Ray),
except where a unit (ids, artifact store, webhook check) is the thing under test.
"""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest

from serve_app.api.body import MAX_FORM_FIELDS
from serve_app.artifacts import LocalArtifactStore, S3ArtifactStore
from serve_app.config import ServiceArgs, load_presets
from serve_app.errors import InvalidRequest, NotFound
from serve_app.graph import GraphResult
from serve_app.ids import check_video_id
from serve_app.messages import EncodedVideo
from serve_app.video import encode_mp4
from serve_app.webhooks import WebhookConfig, WebhookRejected, check_destination
from tests.helpers import gateway_fixtures

# Fixtures: the in-process gateway over this module's generator, and its HTTP client.
client, gateway = gateway_fixtures.client, gateway_fixtures.gateway

REQUEST = {"prompt": "a red boat", "width": 64, "height": 64, "num_frames": 5, "fps": 8, "num_inference_steps": 2}
LIMIT = ServiceArgs().access.max_body_bytes if hasattr(ServiceArgs(), "access") else 64 * 1024
SECRET = "hunter2-not-for-clients"
MP4 = encode_mp4(np.full((5, 64, 64, 3), 100, dtype=np.uint8), 8)


class Generator:
    def __init__(self) -> None:
        self.error: BaseException | None = None

    async def generate(self, params, deadline, on_progress=None, job_id=None) -> GraphResult:
        if self.error is not None:
            raise self.error
        video = EncodedVideo(mp4=MP4, num_frames=5, width=64, height=64, fps=8, decode_s=0.0, encode_s=0.0)
        return GraphResult(video=video, prompt_encode_s=0.0, denoise_s=0.0, total_s=0.0)


@pytest.fixture
def generator():
    return Generator()


def error_of(response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] and error["message"] and error["type"]
    if param is not None:
        assert error["param"] == param, error
    assert "Traceback" not in response.text
    return error


def post_json(client, raw: bytes | str, **headers):
    return client.post("/v1/videos", content=raw, headers={"content-type": "application/json", **headers})


# --------------------------------------------------------------------------- body size


def test_declared_length_over_the_limit_is_refused_before_reading(client):
    # Ten bytes sent, a gigabyte declared: the declaration alone is enough.
    error = error_of(post_json(client, b"{}" * 5, **{"content-length": str(10**9)}), 413, "body")
    assert error["code"] == "request_too_large"


def test_a_body_without_a_length_is_cut_off_at_the_limit(client):
    sent = []

    def chunks():
        for _ in range(LIMIT // 1000 + 50):
            sent.append(1000)
            yield b" " * 1000

    error = error_of(post_json(client, chunks()), 413, "body")
    assert f"{LIMIT}" in error["message"]


def test_a_length_that_is_not_ascii_digits_is_not_trusted_but_the_body_still_counted(client):
    response = post_json(client, b" " * (LIMIT + 1), **{"content-length": "\u00b2".encode("latin-1")})
    error_of(response, 413, "body")


# --------------------------------------------------------------------------- JSON that breaks parsers


@pytest.mark.parametrize(
    "raw, fragment",
    [
        (b"[" * 30_000, "RecursionError"),  # under the size limit, over the recursion limit
        (b'{"prompt": "x", "seed": ' + b"9" * 5000 + b"}", "ValueError"),  # Python's int digit limit
        (b'{"prompt": "\xff\xfe"}', "UnicodeDecodeError"),
        (b"", "body must be a JSON object"),
        (b"[1, 2]", "body must be a JSON object"),
    ],
)
def test_bodies_that_break_the_json_parser_are_400(client, raw, fragment):
    assert fragment in error_of(post_json(client, raw), 400, "body")["message"]


@pytest.mark.parametrize(
    "field, raw_value, fragment",
    [
        ("seconds", '"nan"', "not a finite number"),
        ("seconds", "Infinity", "not a finite number"),
        ("seconds", '"1e999"', "not a finite number"),
        ("seconds", "1e308", "more than max_frames"),  # finite, but x fps overflowed to inf: was a 500
        ("guidance_scale", "NaN", "outside the allowed range"),
        ("deadline_s", "Infinity", "outside the allowed range"),
        ("prompt", '"\\ud800 lone surrogate"', "unpaired surrogates"),
        ("negative_prompt", '"\\udfff"', "unpaired surrogates"),
        ("prompt", '"cut\\u0000here"', "NUL"),
        ("width", "1" + "0" * 40, "outside the allowed range"),
    ],
)
def test_values_that_used_to_crash_later_are_refused_naming_the_field(client, field, raw_value, fragment):
    body = {k: v for k, v in REQUEST.items() if not (field == "seconds" and k == "num_frames")}
    raw = json.dumps(body)[:-1] + f', "{field}": {raw_value}}}'
    error = error_of(post_json(client, raw), 400, field)
    assert fragment in error["message"]


def test_prompt_length_is_bounded_and_not_echoed(client):
    limit = load_presets().limits.max_prompt_chars
    error = error_of(client.post("/v1/videos", json={**REQUEST, "prompt": "p" * (limit + 1)}), 400, "prompt")
    assert f"{limit + 1} characters; at most {limit}" in error["message"]
    assert "p" * 100 not in error["message"]


def test_prompt_length_counts_the_nfkc_form(client):
    # U+FDFA is one character sent and 18 once normalised: 112 of them are 2016.
    limit = load_presets().limits.max_prompt_chars
    error = error_of(client.post("/v1/videos", json={**REQUEST, "prompt": "\ufdfa" * 112}), 400, "prompt")
    assert "2016 characters after Unicode NFKC normalisation" in error["message"]
    assert f"at most {limit} are allowed" in error["message"]


@pytest.mark.parametrize("field, size", [("model", 201), ("preset", 101), ("size", 33), ("webhook_url", 2049)])
def test_string_fields_are_bounded_and_echoes_are_cut(client, field, size):
    error = error_of(client.post("/v1/videos", json={**REQUEST, field: "z" * size}), 400, field)
    assert len(error["message"]) < 400


# --------------------------------------------------------------------------- multipart and forms


def test_multipart_part_count_is_bounded(client):
    parts = [(f"f{i}", (None, "1")) for i in range(MAX_FORM_FIELDS + 1)]
    assert "Too many fields" in error_of(client.post("/v1/videos", files=parts), 400, "body")["message"]


def test_multipart_file_parts_and_duplicates_are_refused(client):
    error_of(client.post("/v1/videos", files={"prompt": ("prompt.txt", b"a cat")}), 400, "prompt")
    twice = [("prompt", (None, "a")), ("prompt", (None, "b"))]
    assert "more than once" in error_of(client.post("/v1/videos", files=twice), 400, "prompt")["message"]


def test_multipart_without_boundary_and_broken_forms_are_400(client):
    error_of(client.post("/v1/videos", content=b"x", headers={"content-type": "multipart/form-data"}), 400, "body")
    many = "&".join(f"f{i}=1" for i in range(MAX_FORM_FIELDS + 1))
    form = {"content-type": "application/x-www-form-urlencoded"}
    error_of(client.post("/v1/videos", content=many, headers=form), 400, "body")
    error_of(client.post("/v1/videos", content=b"prompt=\xff", headers=form), 400, "body")


def test_a_well_formed_form_still_works(client):
    response = client.post("/v1/videos", data={k: str(v) for k, v in REQUEST.items()})
    assert response.status_code == 200, response.text


# --------------------------------------------------------------------------- headers


def test_idempotency_key_is_bounded_and_header_values_are_never_echoed(client):
    key = "secret-looking-" + "k" * 200
    error = error_of(client.post("/v1/videos", json=REQUEST, headers={"Idempotency-Key": key}), 400)
    assert "at most 200 characters" in error["message"]
    assert key not in error["message"] and "kkkkkkkk" not in error["message"]


@pytest.mark.parametrize("value", ["\u00b2", "9" * 5000, "-1", "1.5", "0x10"])
def test_odd_last_event_ids_replay_from_the_start_instead_of_failing(client, value):
    video_id = client.post("/v1/videos", json=REQUEST).json()["id"]
    response = client.get(f"/v1/videos/{video_id}/events", headers={"Last-Event-ID": value.encode("latin-1")})
    assert response.status_code == 200, response.text
    assert response.text.startswith("id: 1\n")


def test_prefer_garbage_is_a_400_naming_the_header(client):
    error_of(client.post("/v1/videos", json=REQUEST, headers={"Prefer": "wait=soon"}), 400, "Prefer")


# --------------------------------------------------------------------------- ids and paths


@pytest.mark.parametrize(
    "video_id",
    [
        "../../etc/passwd",
        "video_../../../etc",
        "video_" + "0" * 31 + "/",
        "video_" + "0" * 31 + "\x00",
        "video_" + "0" * 32 + "\n",
        "VIDEO_" + "0" * 32,
        "video_" + "A" * 32,
        "video_" + "\u0660" * 32,
        "video_" + "0" * 30 + "%2F",
        "video_" + "0" * 31 + "\\",
        "",
        ".",
        "..",
        "video_" + "0" * 33,
    ],
)
def test_only_our_id_shape_is_accepted(video_id, tmp_path):
    with pytest.raises(NotFound):
        check_video_id(video_id)
    store = LocalArtifactStore(tmp_path / "store")
    with pytest.raises(NotFound):
        store.put(video_id, "video", b"x")
    with pytest.raises(NotFound):
        store.local_path(video_id, "video")
    with pytest.raises(NotFound):
        S3ArtifactStore("bucket", client=object()).key(video_id, "video")
    # Nothing was written anywhere, inside the store or beside it.
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["store"]


@pytest.mark.parametrize("variant", ["../video", "video/../../x", "\x00", "VIDEO", "thumbnail.jpg", ""])
def test_variants_cannot_name_other_files(tmp_path, variant):
    store = LocalArtifactStore(tmp_path)
    with pytest.raises(InvalidRequest):
        store.local_path("video_" + "0" * 32, variant)


def test_not_found_echo_of_a_long_id_is_cut():
    with pytest.raises(NotFound) as info:
        check_video_id("x" * 10_000)
    assert len(info.value.message) < 120


@pytest.mark.parametrize(
    "path",
    [
        "/v1/videos/..%2F..%2Fetc%2Fpasswd",
        "/v1/videos/%2e%2e%2f%2e%2e%2fetc",
        "/v1/videos/video_%00",
        "/v1/videos/..%5C..%5Cwindows/content",
        "/v1/videos/%252e%252e%252f/content",
        "/v1/videos/" + "a" * 5000 + "/content",
    ],
)
def test_path_tricks_are_404s_in_our_shape(client, path):
    error_of(client.get(path), 404)


def test_content_of_a_real_video_with_a_traversal_variant_is_refused(client):
    video_id = client.post("/v1/videos", json=REQUEST).json()["id"]
    error_of(client.get(f"/v1/videos/{video_id}/content", params={"variant": "../../../etc/passwd"}), 400, "variant")
    assert client.get(f"/v1/videos/{video_id}/content").status_code == 200


# ----------------------------------------------------------------- webhooks (what test_webhook_*.py leave out)

PERMISSIVE = WebhookConfig(secret="s", allowed_hosts=["*.1", "*.example.com"], allow_http=True)


@pytest.mark.parametrize("host", ["127.1", "0x7f.0.0.1", "127.0.1", "0x7f.1"])
def test_numeric_host_forms_resolve_to_what_they_mean_and_are_refused(host):
    """A suffix pattern may match an address written as a name; the real
    resolver (inet_aton rules: short, hex forms) then yields 127.0.0.1."""
    with pytest.raises(WebhookRejected, match="non-public address '127.0.0.1'"):
        check_destination(f"http://{host}/hook", PERMISSIVE)


@pytest.mark.parametrize("url", ["http://0177.0.0.1/", "http://0x7f000001/", "http://017700000001/", "http://0/"])
def test_octal_and_single_number_forms_never_pass(url):
    with pytest.raises(WebhookRejected):
        check_destination(url, PERMISSIVE)


def test_a_decimal_address_cannot_be_allowlisted_as_a_name():
    with pytest.raises(ValueError, match="not a valid IP address"):
        WebhookConfig(secret="s", allowed_hosts=["2130706433"])


@pytest.mark.parametrize(
    "url",
    [
        "http://a.example.com@127.0.0.1/",  # credentials, then the real host
        "http://127.0.0.1#@a.example.com/",  # fragment hides the host from a naive parser
        "http://127.0.0.1\\@a.example.com/",
        "http://127.0.0.1%2f@a.example.com/",
        "http://a.example.com:80@evil.net/",
        "http://a.example.com\x00.evil.net/",
        "http://a.example.com\t/",
        "http://[::ffff:7f00:1]/",  # IPv4-mapped loopback, hex form
        "http://[0:0:0:0:0:ffff:127.0.0.1]/",
        "http://[::127.0.0.1]/",  # IPv4-compatible (deprecated) form
        "http://[fe80::1%25eth0]/",  # link-local with a zone id
    ],
)
def test_parser_confusions_and_ipv6_spellings_are_refused(url):
    with pytest.raises(WebhookRejected):
        check_destination(url, PERMISSIVE, resolver=lambda host, port: ["93.184.216.34"])


@pytest.mark.parametrize(
    "answer",
    [
        "::127.0.0.1",
        "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo whose client address is 127.0.0.1
        "2002:a00:1::1",  # 6to4 of 10.0.0.1 (the IPv6 address itself counts as global)
        "64:ff9b:1::a9fe:a9fe",  # local-use NAT64 prefix
        "fe80::1%eth0",
    ],
)
def test_dns_answers_hiding_private_ipv4_are_refused(answer):
    with pytest.raises(WebhookRejected, match="non-public address"):
        check_destination("https://a.example.com/hook", PERMISSIVE, resolver=lambda host, port: [answer])


def test_unicode_dots_normalise_to_the_name_that_is_checked():
    seen = []

    def resolve(host, port):
        seen.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "unknown")

    with pytest.raises(WebhookRejected):
        check_destination("http://a\u3002example\u3002com/hook", PERMISSIVE, resolver=resolve)
    assert seen == ["a.example.com"]  # the same name the connection would use, not a look-alike


def test_webhook_rejection_reaches_the_client_as_a_400(client, gateway):
    gateway.creator.check_webhook = lambda url: check_destination(url, PERMISSIVE, resolver=lambda h, p: ["10.0.0.7"])
    response = client.post("/v1/videos", json={**REQUEST, "webhook_url": "https://a.example.com/hook"})
    assert error_of(response, 400, "webhook_url")["code"] == "invalid_webhook_url"


# --------------------------------------------------------------------------- error bodies


def test_a_failing_generation_does_not_leak_its_exception_text(client, generator):
    generator.error = RuntimeError(f"redis://:{SECRET}@10.0.0.3:6379 refused\nTraceback (most recent call last):")
    response = client.post("/v1/videos", json=REQUEST)
    assert response.status_code >= 500
    assert SECRET not in response.text and "Traceback" not in response.text
    video_id = response.json()["error"].get("video_id")
    assert video_id and SECRET not in client.get(f"/v1/videos/{video_id}").text


def test_an_unexpected_route_error_is_a_bare_500(client, gateway, monkeypatch):
    def explode():
        raise KeyError(f"config secret {SECRET}")

    monkeypatch.setattr(gateway.report, "describe", explode)
    response = client.get("/v1/presets")
    error = error_of(response, 500)
    assert error == {
        "code": "internal_error",
        "message": "internal error; see the service log",
        "type": "server_error",
        "param": None,
    }
