"""The service's exception tree.

Every error that reaches a client is one of these, rendered as JSON in the
OpenAI error shape with a stable ``code``:

    {"error": {"code": "...", "message": "...", "type": "...", "param": ...}}

Messages quote the offending values so that a log line alone explains a
failure.

Statuses are OpenAI's where OpenAI defines them (400 for an invalid parameter,
401, 403, 404, 409, 429, 5xx), so its SDK raises its usual exception classes.
`retryable` becomes the `x-should-retry` header, which the SDK obeys before its
own rule (retry 408/409/429/5xx twice, without an idempotency key): a final
answer says `false`, so a retry never starts the same generation again.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Base class: an error with an HTTP status and a stable machine code."""

    status_code: int = 500
    code: str = "internal_error"
    error_type: str = "server_error"
    # x-should-retry: True (asking again is safe and may succeed), False (final: the same
    # request gets the same answer, or would start the same work again), None (no opinion:
    # the client's own rule). An instance may say otherwise than its class (create.py: any
    # error after a job exists is final).
    retryable: bool | None = None

    def __init__(self, message: str, *, param: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.details = details

    def headers(self) -> dict[str, str]:
        """HTTP headers that go with this error (e.g. Retry-After)."""
        return {}

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
    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (_rebuild, (type(self), self.message, self.param, self.details))


def _rebuild(cls: type[ServiceError], message: str, param: str | None, details: dict[str, Any]) -> ServiceError:
    return cls(message, param=param, **details)


class RequestRefused(ServiceError):
    """The request itself is at fault: the same request gets the same answer (final)."""

    status_code = 400
    error_type = "invalid_request_error"
    retryable = False


class InvalidRequest(RequestRefused):
    """A request field is outside what the service accepts (HTTP 400, OpenAI's status for it)."""

    status_code = 400
    code = "invalid_request"


class InvalidImage(InvalidRequest):
    """An image field (`input_reference`) is not a picture the model can start from (HTTP 400)."""

    code = "invalid_image"


class NotFound(RequestRefused):
    status_code = 404
    code = "not_found"
    error_type = "invalid_request_error"


class VideoNotReady(RequestRefused):
    """Content was asked for before the video finished (HTTP 409)."""

    status_code = 409
    code = "video_not_ready"
    error_type = "invalid_request_error"


class Unauthorized(RequestRefused):
    """No or a wrong key (HTTP 401)."""

    status_code = 401
    code = "unauthorized"
    error_type = "authentication_error"


class Forbidden(RequestRefused):
    """The key is fine but may not do this, or the feature is off (HTTP 403)."""

    status_code = 403
    code = "forbidden"
    error_type = "permission_error"


class VideoExpired(RequestRefused):
    """The video's files are past `expires_at` (HTTP 410)."""

    status_code = 410
    code = "video_expired"
    error_type = "invalid_request_error"


class ImageGone(RequestRefused):
    """A job's first-frame image is no longer stored (kept `image_input.keep_s`): send it again (HTTP 410)."""

    status_code = 410
    code = "input_reference_gone"
    error_type = "invalid_request_error"


class Conflict(RequestRefused):
    """The request does not fit the resource's state, e.g. cancelling a finished job (HTTP 409)."""

    status_code = 409
    code = "conflict"
    error_type = "invalid_request_error"


class JobOutcome(ServiceError):
    """How a generation ended when it did not complete: final, since asking again starts
    another generation (the SDK would otherwise retry a 5xx twice)."""

    retryable = False


class DeadlineExceeded(JobOutcome):
    """The request's deadline passed; work stopped at a step boundary (HTTP 504)."""

    status_code = 504
    code = "deadline_exceeded"
    error_type = "timeout_error"


class RequestCancelled(JobOutcome):
    """The client went away or cancelled; work stopped at a step boundary.

    499 is nginx's "client closed request": nobody usually reads it, but logs do.
    """

    status_code = 499
    code = "cancelled"
    error_type = "cancelled"


class ModelLoadError(JobOutcome):
    """A model profile could not be loaded (missing weights, missing backend)."""

    status_code = 503
    code = "model_unavailable"
    error_type = "server_error"


class StageFailed(JobOutcome):
    """A pipeline stage raised something unexpected."""

    status_code = 500
    code = "stage_failed"
    error_type = "server_error"


class StageLost(StageFailed):
    """A replica running one of the job's stages died (killed, OOM-killed, node lost).

    The job runner runs the job again, on a live or replacement replica, up to
    `job_max_attempts` runs; this is the error of the last one.
    """

    status_code = 503
    code = "stage_lost"


class RequestTooLarge(RequestRefused):
    """The body, a multipart part or a list is larger than the service accepts (HTTP 413)."""

    status_code = 413
    code = "request_too_large"
    error_type = "invalid_request_error"


class RetryLater(ServiceError):
    """Try again later; `retry_after_s` becomes the Retry-After header and a body field."""

    status_code = 429
    code = "retry_later"
    error_type = "rate_limit_error"
    retryable = True  # refused before any work started: asking again later is what is asked for

    def __init__(self, message: str, *, retry_after_s: float, param: str | None = None, **details: Any) -> None:
        # Whole seconds, at least one: Retry-After takes an integer, and 0 invites a hot loop.
        retry_after = max(1, int(-(-float(retry_after_s) // 1)))
        super().__init__(message, param=param, retry_after_s=retry_after, **details)
        self.retry_after_s = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class RateLimited(RetryLater):
    """The key's request rate is over its token bucket (HTTP 429)."""

    code = "rate_limited"


class ConcurrencyLimited(RetryLater):
    """The key already has as many unfinished jobs as it may (HTTP 429)."""

    code = "too_many_concurrent_jobs"


class OverCapacity(RetryLater):
    """Admission control: no tier can finish this request by its deadline now (HTTP 429)."""

    code = "over_capacity"


class TooManyStreams(RetryLater):
    """A key, or the gateway replica, already holds as many progress streams as it may (HTTP 429)."""

    code = "too_many_streams"


class ServiceUnavailable(RetryLater):
    """Nothing can serve now: no denoiser replica, or the gateway is draining (HTTP 503)."""

    status_code = 503
    code = "service_unavailable"
    error_type = "server_error"


class GpuOutOfMemory(JobOutcome):
    """A stage ran out of GPU memory, also on its lower-memory retry (HTTP 503)."""

    status_code = 503
    code = "gpu_out_of_memory"
    error_type = "server_error"
