"""FastAPI routes: thin, each one a call into `VideoService`.

`create_app(service)` builds the ASGI app; the gateway deployment hands it to
Ray Serve, and unit tests drive it with a fake service and no Ray at all.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app.api.protocol import CreateVideoRequest, HealthResponse, VideoObject
from serve_app.api.service import VideoService
from serve_app.errors import InvalidRequest, ServiceError

log = logging.getLogger("ray.serve")


def _error_response(exc: ServiceError) -> JSONResponse:
    return JSONResponse(status_code=exc.status_code, content=exc.to_dict())


def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0]
    if first.get("type") == "json_invalid":
        # loc is ("body", <byte offset>): the offset is no field name.
        reason = (first.get("ctx") or {}).get("error", "invalid JSON")
        return _error_response(InvalidRequest(f"body is not valid JSON: {reason}", param="body"))
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    field = ".".join(loc) or "body"
    value = first.get("input")
    message = f"{field}: {first.get('msg', 'invalid value')}"
    if first.get("type") != "missing":
        message += f" (got {value!r})"
    return _error_response(InvalidRequest(message, param=field))


HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


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


def create_app(service: VideoService) -> FastAPI:
    app = FastAPI(
        title="Wan2.2 text-to-video",
        version="0.1.0",
        description="Text-to-video generation (Wan2.2-TI2V-5B) on Ray Serve, OpenAI-style /v1/videos.",
    )
    app.add_exception_handler(ServiceError, lambda _, exc: _error_response(exc))
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)

    @app.post("/v1/videos", response_model=VideoObject, summary="Generate a video")
    async def create_video(body: CreateVideoRequest) -> VideoObject:
        return await service.create_video(body)

    @app.get("/v1/videos/{video_id}", response_model=VideoObject, summary="A video object")
    async def get_video(video_id: str) -> VideoObject:
        return service.get_video(video_id)

    @app.get(
        "/v1/videos/{video_id}/content",
        response_class=FileResponse,
        summary="The finished mp4",
        responses={200: {"content": {"video/mp4": {}}}},
    )
    async def get_content(video_id: str, variant: str = "video") -> FileResponse:
        path = service.content_path(video_id, variant)
        return FileResponse(path, media_type="video/mp4", filename=f"{video_id}.mp4")

    @app.get("/healthz", response_model=HealthResponse, summary="Service and stage health")
    async def healthz() -> JSONResponse:
        health = await service.health()
        return JSONResponse(status_code=200 if health.status == "ok" else 503, content=health.model_dump())

    @app.get("/v1/presets", summary="Presets and the limits requests are checked against")
    async def presets() -> dict:
        return service.describe()

    return app
