"""The Python client without a service: SSE parsing, error mapping, headers, resume.

Every test drives `VideoClient` through `httpx.MockTransport`, so what is
checked is the bytes on the wire both ways.
"""

from __future__ import annotations

import json

import httpx
import pytest

from serve_app.api.streams import Reconnect
from serve_app.client import ClientError, ServerSentEvent, ServiceUnreachable, VideoClient, parse_sse
from tests.helpers.wire import sse, video


def client_for(handler, **kwargs) -> VideoClient:
    return VideoClient("http://svc", transport=httpx.MockTransport(handler), **kwargs)


# --- SSE parsing ----------------------------------------------------------------------


def test_parse_sse_fields_multiline_data_and_comments():
    lines = [
        ": a comment, ignored",
        "retry: 1000",
        "id: 1",
        "event: queued",
        'data: {"type": "queued",',
        'data:  "queue_position": 3}',
        "",
        "data: no event name",
        "",
        "id: 7",
        "event:progress",
        "data:x",
        "unknown: field",
        "",
    ]
    events = list(parse_sse(lines))
    assert events == [
        ServerSentEvent(data='{"type": "queued",\n "queue_position": 3}', event="queued", id="1"),
        # The last event id persists to later events, as EventSource keeps it.
        ServerSentEvent(data="no event name", event="message", id="1"),
        ServerSentEvent(data="x", event="progress", id="7"),
    ]
    assert events[0].json() == {"type": "queued", "queue_position": 3}


def test_parse_sse_blank_lines_alone_and_truncated_tail():
    # Blank lines with no data dispatch nothing; an event cut off before its
    # blank line (connection broke mid-event) is discarded, not half-delivered.
    assert list(parse_sse(["", "", "event: queued", "", "data: partial"])) == []


def test_parse_sse_empty_data_line_and_id_with_nul():
    events = list(parse_sse(["id: 3", "data", "", "id: bad\0id", "data: y", ""]))
    assert events == [ServerSentEvent(data="", id="3"), ServerSentEvent(data="y", id="3")]


def test_events_over_the_wire_split_across_chunks_and_crlf():
    body = (
        sse(1, {"type": "queued", "queue_position": 0, "eta_s": 1.0, "attempt": 1})
        + b'id: 2\r\nevent: progress\r\ndata: {"type": "progress",\r\ndata: "step": 1, "total_steps": 3}\r\n\r\n'
        + sse(3, {"type": "completed", "video": video(status="completed", progress=100)})
    )
    chunks = [body[i : i + 7] for i in range(0, len(body), 7)]  # lines split mid-way

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/videos/video_abc/events"
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=iter(chunks))

    with client_for(handler) as client:
        events = list(client.events("video_abc"))
    assert [e["type"] for e in events] == ["queued", "progress", "completed"]
    assert events[1] == {"type": "progress", "step": 1, "total_steps": 3}
    assert events[2]["video"]["status"] == "completed"


def test_events_stop_after_the_terminal_event():
    served = []

    def body():
        for chunk in (
            sse(1, {"type": "failed", "video": video(status="failed", error={"code": "cancelled", "message": "x"})}),
            b"id: 2\nevent: progress\ndata: {}\n\n",
        ):
            served.append(chunk)
            yield chunk

    def handler(request):
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body())

    with client_for(handler) as client:
        events = list(client.events("video_abc"))
    assert [e["type"] for e in events] == ["failed"]
    assert len(served) == 1  # nothing read past the terminal event


def test_events_sends_last_event_id_and_maps_errors_before_the_stream():
    seen = {}

    def handler(request):
        seen.update(request.headers)
        return httpx.Response(
            404,
            json={
                "error": {
                    "code": "not_found",
                    "message": "no video with id 'x'",
                    "type": "invalid_request_error",
                    "param": "video_id",
                }
            },
        )

    with client_for(handler) as client, pytest.raises(ClientError) as info:
        list(client.events("x", last_event_id="5"))
    assert seen["last-event-id"] == "5" and seen["accept"] == "text/event-stream"
    assert (info.value.status, info.value.code, info.value.param) == (404, "not_found", "video_id")


# --- errors ---------------------------------------------------------------------------


def test_error_body_maps_to_client_error_with_details():
    body = {
        "error": {
            "code": "invalid_request",
            "type": "invalid_request_error",
            "param": "num_frames",
            "message": "num_frames=16 is not of the form 4k+1; nearest allowed: 13 or 17",
            "extra": 1,
        }
    }

    with client_for(lambda request: httpx.Response(400, json=body)) as client, pytest.raises(ClientError) as info:
        client.create("a kite", num_frames=16)
    err = info.value
    assert (err.status, err.code, err.param) == (400, "invalid_request", "num_frames")
    assert err.message.startswith("num_frames=16 is not of the form 4k+1")
    assert err.details == {"extra": 1}
    assert str(err) == f"HTTP 400 invalid_request: {err.message} (param: num_frames)"


@pytest.mark.parametrize(
    "response, code, message",
    [
        (
            httpx.Response(503, text="Service Unavailable: app is starting"),
            "http_error",
            "Service Unavailable: app is starting",
        ),
        (httpx.Response(404, json={"detail": "Not Found"}), "http_error", "Not Found"),
        (httpx.Response(500, content=b""), "http_error", "Internal Server Error"),
        (
            httpx.Response(409, json={"error": {"code": "conflict", "message": "already completed"}}),
            "conflict",
            "already completed",
        ),
    ],
)
def test_non_standard_error_bodies_still_give_readable_errors(response, code, message):
    with client_for(lambda request: response) as client, pytest.raises(ClientError) as info:
        client.get("video_abc")
    assert (info.value.status, info.value.code, info.value.message) == (response.status_code, code, message)


def test_unreachable_service_is_a_client_error_without_status():
    def handler(request):
        raise httpx.ConnectError("connection refused")

    with client_for(handler) as client, pytest.raises(ServiceUnreachable) as info:
        client.list()
    assert info.value.status is None and info.value.code == "connection_error"
    assert "cannot reach http://svc" in str(info.value)
    assert isinstance(info.value, ClientError)


def test_unknown_create_field_is_a_type_error_before_any_request():
    def handler(request):
        raise AssertionError("no request expected")

    with client_for(handler) as client, pytest.raises(TypeError, match="num_frame"):
        client.create("a kite", num_frame=9)


# --- requests -------------------------------------------------------------------------


def test_create_sends_prefer_idempotency_key_bearer_and_only_set_fields():
    seen = {}

    def handler(request):
        seen["headers"], seen["body"] = request.headers, json.loads(request.content)
        return httpx.Response(202, json=video())

    with client_for(handler, api_key="sk-test") as client:
        result = client.create("a red kite", size="64x64", num_frames=9, idempotency_key="key-1")
    assert result.status == "queued" and result.queue_position == 2
    assert seen["headers"]["prefer"] == "respond-async"
    assert seen["headers"]["idempotency-key"] == "key-1"
    assert seen["headers"]["authorization"] == "Bearer sk-test"
    assert seen["body"] == {"prompt": "a red kite", "size": "64x64", "num_frames": 9}


def test_no_authorization_header_without_api_key():
    seen = {}

    def handler(request):
        seen.update(request.headers)
        return httpx.Response(200, json=video())

    with client_for(handler) as client:
        client.get("video_abc")
    assert "authorization" not in seen


def test_create_wait_true_lets_the_service_decide_and_waits_for_a_202():
    def handler(request):
        if request.method == "POST":
            assert "prefer" not in request.headers
            return httpx.Response(202, json=video())
        assert request.url.path == "/v1/videos/video_abc/events"
        return httpx.Response(200, content=sse(4, {"type": "completed", "video": video(status="completed")}))

    with client_for(handler) as client:
        assert client.create("a red kite", wait=True).status == "completed"


def test_list_get_cancel_delete_paths_and_params():
    seen = []

    def handler(request):
        seen.append((request.method, request.url.path, dict(request.url.params), request.url.raw_path))
        if request.url.path == "/v1/videos":
            return httpx.Response(
                200,
                json={
                    "object": "list",
                    "data": [video()],
                    "first_id": "video_abc",
                    "last_id": "video_abc",
                    "has_more": False,
                },
            )
        if request.method == "DELETE":
            return httpx.Response(200, json={"id": "video_abc", "object": "video.deleted", "deleted": True})
        return httpx.Response(200, json=video(status="failed" if "cancel" in request.url.path else "queued"))

    with client_for(handler) as client:
        page = client.list(limit=5, after="video_0", order="asc")
        assert [v.id for v in page.data] == ["video_abc"] and page.has_more is False
        assert client.get("video_abc").id == "video_abc"
        assert client.cancel("video_abc").status == "failed"
        assert client.delete("video_abc").deleted is True
        client.get("../presets")  # quoted: cannot leave /v1/videos/
    assert seen[0][:3] == ("GET", "/v1/videos", {"limit": "5", "after": "video_0", "order": "asc"})
    assert [s[:3] for s in seen[1:4]] == [
        ("GET", "/v1/videos/video_abc", {}),
        ("POST", "/v1/videos/video_abc/cancel", {}),
        ("DELETE", "/v1/videos/video_abc", {}),
    ]
    assert seen[4][1] == "/v1/videos/../presets" and seen[4][3] == b"/v1/videos/..%2Fpresets"


def test_download_writes_whole_file_or_nothing(tmp_path):
    def handler(request):
        if request.url.params["variant"] == "thumbnail":
            return httpx.Response(409, json={"error": {"code": "video_not_ready", "message": "is queued"}})
        return httpx.Response(200, content=iter([b"mp4-", b"bytes"]))

    with client_for(handler) as client:
        assert client.download("video_abc", tmp_path / "sub" / "out.mp4").read_bytes() == b"mp4-bytes"
        with pytest.raises(ClientError, match="video_not_ready"):
            client.download("video_abc", tmp_path / "thumb.jpg", variant="thumbnail")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["out.mp4", "sub"]


# --- wait -----------------------------------------------------------------------------


def test_wait_resumes_a_dropped_stream_from_the_last_event(monkeypatch):
    monkeypatch.setattr("serve_app.client.RECONNECT_DELAY_S", (0.0,))
    streams = []

    def handler(request):
        if request.url.path.endswith("/events"):
            streams.append(request.headers.get("last-event-id"))
            if len(streams) == 1:
                # The gateway went away after two events, without a terminal one.
                return httpx.Response(
                    200,
                    content=sse(1, {"type": "queued", "queue_position": 0})
                    + sse(2, {"type": "progress", "step": 1, "total_steps": 3}),
                )
            return httpx.Response(
                200,
                content=sse(3, {"type": "progress", "step": 2, "total_steps": 3})
                + sse(4, {"type": "completed", "video": video(status="completed", progress=100)}),
            )
        return httpx.Response(200, json=video(status="in_progress", progress=33))

    seen = []
    with client_for(handler) as client:
        final = client.wait("video_abc", on_event=seen.append)
    assert final.status == "completed" and final.progress == 100
    assert streams == [None, "2"]
    assert [(e["type"], e.get("step")) for e in seen] == [
        ("queued", None),
        ("progress", 1),
        ("progress", 2),
        ("completed", None),
    ]


def test_wait_returns_the_final_object_when_the_stream_ends_after_completion():
    def handler(request):
        if request.url.path.endswith("/events"):
            return httpx.Response(200, content=b"")  # finished between two reads: nothing left to send
        return httpx.Response(200, json=video(status="failed", error={"code": "cancelled", "message": "by request"}))

    with client_for(handler) as client:
        final = client.wait("video_abc")
    assert final.status == "failed" and final.error.code == "cancelled"


def test_wait_rides_out_a_restart_but_not_a_missing_job(monkeypatch):
    monkeypatch.setattr("serve_app.client.RECONNECT_DELAY_S", (0.0,))
    answers = iter([httpx.Response(503, text="restarting"), httpx.Response(503, text="restarting")])

    def handler(request):
        if request.url.path.endswith("/events"):
            return next(answers, None) or httpx.Response(
                200, content=sse(9, {"type": "completed", "video": video(status="completed")})
            )
        return httpx.Response(503, text="restarting")

    with client_for(handler) as client:
        assert client.wait("video_abc").status == "completed"

    def gone(request):
        return httpx.Response(404, json={"error": {"code": "not_found", "message": "no video"}})

    with client_for(gone) as client, pytest.raises(ClientError, match="not_found"):
        client.wait("video_abc")


# --- the service's stream lifetime and caps -------------------------------------------------


def reconnect(last_event_id: int) -> bytes:
    """The service's last event of a stream at its maximum lifetime, as it frames it."""
    return Reconnect("max_lifetime", last_event_id).sse().encode()


def test_events_reopen_a_stream_ended_with_reconnect_from_the_last_event_id():
    streams = []

    def handler(request):
        streams.append(request.headers.get("last-event-id"))
        if len(streams) == 1:
            body = sse(1, {"type": "queued"}) + sse(2, {"type": "progress", "step": 1}) + reconnect(2)
        else:
            body = sse(3, {"type": "completed", "video": video(status="completed")})
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    with client_for(handler) as client:
        events = list(client.events("video_abc"))
    assert [e["type"] for e in events] == ["queued", "progress", "completed"]
    assert streams == [None, "2"]


def test_wait_resumes_at_once_after_reconnect_without_a_get():
    requests = []

    def handler(request):
        requests.append((request.url.path, request.headers.get("last-event-id")))
        if len(requests) == 1:
            return httpx.Response(200, content=sse(1, {"type": "queued"}) + reconnect(1))
        return httpx.Response(200, content=sse(2, {"type": "completed", "video": video(status="completed")}))

    seen = []
    with client_for(handler) as client:
        assert client.wait("video_abc", on_event=seen.append).status == "completed"
    assert requests == [("/v1/videos/video_abc/events", None), ("/v1/videos/video_abc/events", "1")]
    assert [e["type"] for e in seen] == ["queued", "completed"]  # never the reconnect


def test_wait_follows_the_job_by_gets_while_the_key_is_out_of_stream_slots(monkeypatch):
    monkeypatch.setattr("serve_app.client.RECONNECT_DELAY_S", (0.0,))
    refusals = iter([1])
    gets = []

    def handler(request):
        if request.url.path.endswith("/events"):
            if next(refusals, None):
                error = {"code": "too_many_streams", "message": "API key 'alice' holds 8 progress streams"}
                return httpx.Response(429, headers={"Retry-After": "5"}, json={"error": error})
            return httpx.Response(200, content=sse(4, {"type": "completed", "video": video(status="completed")}))
        gets.append(request.url.path)
        return httpx.Response(200, json=video(status="in_progress", progress=50))

    with client_for(handler) as client:
        assert client.wait("video_abc").status == "completed"
    assert gets == ["/v1/videos/video_abc"]
