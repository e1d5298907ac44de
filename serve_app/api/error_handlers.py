"""Every error a client gets is JSON in one shape, {"error": {code, message, type, param}}.

Our own `ServiceError`s carry that shape (serve_app/errors.py); the handlers
here give it to FastAPI's validation errors, Starlette's (no such route, wrong
method) and anything unexpected, and document it on every operation. Statuses
are OpenAI's (400 for a bad parameter), and `x-should-retry` says whether asking
again may help (`ServiceError.retryable`), which OpenAI's SDKs obey.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app.api.protocol import ErrorResponse
from serve_app.errors import InvalidRequest, ServiceError

log = logging.getLogger("ray.serve")

HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}
SHOULD_RETRY = "x-should-retry"

# Documented on every operation, so /openapi.json shows the error shape clients
# really get. "4XX" also keeps FastAPI from documenting its own 422 body, which
# this service never sends.
ERROR_RESPONSES: dict[int | str, dict] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "A field is outside what the service accepts; `param` names it"),
        (401, "No or unknown API key (when keys are on)"),
        (404, "No such video, file or route"),
        (429, "Rate, concurrency or capacity limit: retry after the Retry-After header"),
        (503, "Overloaded, or a stage is down: retry after the Retry-After header"),
        ("4XX", "Any other client error (409, 410, 413, ...), in the same shape"),
    )
}


def retry_headers(retryable: bool | None) -> dict[str, str]:
    """`x-should-retry` for an answer: OpenAI's SDKs obey it before their own status rule."""
    return {} if retryable is None else {SHOULD_RETRY: "true" if retryable else "false"}


def error_response(exc: ServiceError) -> JSONResponse:
    headers = {**exc.headers(), **retry_headers(exc.retryable)}
    return JSONResponse(status_code=exc.status_code, content=exc.to_dict(), headers=headers or None)


def short(value: object, limit: int = 200) -> str:
    """repr() of a client's value, cut: error messages must not echo a 64 kB body."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def first_error(errors: list[dict]) -> InvalidRequest:
    """The first of pydantic's validation errors, as our 400 naming the field."""
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
        message += f" (got {short(first.get('input'))})"
    return InvalidRequest(message, param=field)


def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(first_error(list(exc.errors())))


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
    headers = dict(getattr(exc, "headers", None) or {})
    if 400 <= exc.status_code < 500:
        headers.update(retry_headers(False))  # no such route or method: asking again changes nothing
    return JSONResponse(status_code=exc.status_code, content=body, headers=headers or None)


def _unexpected_error(_: Request, exc: Exception) -> JSONResponse:
    # Never leak a stack trace or internals to the client; the log has them.
    log.exception("unhandled error", exc_info=exc)
    return error_response(ServiceError("internal error; see the service log"))


def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
    response = error_response(exc)
    # Which gateway replica answered: operators correlate it with that replica's log.
    response.headers["Wan-Replica"] = request.app.state.replica
    return response


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
