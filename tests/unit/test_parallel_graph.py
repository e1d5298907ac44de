"""The graph's routing (serve_app/graph.py): a large job is denoised by the multi-GPU
deployment, whose stream ends with the video its ranks decoded (no VideoEncoder call); a
small one goes the usual way. The real StageGraph over stand-in stages (tests/helpers/local_graph.py)."""

from __future__ import annotations

import asyncio

import numpy as np

from serve_app.deadline import Deadline
from serve_app.graph import StageGraph
from serve_app.messages import DenoisedLatents, EncodedVideo, StepProgress
from serve_app.params import GenerationParams
from serve_app.routing import DenoiserRoutes
from tests.helpers.local_graph import LocalHandle


def params(width: int, height: int, frames: int) -> GenerationParams:
    return GenerationParams(
        prompt="a boat",
        negative_prompt="",
        width=width,
        height=height,
        num_frames=frames,
        num_inference_steps=3,
        guidance_scale=5.0,
        fps=8,
        seed=1,
        preset="preview",
    )


SMALL, LARGE = params(64, 64, 5), params(256, 256, 9)  # 8 and 192 latent tokens
ROUTES = DenoiserRoutes(min_latent_tokens=100, speedup=2.0)


def video(tag: int) -> EncodedVideo:
    return EncodedVideo(mp4=bytes([tag]), num_frames=5, width=64, height=64, fps=8, decode_s=0.1, encode_s=0.1)


class PromptEncoder:
    async def encode(self, prompt, negative_prompt, guidance_scale, deadline):
        return "embeddings"


class Denoiser:
    """Yields progress, then latents (the single-GPU denoiser) and, with `decodes`, the video too."""

    def __init__(self, decodes: bool) -> None:
        self.decodes = decodes
        self.jobs: list[tuple] = []

    async def denoise(self, params, embeddings, deadline, knobs=None, job_id=None, image_latents=None):
        self.jobs.append((params, embeddings, job_id))
        for step in range(1, params.num_inference_steps + 1):
            yield StepProgress(step, params.num_inference_steps)
        yield DenoisedLatents(None if self.decodes else np.zeros(1), elapsed_s=2.0, prompt_encode_s=0.1)
        if self.decodes:
            yield video(2)


class VideoEncoder:
    async def encode(self, latents, fps, deadline):
        return video(1)


def graph(with_parallel: bool = True):
    stages = {"single": Denoiser(decodes=False), "parallel": Denoiser(decodes=True), "encoder": VideoEncoder()}
    encoder = LocalHandle(stages["encoder"])
    built = StageGraph(
        LocalHandle(PromptEncoder()),
        LocalHandle(stages["single"]),
        encoder,
        parallel_denoiser=LocalHandle(stages["parallel"]) if with_parallel else None,
        routes=ROUTES,
    )
    return built, stages, encoder


def run(built: StageGraph, p: GenerationParams, steps: list):
    return asyncio.run(built.generate(p, Deadline.after(30), steps.append, job_id="video_1"))


def test_a_large_job_is_denoised_and_decoded_by_the_parallel_deployment():
    built, stages, encoder = graph()
    steps: list = []
    result = run(built, LARGE, steps)
    assert [job[0] for job in stages["parallel"].jobs] == [LARGE] and stages["single"].jobs == []
    # Its checkpoint name and the embeddings reach it as they reach the single-GPU denoiser.
    assert stages["parallel"].jobs[0][1:] == ("embeddings", "video_1")
    assert result.video == video(2) and "encode" not in encoder.calls  # the VideoEncoder was skipped
    assert result.denoise_s == 2.0 and [s.step for s in steps] == [1, 2, 3]


def test_a_small_job_goes_the_usual_way():
    built, stages, encoder = graph()
    result = run(built, SMALL, [])
    assert [job[0] for job in stages["single"].jobs] == [SMALL] and stages["parallel"].jobs == []
    assert result.video == video(1) and encoder.calls["encode"] == [video(1)]


def test_without_a_parallel_deployment_every_job_goes_to_the_single_gpu_denoiser():
    built, stages, _ = graph(with_parallel=False)
    assert run(built, LARGE, []).video == video(1)
    assert [job[0] for job in stages["single"].jobs] == [LARGE]
    assert built.routes == DenoiserRoutes()
