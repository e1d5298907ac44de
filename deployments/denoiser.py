"""Denoiser: the DiT loop, streaming per-step progress and ending with latents.

The loop runs on the stage's model thread. Progress crosses to the event
loop through an asyncio queue; cancellation (client gone, job cancelled)
crosses back through the `StepGuard`, which the loop reads after every step.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any, AsyncIterator

from ray import serve

from deployments.base import ModelStage
from serve_app import metrics
from serve_app.deadline import Deadline, StepGuard
from serve_app.errors import DeadlineExceeded, RequestCancelled
from serve_app.messages import DenoisedLatents, StepProgress
from serve_app.params import GenerationParams
from serve_app.pipeline.stages import PromptEmbeddings, denoise


@serve.deployment
class Denoiser(ModelStage):
    stage = "denoiser"

    def __init__(self, args: dict[str, Any]) -> None:
        super().__init__(args)
        self.outcomes: Counter[str] = Counter()
        self.last_run: dict[str, Any] = {}
        if self.args.warmup:
            self._warm_up()

    def _warm_up(self) -> None:
        import torch

        # Embeddings of the right shape without keeping a text encoder resident:
        # zeros are what an empty prompt's padding looks like anyway.
        dim = self.pipe.transformer.config.text_dim
        zeros = torch.zeros(1, self.profile.max_sequence_length, dim)
        params = GenerationParams(
            prompt="warm up", negative_prompt="", width=64, height=64, num_frames=5,
            num_inference_steps=2, guidance_scale=5.0, fps=8, seed=0, preset="warmup",
        )
        guard = StepGuard(Deadline.after(600), params.num_inference_steps)
        denoise(self.pipe, params, PromptEmbeddings(zeros, zeros), guard,
                max_sequence_length=self.profile.max_sequence_length)

    async def denoise(
        self, params: GenerationParams, embeddings: PromptEmbeddings, deadline: Deadline
    ) -> AsyncIterator[StepProgress | DenoisedLatents]:
        guard = StepGuard(deadline, params.num_inference_steps)
        loop = asyncio.get_running_loop()
        progress: asyncio.Queue[StepProgress] = asyncio.Queue()

        interval = self.args.progress_interval_s
        last_sent = [float("-inf")]

        step_started = [time.perf_counter()]

        def on_step(step: int, total: int) -> None:
            tick = time.perf_counter()
            metrics.step_time(tick - step_started[0])
            step_started[0] = tick
            now = time.monotonic()
            if step == total or now - last_sent[0] >= interval:
                last_sent[0] = now
                loop.call_soon_threadsafe(progress.put_nowait, StepProgress(step, total))

        def run():
            # Recorded here, on the model thread, so the step count is the one
            # the loop really stopped at, not the one seen when Ray cancelled.
            started = time.perf_counter()
            try:
                latents = denoise(self.pipe, params, embeddings, guard, on_step, self.profile.max_sequence_length)
            except BaseException as exc:
                self._record(exc, guard)
                raise
            self._record(None, guard)
            # numpy, not torch: the gateway relays this message and must never
            # import torch (a first torch import inside Ray's deserialisation
            # thread segfaulted the gateway on the GPU image).
            return DenoisedLatents(latents.float().numpy(), time.perf_counter() - started, embeddings.encode_s)

        work = asyncio.ensure_future(self.run_model(run))
        try:
            while not (work.done() and progress.empty()):
                next_step = asyncio.ensure_future(progress.get())
                await asyncio.wait({next_step, work}, return_when=asyncio.FIRST_COMPLETED)
                if next_step.done():
                    yield next_step.result()
                else:
                    next_step.cancel()
            result = work.result()
        except BaseException:
            # Cancelled by Ray (client gone), or the loop raised: make sure the
            # model thread stops at its next step boundary either way.
            guard.cancel()
            raise
        yield result

    def _record(self, exc: BaseException | None, guard: StepGuard) -> None:
        if exc is None:
            outcome = "completed"
        elif isinstance(exc, DeadlineExceeded):
            outcome = "deadline_exceeded"
        elif isinstance(exc, RequestCancelled):
            outcome = "cancelled"
        else:
            outcome = "failed"
        self.outcomes[outcome] += 1
        self.last_run = {"outcome": outcome, "steps_done": guard.steps_done, "total_steps": guard.total_steps}

    async def stats(self) -> dict[str, Any]:
        """Outcome counters and the last run's step count (for operators and tests)."""
        return {"outcomes": dict(self.outcomes), "last_run": dict(self.last_run)}
