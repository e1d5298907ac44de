"""Fakes for the Ray side of the service, so the API and the job runner run in-process."""

from __future__ import annotations

import numpy as np

from serve_app.graph import GraphResult
from serve_app.messages import EncodedVideo, StepProgress
from serve_app.video import encode_mp4


class FakeGenerator:
    """Stands in for StageGraph: reports progress, then returns a real mp4 of the asked shape."""

    def __init__(self) -> None:
        self.calls: list = []
        self.error: BaseException | None = None
        self.mid_run = None  # called after the first progress report, while the job runs

    async def generate(self, params, deadline, on_progress=None, job_id=None) -> GraphResult:
        self.calls.append((params, deadline))
        if self.error is not None:
            raise self.error
        if on_progress is not None:
            on_progress(StepProgress(step=1, total_steps=params.num_inference_steps))
        if self.mid_run is not None:
            self.mid_run()
        frames = np.full((params.num_frames, params.height, params.width, 3), 128, dtype=np.uint8)
        mp4 = encode_mp4(frames, params.fps)
        video = EncodedVideo(
            mp4=mp4,
            num_frames=params.num_frames,
            width=params.width,
            height=params.height,
            fps=params.fps,
            decode_s=0.01,
            encode_s=0.02,
        )
        return GraphResult(video=video, prompt_encode_s=0.1, denoise_s=0.5, total_s=0.6)
