"""What a webhook carries: OpenAI's event envelope for a video that ended.

    {"id": "evt_...", "object": "event", "type": "video.completed" | "video.failed",
     "created_at": <epoch seconds the video ended>, "data": {"id": "video_..."}}

as OpenAI sends it, so `client.webhooks.unwrap(body, headers, secret=...)` of the
official SDK checks and parses it; the receiver reads the video itself with
GET /v1/videos/{id} (`client.videos.retrieve`). The event id is derived from the
video's id and outcome, as the `webhook-id` header is (delivery.py), and
`created_at` is the video's `completed_at`: every sending of one outcome is the
same event, byte for byte, and receivers deduplicate on either id.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from typing import Any

EVENT_TYPES = {"completed": "video.completed", "failed": "video.failed"}


def outcome_digest(video_id: str, status: str) -> str:
    """32 hex digits naming one outcome of one video: the event's id and the message's."""
    return hashlib.sha256(f"{video_id}.{status}".encode()).hexdigest()[:32]


def video_event(video: Mapping[str, Any]) -> dict[str, Any]:
    """The event of a finished video object (a dict, as `VideoObject.model_dump()` gives it)."""
    status = video["status"]
    if status not in EVENT_TYPES:
        raise ValueError(f"video {video['id']!r} is {status!r}; events are sent for {sorted(EVENT_TYPES)}")
    ended = video.get("completed_at")
    return {
        "id": f"evt_{outcome_digest(video['id'], status)}",
        "object": "event",
        "type": EVENT_TYPES[status],
        "created_at": int(ended) if ended is not None else int(time.time()),
        "data": {"id": video["id"]},
    }
