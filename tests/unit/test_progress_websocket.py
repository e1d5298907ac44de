"""The WebSocket progress stream through the gateway (build_gateway, no Ray, Starlette's TestClient):
every check before `accept`, the stream caps it shares with SSE, and its lifetime ending in
a `reconnect` message and close code 4000."""

from __future__ import annotations

import asyncio

import pytest
from starlette.testclient import WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect

from serve_app.api.streams import WS_CLOSE_RECONNECT, WS_CLOSE_REFUSED
from tests.helpers.service import api_client
from tests.helpers.streams import ALICE, BOB, bearer, queued_job, stream_gateway, two_keys, write_event


@pytest.fixture
def make_gateway(tmp_path):
    made = []

    def make(access=None, **streams):
        made.append(stream_gateway(tmp_path, access, **streams))
        return made[-1]

    yield make
    for gateway in made:
        gateway.stores.jobs.close()


def ws_path(video_id: str, **query: str) -> str:
    tail = "&".join(f"{k}={v}" for k, v in query.items())
    return f"/v1/videos/{video_id}/ws" + (f"?{tail}" if tail else "")


def refusal(client, path: str, headers: dict[str, str] | None = None) -> WebSocketDenialResponse:
    """The answer to a handshake that must be refused. A denial response exists only before
    `accept`: getting one proves the socket was never accepted."""
    with pytest.raises(WebSocketDenialResponse) as denial, client.websocket_connect(path, headers=headers or {}):
        pass  # never entered
    return denial.value


def assert_denied(response: WebSocketDenialResponse, status: int, code: str) -> dict:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    return error


def test_an_unauthenticated_websocket_is_refused_before_accept(make_gateway):
    gateway = make_gateway(access=two_keys())
    video_id = queued_job(gateway, key_id="alice")
    with api_client(gateway) as client:
        for query in ({}, {"access_token": "wan_not-a-key-0123456789abcdef"}):
            assert_denied(refusal(client, ws_path(video_id, **query)), 401, "unauthorized")
        assert_denied(refusal(client, ws_path(video_id), headers={"Authorization": "Bearer nope"}), 401, "unauthorized")
        # Someone else's video, or none: 404 before accept too.
        for path, key in ((ws_path(video_id), BOB), (ws_path("video_nope"), ALICE)):
            assert_denied(refusal(client, path, headers=bearer(key)), 404, "not_found")
        with client.websocket_connect(ws_path(video_id, access_token=ALICE)) as ws:
            assert ws.receive_json() == {"seq": 1, "type": "queued", "status": "queued"}
    assert gateway.streams.slots.total == 0 and gateway.streams.feeds.watching() == {}


def test_without_the_denial_extension_a_refused_websocket_is_closed_before_accept(make_gateway):
    """Servers without ASGI's websocket.http.response extension: a close before accept, which the
    server answers as an HTTP 403 (ASGI spec), never an accepted socket."""
    gateway = make_gateway(access=two_keys())
    video_id = queued_job(gateway, key_id="alice")
    sent: list[dict] = []

    async def receive():
        return {"type": "websocket.connect"}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "path": ws_path(video_id),
        "raw_path": ws_path(video_id).encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "subprotocols": [],
    }
    asyncio.run(gateway.app(scope, receive, send))
    assert sent == [{"type": "websocket.close", "code": WS_CLOSE_REFUSED, "reason": "unauthorized"}]


def test_websockets_count_against_the_key_s_stream_cap(make_gateway):
    gateway = make_gateway(access=two_keys(), max_per_key=2, retry_after_s=3)
    video_id = queued_job(gateway, key_id="alice")
    with api_client(gateway) as client:
        with (
            client.websocket_connect(ws_path(video_id), headers=bearer(ALICE)) as one,
            client.websocket_connect(ws_path(video_id), headers=bearer(ALICE)) as two,
        ):
            assert one.receive_json()["seq"] == two.receive_json()["seq"] == 1
            over = refusal(client, ws_path(video_id), headers=bearer(ALICE))
            error = assert_denied(over, 429, "too_many_streams")
            assert over.headers["retry-after"] == "3" and error["retry_after_s"] == 3
            # SSE shares the cap.
            refused = client.get(f"/v1/videos/{video_id}/events", headers=bearer(ALICE))
            assert (refused.status_code, refused.json()["error"]["code"]) == (429, "too_many_streams")
        # Both closed by the client: their slots are back.
        with client.websocket_connect(ws_path(video_id), headers=bearer(ALICE)) as three:
            assert three.receive_json()["seq"] == 1
    assert gateway.streams.slots.total == 0


def test_a_websocket_ends_with_reconnect_and_close_4000_at_its_lifetime_and_resumes(make_gateway):
    gateway = make_gateway(max_lifetime_s=0.05, poll_interval_s=0.005)
    video_id = queued_job(gateway)
    with api_client(gateway) as client:
        with client.websocket_connect(ws_path(video_id)) as ws:
            assert ws.receive_json()["type"] == "queued"
            assert ws.receive_json() == {"type": "reconnect", "reason": "max_lifetime", "last_event_id": 1}
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
            assert (closed.value.code, closed.value.reason) == (WS_CLOSE_RECONNECT, "reconnect")
        with client.websocket_connect(ws_path(video_id, last_event_id="1")) as ws:
            assert ws.receive_json()["type"] == "reconnect"  # nothing new after event 1
    assert gateway.streams.slots.total == 0 and gateway.streams.feeds.watching() == {}


def test_a_websocket_streams_to_the_job_s_end_then_closes_normally(make_gateway):
    gateway = make_gateway()
    video_id = queued_job(gateway)
    write_event(gateway, video_id, {"type": "progress", "step": 1})
    write_event(gateway, video_id, {"type": "completed"})
    with api_client(gateway) as client, client.websocket_connect(ws_path(video_id, last_event_id="1")) as ws:
        assert ws.receive_json() == {"seq": 2, "type": "progress", "step": 1}
        assert ws.receive_json() == {"seq": 3, "type": "completed"}
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1000
