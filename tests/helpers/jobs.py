"""Job records for tests: a valid queued job from a number, and a copy with another status."""

from __future__ import annotations

from serve_app.api.protocol import VideoObject
from serve_app.jobs.model import JobRecord
from serve_app.params import GenerationParams


def job_id(n: int) -> str:
    return f"video_{n:032x}"


def make_job(n: int, created_at: float = 1.0, status: str = "queued", **changes) -> JobRecord:
    params = GenerationParams(
        prompt=f"a boat {n}", negative_prompt="", width=64, height=64, num_frames=5,
        num_inference_steps=2, guidance_scale=1.0, fps=8, seed=n, preset="preview",
    )
    video = VideoObject(
        id=job_id(n), status=status, model="wan2.2-ti2v-tiny", created_at=int(created_at), size=params.size,
        seconds=f"{params.seconds:.2f}", preset=params.preset, prompt=params.prompt,
        negative_prompt=params.negative_prompt, width=params.width, height=params.height,
        num_frames=params.num_frames, fps=params.fps, num_inference_steps=params.num_inference_steps,
        guidance_scale=params.guidance_scale, seed=params.seed,
    )
    return JobRecord(video=video, params=params, deadline_s=30.0, created_at=created_at, **changes)


def with_status(job: JobRecord, status: str, **video_changes) -> JobRecord:
    return job.model_copy(update={"video": job.video.model_copy(update={"status": status, **video_changes})})
