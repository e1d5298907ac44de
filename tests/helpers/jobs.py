"""Job records for tests: a valid queued job from a number, and a copy with another status."""

from __future__ import annotations

from serve_app.jobs.model import JobRecord
from serve_app.params import GenerationParams


def job_id(n: int) -> str:
    return f"video_{n:032x}"


def make_job(n: int, created_at: float = 1.0, status: str = "queued", **changes) -> JobRecord:
    params = GenerationParams(
        prompt=f"a boat {n}",
        negative_prompt="",
        width=64,
        height=64,
        num_frames=5,
        num_inference_steps=2,
        guidance_scale=1.0,
        fps=8,
        seed=n,
        preset="preview",
    )
    job = JobRecord.new(job_id(n), "wan2.2-ti2v-tiny", params, created_at, 30.0, **changes)
    job.video.status = status
    return job


def with_status(job: JobRecord, status: str, **video_changes) -> JobRecord:
    return job.model_copy(update={"video": job.video.model_copy(update={"status": status, **video_changes})})
