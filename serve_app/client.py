"""A typed, synchronous Python client for the `/v1/videos` API.

    from serve_app.client import VideoClient

    with VideoClient("http://127.0.0.1:8000") as client:
        video = client.create("a lighthouse at dusk", size="256x128", num_frames=17)
        video = client.wait(video.id, on_event=print)   # SSE: queued, progress..., completed|failed
        if video.status == "completed":
            client.download(video.id, "lighthouse.mp4")
        # Image to video: the picture is the first frame (a path, bytes, an open file or a PIL image).
        video = client.create("the beam sweeps over the sea", image="lighthouse.png", wait=True)

Answers are the service's own pydantic models (`VideoObject`, `VideoList`,
`VideoDeleted`), so a field renamed on the server breaks here loudly instead of
turning into a silent `None`. Every non-2xx answer raises `ClientError` built
from the service's JSON error body; a service that cannot be reached raises
`ServiceUnreachable` (a `ClientError` without an HTTP status), so callers catch
one exception type.

Imports neither Ray nor torch: a laptop with `httpx` and `pydantic` is enough.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import httpx
from pydantic import ValidationError

from serve_app.api.protocol import CreateVideoRequest, VideoDeleted, VideoList, VideoObject

# The client's errors and its SSE parser, importable from here as before.
from serve_app.client_wire import (
    IMAGE_FIELD,
    ClientError,
    ImageInput,
    ServerSentEvent,
    ServiceUnreachable,
    form_fields,
    image_part,
    parse_sse,
)

DEFAULT_URL = "http://127.0.0.1:8000"
# Terminal SSE event types: the stream ends after one of them.
TERMINAL_EVENTS = frozenset({"completed", "failed"})
TERMINAL_STATUSES = TERMINAL_EVENTS
# The service sends a keep-alive comment on a silent stream (every
# `streams.keepalive_s`, 15 s by default). `wait()` uses this read timeout to
# notice a half-open connection, checks the job with a GET and reconnects where
# it left off.
SSE_READ_TIMEOUT_S = 60.0
# The service ends every stream after `streams.max_lifetime_s` with this event:
# open it again from the last event id, and nothing is lost.
RECONNECT_EVENT = "reconnect"
# Back-off between reconnects of `wait()` when a stream ends without a
# terminal event (gateway restarted, proxy dropped the connection).
RECONNECT_DELAY_S = (0.2, 0.5, 1.0, 2.0)
# Answers that mean "the gateway is restarting", not "this request is wrong".
TRANSIENT_STATUSES = frozenset({502, 503})
# How long `wait()` keeps trying through such an outage before it gives up.
MAX_OUTAGE_S = 60.0


def _video_path(video_id: str, suffix: str = "") -> str:
    # Ids come from users and files; quoting keeps "../x" from leaving /v1/videos/.
    return f"/v1/videos/{quote(video_id, safe='')}{suffix}"


class VideoClient:
    """Synchronous client of one service; thread-safe (one pooled `httpx.Client`).

    `transport` replaces the network (e.g. `httpx.MockTransport` in tests).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        timeout: float = 60.0,
        *,
        transport: httpx.BaseTransport | None = None,
        sse_read_timeout: float | None = SSE_READ_TIMEOUT_S,
        max_outage_s: float = MAX_OUTAGE_S,
    ) -> None:
        headers = {"User-Agent": "wan-video-client/0.1"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.base_url = base_url.rstrip("/")
        self.sse_read_timeout = sse_read_timeout
        self.max_outage_s = max_outage_s
        self._timeout = timeout
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> VideoClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ---------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServiceUnreachable(self.base_url, exc) from exc
        if response.is_error:
            raise ClientError.from_response(response)
        return response

    # --- the API ----------------------------------------------------------------------

    def create(
        self,
        prompt: str,
        *,
        image: ImageInput | None = None,
        wait: bool = False,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> VideoObject:
        """Submit a generation; `fields` are those of `CreateVideoRequest` (size,
        num_frames, seed, ...). Unset fields come from the preset on the server.

        `image` makes it image to video: the picture is the video's first frame
        (fitted to the size by the service). A path, the file's bytes, a file
        opened `'rb'`, or a PIL image (sent as PNG). It goes as the multipart
        file part `input_reference`, as the OpenAI SDK sends it; the service
        checks it and names `input_reference` in its 4xx if it cannot use it.

        By default the job is created asynchronously (`Prefer: respond-async`)
        and returned queued. With `wait=True` the service may answer
        synchronously; if it answers 202 anyway (the estimate exceeded its sync
        budget), this waits for the job, so the result is always terminal. A
        synchronous failure (e.g. `deadline_exceeded`) raises `ClientError`.
        A retried call with the same `idempotency_key` returns the same job.
        """
        try:
            body = CreateVideoRequest(prompt=prompt, **fields)
        except ValidationError as exc:
            # Caught here rather than as a 400 so a typo names the keyword argument.
            first = exc.errors()[0]
            name = ".".join(str(p) for p in first.get("loc", ())) or "prompt"
            raise TypeError(f"create(): {name}: {first.get('msg')} (got {first.get('input')!r})") from None
        payload = body.model_dump(exclude_unset=True)
        content: dict[str, Any] = {"json": payload}
        if image is not None:
            if payload.get(IMAGE_FIELD) is not None:
                raise TypeError(f"create(): give image or {IMAGE_FIELD}, not both")
            payload.pop(IMAGE_FIELD, None)
            content = {"data": form_fields(payload), "files": {IMAGE_FIELD: image_part(image)}}
        headers = {}
        if not wait:
            headers["Prefer"] = "respond-async"
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        # A synchronous answer can take the whole deadline; the service caps it.
        timeout = None if wait else self._timeout
        response = self._request("POST", "/v1/videos", headers=headers, timeout=timeout, **content)
        video = VideoObject.model_validate(response.json())
        if wait and video.status not in TERMINAL_STATUSES:
            return self.wait(video.id)
        return video

    def get(self, video_id: str) -> VideoObject:
        return VideoObject.model_validate(self._request("GET", _video_path(video_id)).json())

    def list(self, limit: int = 20, after: str | None = None, order: Literal["asc", "desc"] = "desc") -> VideoList:
        """One page; pass `after=page.last_id` while `page.has_more` for the next."""
        params: dict[str, Any] = {"limit": limit, "order": order}
        if after is not None:
            params["after"] = after
        return VideoList.model_validate(self._request("GET", "/v1/videos", params=params).json())

    def iter_all(self, order: Literal["asc", "desc"] = "desc", page_size: int = 100) -> Iterator[VideoObject]:
        """Every video, following the cursor across pages."""
        after = None
        while True:
            page = self.list(limit=page_size, after=after, order=order)
            yield from page.data
            if not page.has_more or page.last_id is None:
                return
            after = page.last_id

    def cancel(self, video_id: str) -> VideoObject:
        """Stop a queued or running job (it ends `failed` with code `cancelled`); 409 if finished."""
        return VideoObject.model_validate(self._request("POST", _video_path(video_id, "/cancel")).json())

    def delete(self, video_id: str) -> VideoDeleted:
        return VideoDeleted.model_validate(self._request("DELETE", _video_path(video_id)).json())

    def download(
        self, video_id: str, path: str | os.PathLike, variant: Literal["video", "thumbnail"] = "video"
    ) -> Path:
        """Save the mp4 (or JPEG thumbnail) to `path`.

        Written to a temporary file in the same folder and renamed into place,
        so `path` either holds the whole file or does not exist: batch resume
        trusts an existing file.
        """
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            # An S3-backed service answers 307 to a presigned URL in the bucket. httpx drops our
            # Authorization header on the way there (another origin): S3 refuses a request that
            # carries one beside the URL's signature, and the key is none of the bucket's business.
            with self._http.stream(
                "GET", _video_path(video_id, "/content"), params={"variant": variant}, follow_redirects=True
            ) as response:
                if response.is_error:
                    response.read()
                    raise ClientError.from_response(response)
                fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
                try:
                    with os.fdopen(fd, "wb") as out:
                        for chunk in response.iter_bytes():
                            out.write(chunk)
                    os.replace(tmp, target)
                except BaseException:
                    Path(tmp).unlink(missing_ok=True)
                    raise
        except httpx.TransportError as exc:
            raise ServiceUnreachable(self.base_url, exc) from exc
        return target

    # --- events -----------------------------------------------------------------------

    def stream_events(
        self, video_id: str, last_event_id: str | None = None, read_timeout: float | None = None
    ) -> Iterator[ServerSentEvent]:
        """Raw SSE events of a job, from after `last_event_id`, ending after the terminal one.

        `read_timeout=None` waits as long as the service keeps the stream open.
        """
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        timeout = httpx.Timeout(self._timeout, read=read_timeout)
        try:
            with self._http.stream(
                "GET", _video_path(video_id, "/events"), headers=headers, timeout=timeout
            ) as response:
                if response.is_error:
                    response.read()
                    raise ClientError.from_response(response)
                for sse in parse_sse(response.iter_lines()):
                    yield sse
                    # Stop reading at the terminal event: the service closes the
                    # stream then anyway, and a proxy might not.
                    if sse.event in TERMINAL_EVENTS:
                        return
        except httpx.TransportError as exc:
            raise ServiceUnreachable(self.base_url, exc) from exc

    def events(self, video_id: str, last_event_id: str | None = None) -> Iterator[dict[str, Any]]:
        """A job's events as dicts: `{"type": "queued", "queue_position", "eta_s", "attempt"}`,
        `{"type": "progress", "step", "total_steps", "progress", "eta_s"}`, then
        `{"type": "completed"|"failed", "video": {...}}`, after which it ends.

        A stream the service ends with `reconnect` (its maximum lifetime) is opened
        again from the last event seen; the `reconnect` event itself is not yielded."""
        while True:
            reconnect = False
            for sse in self.stream_events(video_id, last_event_id):
                if sse.event == RECONNECT_EVENT:
                    reconnect = True  # the last event: the service closes the stream next
                    continue
                last_event_id = sse.id if sse.id is not None else last_event_id
                yield sse.json()
            if not reconnect:
                return

    def wait(
        self,
        video_id: str,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        timeout: float | None = None,
    ) -> VideoObject:
        """Follow a job's events until it is completed or failed; return the final object.

        Survives a dropped stream and a gateway restart of up to `max_outage_s`:
        it checks the job with a GET and resumes the stream from the last event
        seen (`Last-Event-ID`), so `on_event` sees each event once. `timeout` (seconds) raises `TimeoutError`; the job
        keeps running on the service. A stream ended with `reconnect` (its maximum lifetime) is
        resumed at once, without a GET; `on_event` never sees that event.
        """
        give_up = None if timeout is None else time.monotonic() + timeout
        last_id: str | None = None
        attempt = 0
        unreachable_since: float | None = None
        while True:
            read_timeout = self.sse_read_timeout
            if give_up is not None:
                remaining = max(give_up - time.monotonic(), 0.01)
                read_timeout = remaining if read_timeout is None else min(read_timeout, remaining)
            reconnect = False
            try:
                for sse in self.stream_events(video_id, last_id, read_timeout=read_timeout):
                    if sse.event == RECONNECT_EVENT:
                        reconnect = True
                        continue
                    last_id = sse.id if sse.id is not None else last_id
                    event = sse.json()
                    if on_event is not None:
                        on_event(event)
                    if sse.event in TERMINAL_EVENTS and isinstance(event.get("video"), dict):
                        return VideoObject.model_validate(event["video"])
                    attempt = 0
            except ServiceUnreachable:
                pass  # timed out or dropped: the GET below says whether to go on
            except ClientError as exc:
                # Out of stream slots (the key holds streams.max_per_key): follow the job by
                # GETs for now, trying the stream again at each back-off.
                if exc.status not in TRANSIENT_STATUSES and exc.code != "too_many_streams":
                    raise
            if reconnect and (give_up is None or time.monotonic() < give_up):
                continue
            try:
                video = self.get(video_id)
            except ClientError as exc:
                # A gateway restarting (jobs survive it) answers 502/503 or nothing
                # for a while; only a long outage ends the wait.
                if not isinstance(exc, ServiceUnreachable) and exc.status not in TRANSIENT_STATUSES:
                    raise
                unreachable_since = unreachable_since or time.monotonic()
                if time.monotonic() - unreachable_since > self.max_outage_s:
                    raise
                status = "unreachable"
            else:
                unreachable_since = None
                if video.status in TERMINAL_STATUSES:
                    return video
                status = video.status
            if give_up is not None and time.monotonic() >= give_up:
                raise TimeoutError(f"video {video_id} still {status} after {timeout} s")
            time.sleep(RECONNECT_DELAY_S[min(attempt, len(RECONNECT_DELAY_S) - 1)])
            attempt += 1
