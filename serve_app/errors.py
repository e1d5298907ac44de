"""The service's exception tree.

Every error that reaches a client is one of these, rendered as JSON in the
OpenAI error shape with a stable ``code``:

    {"error": {"code": "...", "message": "...", "type": "...", "param": ...}}

Messages quote the offending values so that a log line alone explains a
failure.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Base class: an error with an HTTP status and a stable machine code."""

    status_code: int = 500
    code: str = "internal_error"
    error_type: str = "server_error"

    def __init__(self, message: str, *, param: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        # Details never overwrite the stable fields clients switch on.
        return {
            "error": {
                **self.details,
                "code": self.code,
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
            }
        }

    # Ray pickles exceptions raised in replicas; keep the details across that.
    def __reduce__(self):
        return (_rebuild, (type(self), self.message, self.param, self.details))


def _rebuild(cls: type[ServiceError], message: str, param: str | None, details: dict) -> ServiceError:
    return cls(message, param=param, **details)


class InvalidRequest(ServiceError):
    """A request field is outside what the service accepts (HTTP 422)."""

    status_code = 422
    code = "invalid_request"
    error_type = "invalid_request_error"


class NotFound(ServiceError):
    status_code = 404
    code = "not_found"
    error_type = "invalid_request_error"


class VideoNotReady(ServiceError):
    """Content was asked for before the video finished (HTTP 409)."""

    status_code = 409
    code = "video_not_ready"
    error_type = "invalid_request_error"


class Unauthorized(ServiceError):
    """No or a wrong key (HTTP 401)."""

    status_code = 401
    code = "unauthorized"
    error_type = "authentication_error"


class Forbidden(ServiceError):
    """The key is fine but may not do this, or the feature is off (HTTP 403)."""

    status_code = 403
    code = "forbidden"
    error_type = "permission_error"


class VideoExpired(ServiceError):
    """The video's files are past `expires_at` (HTTP 410)."""

    status_code = 410
    code = "video_expired"
    error_type = "invalid_request_error"


class Conflict(ServiceError):
    """The request does not fit the resource's state, e.g. cancelling a finished job (HTTP 409)."""

    status_code = 409
    code = "conflict"
    error_type = "invalid_request_error"


class DeadlineExceeded(ServiceError):
    """The request's deadline passed; work stopped at a step boundary (HTTP 504)."""

    status_code = 504
    code = "deadline_exceeded"
    error_type = "timeout_error"


class RequestCancelled(ServiceError):
    """The client went away or cancelled; work stopped at a step boundary.

    499 is nginx's "client closed request": nobody usually reads it, but logs do.
    """

    status_code = 499
    code = "cancelled"
    error_type = "cancelled"


class ModelLoadError(ServiceError):
    """A model profile could not be loaded (missing weights, missing backend)."""

    status_code = 503
    code = "model_unavailable"
    error_type = "server_error"


class StageFailed(ServiceError):
    """A pipeline stage raised something unexpected."""

    status_code = 500
    code = "stage_failed"
    error_type = "server_error"
