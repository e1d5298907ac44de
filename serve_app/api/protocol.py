"""Request and response models of the OpenAI-style `/v1/videos` API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

VideoStatus = Literal["queued", "in_progress", "completed", "failed"]


class CreateVideoRequest(BaseModel):
    """POST /v1/videos. Unset fields come from the preset."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(description="What the video shows.")
    model: str | None = Field(None, description="Model id; defaults to the one this service runs.")
    preset: str | None = Field(None, description="Preset name (configs/presets.yaml); default 'preview'.")
    size: str | None = Field(None, description="WIDTHxHEIGHT, e.g. '640x480'; or give width and height.")
    width: int | None = Field(None, description="Width in pixels, a multiple of 32.")
    height: int | None = Field(None, description="Height in pixels, a multiple of 32.")
    num_frames: int | None = Field(None, description="Frames, of the form 4k+1.")
    fps: int | None = Field(None, description="Frames per second of the mp4.")
    num_inference_steps: int | None = Field(None, description="Denoising steps.")
    guidance_scale: float | None = Field(None, description="Classifier-free guidance scale; <= 1 turns it off.")
    negative_prompt: str | None = Field(None, description="What the video should not show.")
    seed: int | None = Field(None, description="Seed; omitted means random (the answer reports it).")
    seconds: str | float | None = Field(
        None, description="OpenAI's clip length; frames = seconds x fps + 1 (must be 4k+1). Or give num_frames."
    )
    deadline_s: float | None = Field(
        None, description="Seconds the service may spend on one run of this request; default and cap are config."
    )
    webhook_url: str | None = Field(
        None, description="POSTed the final video object (signed) when the job completes or fails."
    )
    cache: bool = Field(True, description="false: never answer from the cache nor fill it; a missing seed is random.")


class VideoError(BaseModel):
    code: str
    message: str


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
    seconds: str
    error: VideoError | None = None
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
