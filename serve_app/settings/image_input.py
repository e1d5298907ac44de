"""`args.image_input`: the image of an image-to-video request (OpenAI's `input_reference`)."""

from __future__ import annotations

from pydantic import Field

from serve_app.settings.base import StrictModel

# Pillow's own bomb guard (PIL.Image.MAX_IMAGE_PIXELS): above it Pillow warns, and at twice
# it refuses, on its own terms; the limit here stays under it so ours is the one that speaks.
PILLOW_MAX_IMAGE_PIXELS = 89_478_485


class ImageInputOptions(StrictModel):
    """Limits on the first-frame image a request may carry (docs/api.md, "Image to video")."""

    enabled: bool = Field(
        True,
        description="Accept `input_reference` (Wan2.2-TI2V's image mode). Off: a request carrying one gets a 400 "
        "and bodies keep the plain `access.max_body_bytes` limit.",
    )
    max_bytes: int = Field(
        10 * 1024 * 1024,
        ge=1024,
        description="Largest image file, bytes (larger: 413 naming `input_reference`). Counted apart from "
        "`access.max_body_bytes`, which bounds the rest of the body; a base64 data URL may be 4/3 of this.",
    )
    max_pixels: int = Field(
        50_000_000,
        ge=1,
        le=PILLOW_MAX_IMAGE_PIXELS,
        description="Most pixels (width x height, read from the file's header before anything is decoded) an "
        "image may have: the decompression-bomb guard. Decoding takes about 4 bytes per pixel of gateway memory.",
    )
    keep_s: float = Field(
        86400.0,
        gt=0,
        description="Seconds an uploaded image is kept after its last upload, for its job's runs and reruns "
        "(stored beside the videos, by SHA-256). Must outlast the longest a job waits and runs.",
    )
