"""FastAPI routes: thin, each one a call into `VideoService`.

`create_app(service)` builds the ASGI app; the gateway deployment hands it to
Ray Serve, and unit tests drive it with fakes and no Ray at all.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl

from fastapi import Depends, FastAPI, Header, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from serve_app.api.protocol import (
    CreateVideoRequest, ErrorResponse, HealthResponse, VideoDeleted, VideoList, VideoObject,
)
from serve_app.api.service import Preference, VideoService
from serve_app.access.keys import Principal
from serve_app.errors import InvalidRequest, RequestTooLarge, ServiceError

log = logging.getLogger("ray.serve")

HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}
# The largest request body read before anything is parsed (a prompt is at
# most a few kB; the rest is headroom for multipart framing).
MAX_BODY_BYTES = 64 * 1024
# Form fields a create request may have (CreateVideoRequest has fewer): bounds the
# parts a multipart or urlencoded body is split into before anything is validated.
MAX_FORM_FIELDS = 32
# The web page ships as package data next to this package, so it is found from any cwd.
WEB_DIR = Path(__file__).resolve().parent.parent / "web"


def _error_response(exc: ServiceError) -> JSONResponse:
    return JSONResponse(status_code=exc.status_code, content=exc.to_dict(), headers=exc.headers() or None)


def _first_error(errors: list[dict]) -> InvalidRequest:
    first = errors[0]
    if first.get("type") == "json_invalid":
        # loc is ("body", <byte offset>): the offset is no field name.
        reason = (first.get("ctx") or {}).get("error", "invalid JSON")
        return InvalidRequest(f"body is not valid JSON: {reason}", param="body")
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    field = ".".join(loc) or "body"
    message = f"{field}: {first.get('msg', 'invalid value')}"
    # Header values are never echoed (they may be credentials); others only in part.
    if first.get("type") != "missing" and first.get("loc", ("",))[0] != "header":
        message += f" (got {_short(first.get('input'))})"
    return InvalidRequest(message, param=field)


def _short(value: object, limit: int = 200) -> str:
    """repr() of a client's value, cut: error messages must not echo a 64 kB body."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    return _error_response(_first_error(list(exc.errors())))


def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's own errors (no such route, wrong method) in our shape too."""
    body = {
        "error": {
            "code": HTTP_CODES.get(exc.status_code, "http_error"),
            "message": str(exc.detail),
            "type": "invalid_request_error",
            "param": None,
        }
    }
    return JSONResponse(status_code=exc.status_code, content=body, headers=getattr(exc, "headers", None))


def _unexpected_error(_: Request, exc: Exception) -> JSONResponse:
    # Never leak a stack trace or internals to the client; the log has them.
    log.exception("unhandled error", exc_info=exc)
    return _error_response(ServiceError("internal error; see the service log"))


def _check_body_size(n_bytes: int | None, limit: int) -> None:
    if n_bytes is not None and n_bytes > limit:
        raise RequestTooLarge(f"body has {n_bytes} bytes; at most {limit} are accepted", param="body",
                              max_body_bytes=limit)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, never read past `limit` bytes: a client that declares no length
    (chunked) or a false one cannot make the gateway buffer more than that."""
    declared = request.headers.get("content-length", "")
    # ASCII digits only: str.isdigit() also takes '²', which int() refuses.
    if re.fullmatch(r"[0-9]{1,19}", declared):
        _check_body_size(int(declared), limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"body exceeds {limit} bytes, the most accepted", param="body",
                                  max_body_bytes=limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def _form_fields(request: Request, body: bytes, content_type: str) -> list[tuple[str, object]]:
    """(name, value) pairs of a urlencoded or multipart body, with part counts bounded."""
    if content_type.startswith("application/x-www-form-urlencoded"):
        try:
            return parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
        except ValueError as exc:  # bad UTF-8, too many fields
            raise InvalidRequest(f"form body is not valid: {exc}", param="body") from None

    async def replay():
        yield body

    # Parsed from the bytes already read (and bounded) rather than request.form(),
    # whose limit errors would surface as a bare 400 without our error shape.
    parser = MultiPartParser(request.headers, replay(), max_files=1, max_fields=MAX_FORM_FIELDS,
                             max_part_size=len(body) + 1)
    try:
        form = await parser.parse()
    except (MultiPartException, KeyError, ValueError) as exc:  # KeyError: no boundary
        reason = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        raise InvalidRequest(f"multipart body is not valid: {reason}", param="body") from None
    try:
        return list(form.multi_items())
    finally:
        await form.close()


async def _read_create_request(request: Request, max_body_bytes: int = MAX_BODY_BYTES) -> CreateVideoRequest:
    """JSON or multipart/form-data (the OpenAI SDK sends multipart)."""
    body = await _read_body(request, max_body_bytes)
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data") or content_type.startswith("application/x-www-form-urlencoded"):
        fields: dict = {}
        for key, value in await _form_fields(request, body, content_type):
            if not isinstance(value, str):
                raise InvalidRequest(
                    f"{key}: file uploads are not supported (text-to-video only)", param=key
                )
            if key in fields:
                raise InvalidRequest(f"{_short(key)} is given more than once", param=key)
            fields[key] = value
    else:
        try:
            fields = json.loads(body or b"null")
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"body is not valid JSON: {exc.msg}", param="body") from None
        except (ValueError, RecursionError) as exc:
            # Not UTF-8, an integer beyond Python's 4300-digit limit, or nesting
            # deeper than the recursion limit: still the client's body at fault.
            raise InvalidRequest(f"body is not valid JSON: {type(exc).__name__}", param="body") from None
        if not isinstance(fields, dict):
            raise InvalidRequest("body must be a JSON object", param="body")
    try:
        return CreateVideoRequest.model_validate(fields)
    except ValidationError as exc:
        raise _first_error(exc.errors()) from None


def _sse(seq: int, event: dict) -> str:
    return f"id: {seq}\nevent: {event.get('type', 'message')}\ndata: {json.dumps(event)}\n\n"


# The body is parsed by hand (JSON or multipart); this documents it anyway.
CREATE_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": CreateVideoRequest.model_json_schema()},
            "multipart/form-data": {"schema": CreateVideoRequest.model_json_schema()},
        },
    }
}


# Documented on every operation, so /openapi.json shows the error shape clients
# really get (and not FastAPI's own 422 body, which this service never sends).
ERROR_RESPONSES = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (401, "No or unknown API key (when keys are on)"),
        (404, "No such video, file or route"),
        (422, "A field is outside what the service accepts; `param` names it"),
        (429, "Rate, concurrency or capacity limit: retry after the Retry-After header"),
        (503, "Overloaded, or a stage is down: retry after the Retry-After header"),
    )
}


def create_app(service: VideoService) -> FastAPI:
    app = FastAPI(
        title="Wan2.2 text-to-video",
        version="0.1.0",
        description="Text-to-video generation (Wan2.2-TI2V-5B) on Ray Serve, OpenAI-style /v1/videos.",
        responses=ERROR_RESPONSES,
    )
    # Which gateway replica answered (a create's result or any service error):
    # operators correlate it with that replica's log.
    replica = str(getattr(service.runner, "owner", ""))

    def service_error(_: Request, exc: ServiceError) -> JSONResponse:
        response = _error_response(exc)
        response.headers["Wan-Replica"] = replica
        return response

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)

    def caller(kind: str):
        """A dependency: the request's principal (401/403) after its rate check (429); None when open."""
        async def dependency(request: Request) -> Principal | None:
            guard = service.guard
            if guard is None:
                return None
            principal = guard.authenticate(request.headers.get("authorization"))
            guard.check_rate(principal, kind)
            return principal
        return dependency

    creator, reader = Depends(caller("create")), Depends(caller("read"))
    max_body_bytes = service.args.access.max_body_bytes

    @app.post(
        "/v1/videos",
        response_model=VideoObject,
        summary="Generate a video (synchronously when it fits the sync budget, else as a job)",
        openapi_extra=CREATE_BODY_DOC,
        responses={202: {"model": VideoObject, "description": "Accepted as a job; poll, stream or wait for the webhook"}},
    )
    async def create_video(
        request: Request,
        prefer: str | None = Header(None, description="RFC 7240: respond-async, or wait=<seconds>"),
        idempotency_key: str | None = Header(None, max_length=200, description="Retries with the same key return the same job."),
        principal: Principal | None = creator,
    ) -> JSONResponse:
        started = time.perf_counter()
        body = await _read_create_request(request, max_body_bytes)
        read = time.perf_counter()
        outcome = await service.create_video(body, Preference.parse(prefer), idempotency_key, principal)
        # Server-Timing: the gateway's own share of the answer (reading the body
        # from the Serve proxy, then the work), so a client can tell it apart
        # from the network and the proxy.
        done = time.perf_counter()
        timing = f"body;dur={(read - started) * 1000:.2f}, gateway;dur={(done - started) * 1000:.2f}"
        headers = {**outcome.headers, "Server-Timing": timing, "Wan-Replica": replica}
        return JSONResponse(outcome.video.model_dump(), status_code=outcome.status_code, headers=headers)

    @app.get("/v1/videos", response_model=VideoList, summary="List videos (cursor pagination)")
    async def list_videos(
        after: str | None = Query(None, description="Id of the last video of the previous page."),
        limit: int = Query(20, description="Page size, 1-100."),
        order: Literal["asc", "desc"] = Query("desc", description="By creation time."),
        principal: Principal | None = reader,
    ) -> VideoList:
        return service.list_videos(after, limit, order, principal)

    @app.get("/v1/videos/{video_id}", response_model=VideoObject, summary="A video object")
    async def get_video(video_id: str, principal: Principal | None = reader) -> JSONResponse:
        video = service.get_video(video_id, principal)
        return JSONResponse(video.model_dump(), headers={"openai-poll-after-ms": str(service.poll_after_ms(video))})

    @app.get(
        "/v1/videos/{video_id}/content",
        summary="The finished mp4, or its thumbnail",
        responses={200: {"content": {"video/mp4": {}, "image/jpeg": {}}}},
    )
    async def get_content(
        video_id: str, variant: str = Query("video", description="video or thumbnail"),
        principal: Principal | None = reader,
    ):
        data, media_type = service.content(video_id, variant, principal)
        if isinstance(data, (bytes, bytearray)):
            return Response(bytes(data), media_type=media_type)
        suffix = "mp4" if variant == "video" else "jpg"
        return FileResponse(data, media_type=media_type, filename=f"{video_id}.{suffix}")

    @app.delete("/v1/videos/{video_id}", response_model=VideoDeleted, summary="Stop (if running) and delete")
    async def delete_video(video_id: str, principal: Principal | None = reader) -> VideoDeleted:
        return service.delete(video_id, principal)

    @app.post("/v1/videos/{video_id}/cancel", response_model=VideoObject, summary="Stop a queued or running job")
    async def cancel_video(video_id: str, principal: Principal | None = reader) -> VideoObject:
        return service.cancel(video_id, principal)

    @app.get(
        "/v1/videos/{video_id}/events",
        summary="Server-Sent Events: queued, progress (step k of n, ETA), then completed or failed",
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def video_events(
        video_id: str, last_event_id: str | None = Header(None), principal: Principal | None = reader
    ) -> StreamingResponse:
        # ASCII digits, bounded: isdigit() takes '²' and int() refuses 4300+ digits (both were 500s).
        after = int(last_event_id) if last_event_id and re.fullmatch(r"[0-9]{1,18}", last_event_id) else 0
        stream = service.events(video_id, after, principal)
        first = await anext(stream, None)  # errors (404) surface before the 200 starts

        async def body():
            if first is not None:
                yield _sse(*first)
                async for seq, event in stream:
                    yield _sse(seq, event)

        return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.websocket("/v1/videos/{video_id}/ws")
    async def video_ws(websocket: WebSocket, video_id: str) -> None:
        await websocket.accept()
        try:
            principal = None
            if service.guard is not None:
                # Browsers cannot set headers on a WebSocket: the key may come as
                # ?access_token= (RFC 6750's query form) instead.
                header = websocket.headers.get("authorization")
                token = websocket.query_params.get("access_token")
                principal = service.guard.authenticate(header if header or not token else f"Bearer {token}")
                service.guard.check_rate(principal, "read")
            async for seq, event in service.events(video_id, 0, principal):
                await websocket.send_json({"seq": seq, **event})
        except ServiceError as exc:
            await websocket.send_json(exc.to_dict())
        except WebSocketDisconnect:
            return
        await websocket.close()

    @app.get("/v1/cache/stats", summary="Result cache: entries, bytes, fills, evictions (admin)")
    async def cache_stats(authorization: str | None = Header(None)) -> dict:
        return await service.cache_stats(authorization)

    @app.delete("/v1/cache/{key}", summary="Drop one cache entry by its key (admin)")
    async def cache_delete(key: str, authorization: str | None = Header(None)) -> dict:
        return await service.cache_delete(key, authorization)

    @app.delete("/v1/cache", summary="Purge the whole result cache (admin)")
    async def cache_purge(authorization: str | None = Header(None)) -> dict:
        return await service.cache_purge(authorization)

    @app.get("/healthz", response_model=HealthResponse, summary="Service and stage health")
    async def healthz() -> JSONResponse:
        health = await service.health()
        return JSONResponse(status_code=200 if health.status == "ok" else 503, content=health.model_dump())

    @app.get("/v1/presets", summary="Presets and the limits requests are checked against")
    async def presets() -> dict:
        return service.describe()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse((WEB_DIR / "index.html").read_text(encoding="utf-8"))

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

    return app
