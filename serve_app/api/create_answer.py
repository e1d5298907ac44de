"""What a create answers with, and the header it reads: shared by the routes and VideoCreator."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field

from serve_app.api.protocol import VideoObject
from serve_app.errors import InvalidRequest


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
