"""Request and response models of the OpenAI-style `/v1/videos` API."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, StringConstraints, field_validator

from serve_app.settings.speed import FastKnobs

VideoStatus = Literal["queued", "in_progress", "completed", "failed"]


def plain_text(v: Any) -> Any:
    """A text field's value, if UTF-8 can carry it and C strings would not cut it short."""
    # A lone surrogate ("\ud800", valid in JSON escapes) cannot be encoded as
    # UTF-8, so storing or answering with it fails later as a 500; NUL cuts
    # C strings short in the tokenizer and logs. Refused here, named.
    if isinstance(v, str):
        if "\x00" in v:
            raise ValueError("must not contain NUL characters")
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("must be valid Unicode text (no unpaired surrogates)") from None
    return v


class ImageReference(BaseModel):
    """OpenAI's `input_reference` object in a JSON body: the first frame as a data URL."""

    model_config = ConfigDict(extra="forbid")

    image_url: str | None = Field(
        None,
        description="The image as a base64 data URL, 'data:image/png;base64,...' (PNG, JPEG or WebP). "
        "Remote http(s) URLs are refused.",
    )
    file_id: str | None = Field(None, max_length=200, description="OpenAI file ids are not served here (400).")


class CreateVideoRequest(BaseModel):
    """POST /v1/videos. Unset fields come from the preset."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(description="What the video shows.")
    model: str | None = Field(None, max_length=200, description="Model id; defaults to the one this service runs.")
    preset: str | None = Field(
        None, max_length=100, description="Preset name (configs/presets.yaml); default 'preview'."
    )
    size: str | None = Field(None, max_length=32, description="WIDTHxHEIGHT, e.g. '640x480'; or give width and height.")
    width: int | None = Field(None, description="Width in pixels, a multiple of 32.")
    height: int | None = Field(None, description="Height in pixels, a multiple of 32.")
    num_frames: int | None = Field(None, description="Frames, of the form 4k+1.")
    fps: int | None = Field(None, description="Frames per second of the mp4.")
    num_inference_steps: int | None = Field(None, description="Denoising steps.")
    guidance_scale: float | None = Field(None, description="Classifier-free guidance scale; <= 1 turns it off.")
    negative_prompt: str | None = Field(None, description="What the video should not show.")
    seed: int | None = Field(None, description="Seed; omitted means random (the answer reports it).")
    seconds: Annotated[str, StringConstraints(max_length=32)] | float | None = Field(
        None, description="OpenAI's clip length; frames = seconds x fps + 1 (must be 4k+1). Or give num_frames."
    )
    deadline_s: float | None = Field(
        None, description="Seconds the service may spend on one run of this request; default and cap are config."
    )
    webhook_url: str | None = Field(
        None, max_length=2048, description="POSTed the final video object (signed) when the job completes or fails."
    )
    cache: bool = Field(
        True,
        description="false: never answer from the cache nor fill it; a missing seed is random. Under heavy "
        "load a tier may force the cache on (the answer's `tier` says so).",
    )
    quality: Literal["auto", "exact", "fast"] = Field(
        "auto",
        description="'auto': under load the service may lower steps and frames (quality tiers) rather "
        "than time out, and says so in `tier` and `requested`; 'exact': never degrade: wait, or get a 429; "
        "'fast': run with the model profile's fast knobs (speed.fast, e.g. FP8 attention: faster, not "
        "bit-exact; the answer's `fast` lists them), tiers still apply under load.",
    )
    input_reference: ImageReference | None = Field(
        None,
        description="Image to video: the first frame, fitted to the size (scaled to cover it, the overflow "
        "cut evenly). In JSON as {image_url: data URL}; in multipart/form-data as a file part of this name.",
    )
    # A multipart file part named input_reference (serve_app/api/body.py): its bytes, never dumped.
    _uploaded_image: bytes | None = PrivateAttr(None)
    # A remix (serve_app/api/remix.py): the source video's id, and its `seconds` as it was answered.
    _remixed_from: str | None = PrivateAttr(None)
    _seconds_echo: str | None = PrivateAttr(None)

    @property
    def uploaded_image(self) -> bytes | None:
        return self._uploaded_image

    @property
    def remixed_from(self) -> str | None:
        return self._remixed_from

    @property
    def seconds_echo(self) -> str | None:
        """`seconds` as the answer shows it: as sent (OpenAI echoes it), a number as its
        shortest text ("4", "1.5"); None when the request gave num_frames (or nothing)."""
        if self._seconds_echo is not None:
            return self._seconds_echo
        if self.seconds is None or isinstance(self.seconds, str):
            return self.seconds
        return str(int(self.seconds)) if float(self.seconds).is_integer() else repr(float(self.seconds))

    @field_validator("prompt", "negative_prompt", "model", "preset", "size", "seconds", "webhook_url")
    @classmethod
    def _plain_text(cls, v: Any) -> Any:
        return plain_text(v)


class RemixVideoRequest(BaseModel):
    """POST /v1/videos/{id}/remix: the source video's settings and seed, with a new prompt.
    OpenAI's body is the prompt alone; the rest are our run options, as on a create."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(description="What the remix shows instead.")
    deadline_s: float | None = Field(
        None, description="Seconds the service may spend on one run of the remix; default and cap are config."
    )
    webhook_url: str | None = Field(
        None, max_length=2048, description="POSTed a signed video.completed / video.failed event when it ends."
    )
    cache: bool = Field(True, description="As on a create: false neither answers from the cache nor fills it.")
    quality: Literal["auto", "exact"] | None = Field(
        None, description="As on a create; default: the source's ('exact' if it ran exact, else 'auto')."
    )

    @field_validator("prompt", "webhook_url")
    @classmethod
    def _plain_text(cls, v: Any) -> Any:
        return plain_text(v)


class VideoError(BaseModel):
    code: str
    message: str


class ErrorDetail(BaseModel):
    """What every 4xx/5xx answer carries (serve_app/errors.py); some codes add fields (e.g. retry_after_s)."""

    model_config = ConfigDict(extra="allow")

    code: str = Field(description="Stable, machine-readable: switch on this (e.g. invalid_request, over_capacity).")
    message: str = Field(description="For people; may change between versions.")
    type: str = Field(description="OpenAI-style class: invalid_request_error, rate_limit_error, server_error, ...")
    param: str | None = Field(None, description="The request field at fault, when one is.")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class VideoTimings(BaseModel):
    prompt_encode_s: float | None = None
    denoise_s: float | None = None
    decode_s: float | None = None
    encode_s: float | None = None
    total_s: float | None = None


class VideoObject(BaseModel):
    """OpenAI's video object, plus the generation parameters actually used."""

    id: str
    object: Literal["video"] = "video"
    status: VideoStatus
    model: str
    progress: int = Field(0, ge=0, le=100, description="Percent of denoising steps done.")
    queue_position: int | None = Field(None, description="Jobs ahead of this one while queued.")
    eta_s: float | None = Field(None, description="Estimated seconds until completion (from measured stage times).")
    created_at: int
    completed_at: int | None = None
    expires_at: int | None = None
    size: str
    seconds: str = Field(
        description="OpenAI's clip length: as the request sent it; else num_frames / fps, to 2 decimals."
    )
    error: VideoError | None = None
    remixed_from_video_id: str | None = Field(None, description="The source video of a remix (POST .../remix).")
    # Our extensions: what was really run.
    preset: str
    prompt: str
    negative_prompt: str
    width: int
    height: int
    num_frames: int
    fps: int
    num_inference_steps: int
    guidance_scale: float
    seed: int
    timings: VideoTimings = Field(default_factory=VideoTimings)
    cached: bool = Field(False, description="Answered from the result cache (no generation ran).")
    cache_key: str | None = Field(None, description="The result-cache key of these settings (admin: DELETE it).")
    tier: str | None = Field(
        None,
        description="Quality tier the service ran this request at (configs/tiers.yaml), 'exact' for "
        "`quality: exact`; None for cached answers and with admission off.",
    )
    fast: FastKnobs | None = Field(
        None, description="Quality-changing speed-ups its tier used (step cache, FP8); None: the exact path."
    )
    requested: dict[str, int] | None = Field(
        None,
        description="Settings the request asked for that its tier lowered, e.g. {'num_frames': 17}; the "
        "values used are in the fields above.",
    )
    input_reference_sha256: str | None = Field(
        None, description="Image to video: SHA-256 of the first-frame image file; None for text to video."
    )


class VideoList(BaseModel):
    object: Literal["list"] = "list"
    data: list[VideoObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class VideoDeleted(BaseModel):
    id: str
    object: Literal["video.deleted"] = "video.deleted"
    deleted: bool = True


class StageHealth(BaseModel):
    ok: bool
    replica: dict[str, Any] | None = None
    error: str | None = None


class HealthResponse(BaseModel):
    status: Literal["ok", "degraded"]
    model: str
    attention_backend: str
    default_deadline_s: float
    stages: dict[str, StageHealth]
    access: dict[str, Any] | None = Field(None, description="Auth on/off, limiter backend, default limits.")
    load: dict[str, Any] | None = Field(
        None, description="What admission sees now: load, tier, denoiser replicas, unfinished jobs, work ahead."
    )
