"""POST /v1/videos/{id}/remix (OpenAI's remix): the source video's settings and seed, a new prompt.

A remix is a create: the request built here goes through `VideoCreator.create_video`
like any other, so the result cache (the same remix twice is one generation),
single flight, admission and quality tiers, API-key limits and idempotency keys
all apply. What it takes from the source is what the source asked for: where a
quality tier lowered the source's steps or frames, the remix asks for the values
the source asked for (`requested`), and admission decides its own tier. The
seed is the one the source ran with, so only the prompt changes the picture.
An image-to-video source lends its first frame (kept `image_input.keep_s`
after its last upload; gone: 410 `input_reference_gone`).
"""

from __future__ import annotations

import asyncio

from pydantic import ValidationError

from serve_app.api.error_handlers import first_error
from serve_app.api.protocol import CreateVideoRequest, RemixVideoRequest, VideoObject
from serve_app.config import PresetCatalog
from serve_app.errors import InvalidRequest
from serve_app.reference_images import ReferenceImageStore


async def remix_request(
    source: VideoObject,
    body: RemixVideoRequest,
    catalog: PresetCatalog,
    images: ReferenceImageStore | None,
) -> CreateVideoRequest:
    """The create request a remix of `source` makes (checked like any create, later)."""
    requested = source.requested or {}
    fields = dict(
        prompt=body.prompt,
        # A preset removed from the config since: every setting is given anyway; the default names it.
        preset=source.preset if source.preset in catalog.presets else None,
        width=source.width,
        height=source.height,
        num_frames=requested.get("num_frames", source.num_frames),
        fps=source.fps,
        num_inference_steps=requested.get("num_inference_steps", source.num_inference_steps),
        guidance_scale=source.guidance_scale,
        negative_prompt=source.negative_prompt,
        seed=source.seed,
        deadline_s=body.deadline_s,
        webhook_url=body.webhook_url,
        cache=body.cache,
        quality=body.quality or ("exact" if source.tier == "exact" else "auto"),
    )
    try:
        request = CreateVideoRequest.model_validate(fields)
    except ValidationError as exc:  # a stored video's settings always fit; a 400, not a 500, if not
        raise first_error(exc.errors()) from None
    request._remixed_from = source.id
    if "num_frames" not in requested:
        # The same length as the source: its `seconds` as it was answered (as sent, if it was).
        request._seconds_echo = source.seconds
    if source.input_reference_sha256 is not None:
        if images is None:
            raise InvalidRequest(
                f"video {source.id!r} starts from an image, and image input is turned off on this service",
                param="input_reference",
            )
        # The source's first frame, checked again like an upload (and kept again from now);
        # a store without it any more raises ImageGone (410).
        request._uploaded_image = await asyncio.to_thread(images.get, source.input_reference_sha256)
    return request
