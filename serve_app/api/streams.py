"""Progress streams, bounded: SSE (`GET /v1/videos/{id}/events`) and WebSocket (`/ws`).

Every stream is checked before it starts: the caller may see the video (404),
and it gets one of its key's stream slots and one of the replica's (429
`too_many_streams`, `streams.max_per_key` / `max_per_replica`). A WebSocket is
checked before `accept`, so a refused one never becomes a connection. Then:

- its events come from the job's one poller on this replica (jobs/event_feed.py);
- it lives at most `streams.max_lifetime_s`, then ends with a `reconnect` event
  (SSE, with `retry:`) or message (WebSocket, then close code 4000); the client
  resumes from its last event id and loses nothing;
- an SSE stream with nothing to say for `streams.keepalive_s` sends a comment.

Slots are counted in this process: with N gateway replicas a key may hold N
times its cap, each replica's share bounded (what a cap protects here is the
replica's own sockets and tasks).
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import WebSocket, WebSocketDisconnect
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from serve_app.access.keys import Principal
from serve_app.api.error_handlers import error_response
from serve_app.api.views import VideoViews
from serve_app.errors import ServiceError, TooManyStreams
from serve_app.jobs.event_feed import Event, JobEventFeeds, Subscription
from serve_app.settings.streams import StreamOptions

# How soon a browser's EventSource reconnects after a `reconnect` event (its `retry:` field).
RECONNECT_RETRY_MS = 1000
# WebSocket close codes: 4000-4999 are the application's (RFC 6455 7.4.2).
WS_CLOSE_RECONNECT = 4000  # the stream's lifetime is over, or the store failed: connect again
WS_CLOSE_REFUSED = 1008  # policy violation: refused before accept (the client sees an HTTP 403)
KEEPALIVE_COMMENT = ": keep-alive\n\n"


def parse_last_event_id(value: str | None) -> int:
    """The sequence number to resume after; 0 for none or junk. ASCII digits, bounded:
    isdigit() takes '²' and int() refuses 4300+ digits (both were 500s)."""
    return int(value) if value and re.fullmatch(r"[0-9]{1,18}", value) else 0


def sse_event(seq: int, event: dict[str, Any]) -> str:
    return f"id: {seq}\nevent: {event.get('type', 'message')}\ndata: {json.dumps(event)}\n\n"


@dataclass(frozen=True)
class Reconnect:
    """The stream's last item: connect again (from `last_event_id`) to go on."""

    reason: str  # 'max_lifetime', or the code of the store error that ended the feed
    last_event_id: int

    def message(self) -> dict[str, Any]:
        return {"type": "reconnect", "reason": self.reason, "last_event_id": self.last_event_id}

    def sse(self) -> str:
        # No `id:` line: the browser keeps the last real event's id as its Last-Event-ID.
        return f"retry: {RECONNECT_RETRY_MS}\nevent: reconnect\ndata: {json.dumps(self.message())}\n\n"


class Idle:
    """Nothing happened for the idle time asked for (SSE sends a keep-alive comment)."""


IDLE = Idle()
StreamItem = Event | Reconnect | Idle | None  # None: the job ended, the stream is over


class StreamSlots:
    """Open streams per key and in all, on this replica. Only touched from the event loop."""

    def __init__(self, options: StreamOptions) -> None:
        self.options = options
        self.total = 0
        self.per_key: Counter[str] = Counter()

    def acquire(self, principal: Principal | None) -> Callable[[], None]:
        """Take a slot (429 `too_many_streams` when full); returns its idempotent release."""
        options = self.options
        # Keys are capped; keyless callers only when access.limit_anonymous makes them one client.
        key = principal.id if principal is not None and principal.limited else None
        if self.total >= options.max_per_replica:
            raise TooManyStreams(
                f"this gateway replica holds {self.total} progress streams, its maximum "
                f"(streams.max_per_replica={options.max_per_replica}); retry later, or poll GET /v1/videos/{{id}}",
                retry_after_s=options.retry_after_s,
                max_streams=options.max_per_replica,
            )
        if key is not None and self.per_key[key] >= options.max_per_key:
            raise TooManyStreams(
                f"API key {key!r} holds {self.per_key[key]} progress streams on this gateway replica and may "
                f"hold at most {options.max_per_key} (streams.max_per_key); close one, or poll GET /v1/videos/{{id}}",
                retry_after_s=options.retry_after_s,
                key_id=key,
                max_streams=options.max_per_key,
            )
        self.total += 1
        if key is not None:
            self.per_key[key] += 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self.total -= 1
            if key is not None:
                self.per_key[key] -= 1
                if not self.per_key[key]:
                    del self.per_key[key]

        return release


class ProgressStream:
    """One open stream: its subscription, its slot, its deadline. `close()` frees both (idempotent)."""

    def __init__(
        self,
        subscription: Subscription,
        release: Callable[[], None],
        lifetime_s: float,
        clock: Callable[[], float],
    ) -> None:
        self._subscription = subscription
        self._release = release
        self._clock = clock
        self._deadline = clock() + lifetime_s
        # The last event handed out, where a reconnection resumes (not the subscription's
        # position: events it holds but this stream has not sent yet are sent next time).
        self.last_event_id = subscription.seq

    async def next(self, idle_s: float | None = None) -> StreamItem:
        """The next event; `IDLE` after `idle_s` seconds without one; a `Reconnect` once the lifetime
        is over (or the store failed); None when the job has ended."""
        left = self._deadline - self._clock()
        if left <= 0:
            return Reconnect("max_lifetime", self.last_event_id)
        wait = left if idle_s is None else min(idle_s, left)
        try:
            event = await self._subscription.next(timeout=wait)
        except TimeoutError:
            if self._clock() >= self._deadline:
                return Reconnect("max_lifetime", self.last_event_id)
            return IDLE
        except ServiceError as exc:  # the store, e.g. Redis unreachable: another try may reach it
            return Reconnect(exc.code, self.last_event_id)
        if event is not None:
            self.last_event_id = event[0]
        return event

    def close(self) -> None:
        self._subscription.close()
        self._release()


class ProgressStreams:
    """Opens checked, bounded streams over the job feeds; `app.state.streams`."""

    def __init__(
        self,
        views: VideoViews,
        feeds: JobEventFeeds,
        options: StreamOptions,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.views = views
        self.feeds = feeds
        self.options = options
        self.slots = StreamSlots(options)
        self.clock = clock

    async def open(self, video_id: str, after_seq: int, principal: Principal | None) -> ProgressStream:
        """404 if the caller may not see the video, 429 when out of slots; else the open stream."""
        await self.views.visible_job(video_id, principal)
        release = self.slots.acquire(principal)
        try:
            subscription = self.feeds.subscribe(video_id, after_seq)
        except BaseException:
            release()
            raise
        return ProgressStream(subscription, release, self.options.max_lifetime_s, self.clock)

    def sse_response(self, stream: ProgressStream) -> StreamingResponse:
        return EventStreamResponse(stream, self.options.keepalive_s)


async def _sse_body(stream: ProgressStream, keepalive_s: float) -> AsyncGenerator[str, None]:
    while True:
        item = await stream.next(idle_s=keepalive_s)
        if item is None:
            return
        if isinstance(item, Idle):
            yield KEEPALIVE_COMMENT
        elif isinstance(item, Reconnect):
            yield item.sse()
            return
        else:
            yield sse_event(*item)


class EventStreamResponse(StreamingResponse):
    """text/event-stream that frees its stream however the response ends. A body generator's
    own `finally` runs only when the generator is closed, which a client hanging up does not
    do at once (it is left to garbage collection), and the slot must come back at once."""

    def __init__(self, stream: ProgressStream, keepalive_s: float) -> None:
        self._stream = stream
        self._body = _sse_body(stream, keepalive_s)
        # no-cache: nobody may store it; X-Accel-Buffering: nginx must pass each event on at once.
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(self._body, media_type="text/event-stream", headers=headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._body.aclose()
            self._stream.close()


async def refuse_websocket(websocket: WebSocket, error: ServiceError) -> None:
    """Refuse a WebSocket before `accept`: with the error's status and JSON body where the server
    supports ASGI's denial responses (uvicorn does), else a close, which the server turns into a 403."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(error_response(error))
    else:
        await websocket.close(code=WS_CLOSE_REFUSED, reason=error.code)


async def serve_websocket(websocket: WebSocket, stream: ProgressStream) -> None:
    """Accept, then send the stream's events as JSON (with `seq`) until the job ends (close 1000),
    the lifetime is over (a `reconnect` message, close 4000) or the client leaves."""
    try:
        await websocket.accept()
        # An anyio task group, as Starlette's own: the server's cancel scope (a client gone, a
        # shutdown) reaches both tasks. Watching for the client's close ends the stream at once,
        # not at its next event.
        async with anyio.create_task_group() as group:

            async def send_then_stop() -> None:
                try:
                    await _send_events(websocket, stream)
                except WebSocketDisconnect:
                    pass  # the client left mid-send
                group.cancel_scope.cancel()

            async def watch_then_stop() -> None:
                await _until_disconnect(websocket)
                group.cancel_scope.cancel()

            group.start_soon(send_then_stop)
            group.start_soon(watch_then_stop)
    finally:
        stream.close()


async def _send_events(websocket: WebSocket, stream: ProgressStream) -> None:
    while True:
        item = await stream.next()
        if item is None:
            await websocket.close()
            return
        if isinstance(item, Reconnect):
            await websocket.send_json(item.message())
            await websocket.close(code=WS_CLOSE_RECONNECT, reason="reconnect")
            return
        if isinstance(item, Idle):
            continue  # not asked for (no idle_s); uvicorn's pings keep a WebSocket alive
        seq, event = item
        await websocket.send_json({"seq": seq, **event})


async def _until_disconnect(websocket: WebSocket) -> None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
