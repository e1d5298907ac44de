"""What the service sends the client over the wire, for client and CLI tests without a service."""

from __future__ import annotations

import json

VIDEO = {
    "id": "video_abc",
    "object": "video",
    "status": "queued",
    "model": "wan2.2-ti2v-5b",
    "progress": 0,
    "queue_position": 2,
    "eta_s": 1.5,
    "created_at": 1_700_000_000,
    "size": "64x64",
    "seconds": "1.12",
    "preset": "preview",
    "prompt": "a red kite",
    "negative_prompt": "",
    "width": 64,
    "height": 64,
    "num_frames": 9,
    "fps": 8,
    "num_inference_steps": 3,
    "guidance_scale": 5.0,
    "seed": 7,
}


def video(**changes) -> dict:
    """A video object as JSON, with `changes` applied."""
    return {**VIDEO, **changes}


def sse(seq: int, event: dict) -> bytes:
    """One server-sent event as the service frames it: id, event type, JSON data."""
    return f"id: {seq}\nevent: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()
