"""What a create answers with, the header it reads, and which of its errors are final: shared by
the routes and VideoCreator."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from serve_app.api.protocol import VideoObject
from serve_app.errors import InvalidRequest, ServiceError

log = logging.getLogger("ray.serve")


def new_video_id() -> str:
    return f"video_{uuid.uuid4().hex}"


@dataclass(frozen=True)
class Preference:
    """RFC 7240 `Prefer`: respond-async, or wait=N seconds."""

    respond_async: bool = False
    wait_s: float | None = None

    @classmethod
    def parse(cls, header: str | None) -> Preference:
        if not header:
            return cls()
        respond_async, wait_s = False, None
        for token in re.split(r"[,;]", header):
            token = token.strip().lower()
            if token == "respond-async":
                respond_async = True
            elif token.startswith("wait="):
                try:
                    wait_s = float(token[5:])
                except ValueError:
                    raise InvalidRequest(f"Prefer: {token!r} is not wait=<seconds>", param="Prefer") from None
                if wait_s < 0:
                    raise InvalidRequest(f"Prefer: {token!r} must not be negative", param="Prefer")
        return cls(respond_async, wait_s)


def tier_header(video: VideoObject) -> str:
    """`Wan-Tier: reduced; num_inference_steps=20; num_frames=13`: the tier and what it lowered, as used."""
    lowered = [f"{field}={getattr(video, field)}" for field in (video.requested or {})]
    return "; ".join([video.tier or "", *lowered])


@dataclass
class CreateOutcome:
    video: VideoObject
    status_code: int
    headers: dict[str, str] = field(default_factory=dict)


@contextmanager
def errors_final(video_id: str) -> Iterator[None]:
    """Every error raised inside is final (`x-should-retry: false`): a job exists, so a retry
    without its Idempotency-Key would start the same work again. One we did not expect is
    logged here and answered as our 500, final too."""
    try:
        yield
    except ServiceError as exc:
        exc.retryable = False
        raise
    except Exception as exc:
        log.exception("video %s: unexpected error while answering", video_id, extra={"job_id": video_id})
        final = ServiceError("internal error; see the service log", video_id=video_id)
        final.retryable = False
        raise final from exc
