"""The /v1/videos routes (OpenAI's video API, with our extensions). Thin: each reads the
request, asks `VideoCreator` or `VideoViews` (from `app.state`), and shapes the answer."""

from __future__ import annotations

import time
from typing import Literal

from fastapi import APIRouter, Header, Query, Request, WebSocket
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, StreamingResponse

from serve_app.access.keys import Principal
from serve_app.api.body import read_create_request, read_remix_request
from serve_app.api.callers import CREATOR, READER, websocket_caller
from serve_app.api.create import Preference, VideoCreator
from serve_app.api.create_answer import CreateOutcome
from serve_app.api.protocol import CreateVideoRequest, VideoDeleted, VideoList, VideoObject
from serve_app.api.remix import remix_request
from serve_app.api.streams import ProgressStreams, parse_last_event_id, refuse_websocket, serve_websocket
from serve_app.api.views import VideoViews
from serve_app.errors import ServiceError

router = APIRouter()

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


def _creator(request: Request) -> VideoCreator:
    return request.app.state.creator


def _views(request: Request | WebSocket) -> VideoViews:
    return request.app.state.views


def _streams(request: Request | WebSocket) -> ProgressStreams:
    return request.app.state.streams


# The headers of every create (POST /v1/videos and its remix).
PREFER = Header(None, description="RFC 7240: respond-async, or wait=<seconds>")
IDEMPOTENCY_KEY = Header(None, max_length=200, description="Retries with the same key return the same job.")


@router.post(
    "/v1/videos",
    response_model=VideoObject,
    summary="Generate a video (synchronously when it fits the sync budget, else as a job)",
    openapi_extra=CREATE_BODY_DOC,
    responses={202: {"model": VideoObject, "description": "Accepted as a job; poll, stream or wait for the webhook"}},
)
async def create_video(
    request: Request,
    prefer: str | None = PREFER,
    idempotency_key: str | None = IDEMPOTENCY_KEY,
    principal: Principal | None = CREATOR,
) -> JSONResponse:
    started = time.perf_counter()
    body = await read_create_request(
        request, request.app.state.max_body_bytes, getattr(request.app.state, "image_input", None)
    )
    read = time.perf_counter()
    outcome = await _creator(request).create_video(body, Preference.parse(prefer), idempotency_key, principal)
    return _created(request, outcome, started, read)


@router.post(
    "/v1/videos/{video_id}/remix",
    response_model=VideoObject,
    summary="Remix: the video's settings and seed with a new prompt (a create like any other)",
    responses={202: {"model": VideoObject, "description": "Accepted as a job; poll, stream or wait for the webhook"}},
)
async def remix_video(
    request: Request,
    video_id: str,
    prefer: str | None = PREFER,
    idempotency_key: str | None = IDEMPOTENCY_KEY,
    principal: Principal | None = CREATOR,
) -> JSONResponse:
    started = time.perf_counter()
    body = await read_remix_request(request, request.app.state.max_body_bytes)
    read = time.perf_counter()
    # Whoever may not read the source gets its 404 (another key's, deleted, or no such id).
    source = await _views(request).get_video(video_id, principal)
    creator = _creator(request)
    remix = await remix_request(source, body, creator.catalog, creator.images)
    outcome = await creator.create_video(remix, Preference.parse(prefer), idempotency_key, principal)
    return _created(request, outcome, started, read)


def _created(request: Request, outcome: CreateOutcome, started: float, read: float) -> JSONResponse:
    # Server-Timing: the gateway's own share of the answer (reading the body
    # from the Serve proxy, then the work), so a client can tell it apart
    # from the network and the proxy.
    done = time.perf_counter()
    timing = f"body;dur={(read - started) * 1000:.2f}, gateway;dur={(done - started) * 1000:.2f}"
    headers = {**outcome.headers, "Server-Timing": timing, "Wan-Replica": request.app.state.replica}
    return JSONResponse(outcome.video.model_dump(), status_code=outcome.status_code, headers=headers)


@router.get("/v1/videos", response_model=VideoList, summary="List videos (cursor pagination)")
async def list_videos(
    request: Request,
    after: str | None = Query(None, description="Id of the last video of the previous page."),
    limit: int = Query(20, description="Page size, 1-100."),
    order: Literal["asc", "desc"] = Query("desc", description="By creation time."),
    principal: Principal | None = READER,
) -> VideoList:
    return await _views(request).list_videos(after, limit, order, principal)


@router.get("/v1/videos/{video_id}", response_model=VideoObject, summary="A video object")
async def get_video(request: Request, video_id: str, principal: Principal | None = READER) -> JSONResponse:
    views = _views(request)
    video = await views.get_video(video_id, principal)
    return JSONResponse(video.model_dump(), headers={"openai-poll-after-ms": str(views.poll_after_ms(video))})


@router.get(
    "/v1/videos/{video_id}/content",
    summary="The finished mp4, or its thumbnail",
    responses={
        200: {"content": {"video/mp4": {}, "image/jpeg": {}}},
        307: {"description": "With an S3 artifact store: a presigned URL of the file, valid for a while"},
    },
)
async def get_content(
    request: Request,
    video_id: str,
    variant: str = Query("video", description="video or thumbnail"),
    principal: Principal | None = READER,
):
    located, media_type = await _views(request).content(video_id, variant, principal)
    if isinstance(located, str):
        # S3: the client fetches the bytes from the bucket; none pass through the gateway's
        # memory or event loop. no-store: the URL expires, a cached redirect would not.
        return RedirectResponse(located, status_code=307, headers={"Cache-Control": "no-store"})
    suffix = "mp4" if variant == "video" else "jpg"
    return FileResponse(located, media_type=media_type, filename=f"{video_id}.{suffix}")


@router.delete("/v1/videos/{video_id}", response_model=VideoDeleted, summary="Stop (if running) and delete")
async def delete_video(request: Request, video_id: str, principal: Principal | None = READER) -> VideoDeleted:
    return await _views(request).delete_with_cache_entry(video_id, principal)


@router.post("/v1/videos/{video_id}/cancel", response_model=VideoObject, summary="Stop a queued or running job")
async def cancel_video(request: Request, video_id: str, principal: Principal | None = READER) -> VideoObject:
    return await _views(request).cancel(video_id, principal)


@router.get(
    "/v1/videos/{video_id}/events",
    summary="Server-Sent Events: queued, progress (step k of n, ETA), then completed or failed",
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "Events until the job ends, or `reconnect` after `streams.max_lifetime_s` "
            "(resume with Last-Event-ID); `: keep-alive` comments while idle",
        }
    },
)
async def video_events(
    request: Request,
    video_id: str,
    last_event_id: str | None = Header(None),
    principal: Principal | None = READER,
) -> StreamingResponse:
    streams = _streams(request)
    # 404 and 429 too_many_streams here, before the 200 starts.
    stream = await streams.open(video_id, parse_last_event_id(last_event_id), principal)
    return streams.sse_response(stream)


@router.websocket("/v1/videos/{video_id}/ws")
async def video_ws(websocket: WebSocket, video_id: str) -> None:
    # Everything is checked before accept: an unauthenticated, unknown or over-cap
    # caller never gets a connection (its handshake is answered with the error).
    try:
        principal = websocket_caller(websocket)
        after = parse_last_event_id(websocket.query_params.get("last_event_id"))
        stream = await _streams(websocket).open(video_id, after, principal)
    except ServiceError as exc:
        await refuse_websocket(websocket, exc)
        return
    await serve_websocket(websocket, stream)
