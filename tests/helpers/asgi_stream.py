"""One HTTP GET to an ASGI app, driven by hand from an asyncio test, read as it streams.

TestClient and httpx's ASGITransport both wait for the whole response before
returning it, so a stream that never ends (an SSE stream of an unfinished job)
cannot be read through them. Here the test awaits each block of the body as
the app sends it, and hangs up when it likes:

    async with SseCall(app, f"/v1/videos/{video_id}/events") as call:
        assert call.status == 200
        event = await call.next_event()        # the next `event:` block, comments skipped
        await call.disconnect()                # as a browser closing the tab

Every wait has a bound (`WAIT_S`): a stream that never delivers fails the test
instead of hanging it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from serve_app.client import ServerSentEvent, parse_sse

WAIT_S = 10.0


class SseCall:
    def __init__(self, app: Any, path: str, headers: dict[str, str] | None = None) -> None:
        self.app = app
        self.path = path
        self.request_headers = headers or {}
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.body = b""  # everything received so far
        self.ended = False  # the app sent its last body message
        self.comments: list[str] = []
        self.last_event_id: str | None = None
        self._buffer = ""
        self._started = asyncio.Event()
        self._arrived = asyncio.Event()
        self._hang_up = asyncio.Event()
        self._request_sent = False
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> SseCall:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},  # spec 2.0: Starlette listens for http.disconnect
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": self.path,
            "raw_path": self.path.encode(),
            "query_string": b"",
            "root_path": "",
            # Host, as every HTTP/1.1 client sends it: the gateway answers only trusted hosts.
            "headers": [
                (k.lower().encode(), v.encode()) for k, v in {"Host": "testserver", **self.request_headers}.items()
            ],
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
        }
        self._task = asyncio.get_running_loop().create_task(self.app(scope, self._receive, self._send))
        async with asyncio.timeout(WAIT_S):
            await self._wait(self._started)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.disconnect()

    async def disconnect(self) -> None:
        """Hang up, and wait until the app has finished with the request."""
        self._hang_up.set()
        if self._task is not None:
            async with asyncio.timeout(WAIT_S):
                await self._task

    @property
    def text(self) -> str:
        return self.body.decode()

    async def next_block(self) -> str | None:
        """The next block of the stream (up to a blank line), or None once it has ended."""
        async with asyncio.timeout(WAIT_S):
            while "\n\n" not in self._buffer:
                if self.ended:
                    return None
                self._arrived.clear()
                await self._wait(self._arrived)
        block, self._buffer = self._buffer.split("\n\n", 1)
        return block

    async def next_event(self) -> ServerSentEvent | None:
        """The next event (comments are kept in `comments`), or None once the stream has ended."""
        while (block := await self.next_block()) is not None:
            lines = block.split("\n")
            if all(line.startswith(":") for line in lines):
                self.comments.append(block)
                continue
            (event,) = parse_sse([*lines, ""])
            # The last event id persists across events, as an EventSource keeps it.
            if event.id is None:
                event = dataclasses.replace(event, id=self.last_event_id)
            self.last_event_id = event.id
            return event
        return None

    async def rest(self) -> list[ServerSentEvent]:
        """Every event up to the stream's end."""
        events = []
        while (event := await self.next_event()) is not None:
            events.append(event)
        return events

    async def _wait(self, event: asyncio.Event) -> None:
        # The app may fail instead of answering: surface its error rather than time out.
        assert self._task is not None
        waiter = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not event.is_set() and self._task.done():
            self._task.result()
            if not event.is_set():
                raise AssertionError(f"GET {self.path} ended without that message")

    async def _receive(self) -> dict[str, Any]:
        if not self._request_sent:
            self._request_sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self._hang_up.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = {k.decode().lower(): v.decode() for k, v in message.get("headers", [])}
            self._started.set()
        elif message["type"] == "http.response.body":
            chunk = message.get("body", b"")
            self.body += chunk
            self._buffer += chunk.decode()
            if not message.get("more_body", False):
                self.ended = True
            self._arrived.set()
