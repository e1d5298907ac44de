"""Denoiser: the DiT loop, streaming per-step progress and ending with latents.

The loop runs on the stage's model thread. Progress crosses to the event
loop through an asyncio queue; cancellation (client gone, job cancelled)
crosses back through the `StepGuard`, which the loop reads after every step.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from deployments.base import ModelStage
from serve_app import metrics
from serve_app.deadline import Deadline, StepGuard
from serve_app.errors import DeadlineExceeded, RequestCancelled
from serve_app.messages import DenoisedLatents, ImageLatents, StepProgress
from serve_app.params import GenerationParams, warmup_params
from serve_app.pipeline.batching import denoise_optimized
from serve_app.pipeline.checkpoint import LoopCheckpoints, fingerprint, sweep
from serve_app.pipeline.denoiser_runtime import DenoiserRuntime
from serve_app.pipeline.stages import PromptEmbeddings, denoise
from serve_app.pipeline.step_batcher import StepBatcher
from serve_app.preview import preview_maker
from serve_app.settings.speed import EXACT, FastKnobs

log = logging.getLogger("ray.serve")


@serve.deployment
class Denoiser(ModelStage):
    stage = "denoiser"

    def __init__(self, args: dict[str, Any]) -> None:
        super().__init__(args)
        self.outcomes: Counter[str] = Counter()
        self.last_run: dict[str, Any] = {}
        # Fitted (or read from the data dir) before warm-up; None when previews are off.
        self.previews = preview_maker(self.args.previews, self.profile, self.args.data_path)
        # The project's loop (profile.speed): compiled blocks, no host syncs per
        # step, batched guidance, FP8 copy and step cache for fast tiers; None
        # runs WanPipeline.__call__ as it is.
        speed = self.profile.speed
        self.runtime = DenoiserRuntime(self.pipe, speed) if speed.optimized_loop else None
        self.batcher = None
        if self.runtime is not None and speed.batching.enabled:
            self.batcher = StepBatcher(self.runtime, speed.batching.max_requests, speed.batching.max_tokens)
        self._batch_loops: set[asyncio.Future] = set()
        swept = sweep(self.args.checkpoint_path, self.args.checkpoint_ttl_s)
        if swept:
            log.info("removed %d stale denoising checkpoints", swept)
        if self.args.warmup:
            self._warm_up()

    def _warm_up(self) -> None:
        import torch

        # Embeddings of the right shape without keeping a text encoder resident:
        # zeros are what an empty prompt's padding looks like anyway.
        dim = self.pipe.transformer.config.text_dim
        zeros = torch.zeros(1, self.profile.max_sequence_length, dim)
        params = warmup_params(64, 64, 5)
        guard = StepGuard(Deadline.after(600), params.num_inference_steps)
        embeddings = PromptEmbeddings(zeros, zeros)
        if self.runtime is None:
            steps = [
                (
                    "denoise 64x64",
                    functools.partial(
                        denoise,
                        self.pipe,
                        params,
                        embeddings,
                        guard,
                        max_sequence_length=self.profile.max_sequence_length,
                    ),
                )
            ]
            self.warm_up(steps, before_ready=1)
            return
        steps = [("denoise 64x64", functools.partial(denoise_optimized, self.runtime, params, embeddings, guard))]
        # Compile and first-run costs of the serving shapes, paid here, not by requests:
        # each shape guided (batch 2, what requests run), later unguided (batch 1).
        catalog = self.args.preset_catalog()
        presets = [catalog.presets[name] for name in self.profile.speed.warmup_presets]
        guided, unguided = [], []
        for p in presets:
            shape = [(p.height, p.width, p.num_frames)]
            for scale, into in ((5.0, guided), (1.0, unguided)):
                into.append(
                    (
                        f"denoise {p.height}x{p.width}x{p.num_frames} guidance {scale:g}",
                        functools.partial(
                            self.runtime.warm_up,
                            shape,
                            self.profile.max_sequence_length,
                            guidance=(scale,),
                            knob_sets=[EXACT],
                        ),
                    )
                )
        # Image to video's per-token timesteps are another graph: warmed after the replica is
        # ready (guided only), so text requests never wait for them.
        images = [
            (
                f"denoise {p.height}x{p.width}x{p.num_frames} image",
                functools.partial(
                    self.runtime.warm_up,
                    [(p.height, p.width, p.num_frames)],
                    self.profile.max_sequence_length,
                    guidance=(5.0,),
                    image=True,
                    knob_sets=[EXACT],
                ),
            )
            for p in presets
        ]
        # The fast variants (FP8 linears / attention) compile after the replica is ready:
        # exact requests never wait for them (the first fast request of a shape may).
        fast_knobs = self.runtime.fast_knob_sets()
        fast = [
            (
                f"denoise {p.height}x{p.width}x{p.num_frames} fast",
                functools.partial(
                    self.runtime.warm_up,
                    [(p.height, p.width, p.num_frames)],
                    self.profile.max_sequence_length,
                    guidance=(5.0,),
                    knob_sets=fast_knobs,
                ),
            )
            for p in presets
            if fast_knobs
        ]
        ready = self.presets_before_ready()
        # The replica is ready after the first `ready` guided shapes (all of them unless
        # speed.warmup_in_background); unguided requests are rare, so their graph warms later.
        before = guided[:ready] + (unguided if ready == len(presets) else [])
        after = guided[ready:] + ([] if ready == len(presets) else unguided) + fast + images
        self.warm_up(steps + before + after, before_ready=1 + len(before))

    def _checkpoints(self, job_id: str | None, params: GenerationParams, knobs: FastKnobs) -> LoopCheckpoints | None:
        """The job's checkpoint file, where this replica's loop can save and resume one."""
        if not job_id or not self.args.checkpoint_every_s or self.runtime is None or self.batcher is not None:
            return None
        request = fingerprint(self.profile.identity, params.model_dump_json(), knobs.model_dump_json())
        return LoopCheckpoints(self.args.checkpoint_path, job_id, request, self.args.checkpoint_every_s)

    async def denoise(
        self,
        params: GenerationParams,
        embeddings: PromptEmbeddings,
        deadline: Deadline,
        knobs: FastKnobs | None = None,
        job_id: str | None = None,
        image_latents: ImageLatents | None = None,
    ) -> AsyncIterator[StepProgress | DenoisedLatents]:
        """`knobs`: a fast tier's quality-changing speed-ups (settings.speed.FastKnobs); None is the exact path.
        `job_id`: names the job's loop checkpoint (`checkpoint_every_s`), resumed if an earlier run saved one.
        `image_latents`: image to video, the first frame the video encoder encoded; latent frame 0 is held to it."""
        knobs = EXACT if knobs is None else knobs
        condition = None if image_latents is None else image_latents.latents
        checkpoints = self._checkpoints(job_id, params, knobs)
        if self.runtime is None and not knobs.exact:
            raise ValueError(f"fast knobs {knobs} need profile speed.optimized_loop: true on this model")
        guard = StepGuard(deadline, params.num_inference_steps)
        loop = asyncio.get_running_loop()
        progress: asyncio.Queue[StepProgress] = asyncio.Queue()

        interval = self.args.progress_interval_s
        last_sent = [float("-inf")]

        step_started = [time.perf_counter()]
        previews = self.previews(params.num_inference_steps) if self.previews else None

        def on_step(step: int, total: int) -> None:
            tick = time.perf_counter()
            metrics.step_time(tick - step_started[0])
            step_started[0] = tick
            now = time.monotonic()
            preview = previews.take() if previews else None
            # A step with a preview is always sent: previews have their own cadence.
            if preview or step == total or now - last_sent[0] >= interval:
                last_sent[0] = now
                loop.call_soon_threadsafe(progress.put_nowait, StepProgress(step, total, preview))
            self.step_done(step, total)  # health-check progress, then any injected step delay or gate (tests)

        def run():
            # Recorded here, on the model thread, so the step count is the one
            # the loop really stopped at, not the one seen when Ray cancelled.
            started = time.perf_counter()
            try:
                on_latents = previews.on_latents if previews else None
                if self.runtime is None:
                    latents = denoise(
                        self.pipe,
                        params,
                        embeddings,
                        guard,
                        on_step,
                        self.profile.max_sequence_length,
                        on_latents=on_latents,
                        image_latents=condition,
                    )
                else:
                    latents = denoise_optimized(
                        self.runtime,
                        params,
                        embeddings,
                        guard,
                        on_step,
                        knobs,
                        on_latents=on_latents,
                        checkpoints=checkpoints,
                        image_latents=condition,
                    )
            except BaseException as exc:
                self._record(exc, guard, checkpoints)
                raise
            self._record(None, guard, checkpoints)
            # numpy, not torch: the gateway relays this message and must never
            # import torch (a first torch import inside Ray's deserialisation
            # thread segfaulted the gateway on the GPU image).
            return DenoisedLatents(latents.float().numpy(), time.perf_counter() - started, embeddings.encode_s)

        if self.batcher is not None:
            # Same-shape requests share forwards; the loop runs on the model thread.
            work = asyncio.ensure_future(
                self._run_batched(
                    params, embeddings, guard, on_step, knobs, previews.on_latents if previews else None, condition
                )
            )
        else:
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

    async def _run_batched(
        self, params, embeddings, guard, on_step, knobs, on_latents, image_latents=None
    ) -> DenoisedLatents:
        started = time.perf_counter()
        future = self.batcher.submit(
            params,
            embeddings,
            guard,
            on_step,
            knobs,
            self._start_batch_loop,
            on_latents=on_latents,
            image_latents=image_latents,
        )
        try:
            latents = await asyncio.wrap_future(future)
        except BaseException as exc:
            self._record(exc, guard)
            raise
        self._record(None, guard)
        return DenoisedLatents(latents.float().numpy(), time.perf_counter() - started, embeddings.encode_s)

    def _start_batch_loop(self, run) -> None:
        # Called by the batcher when a request finds no loop running; the task
        # is kept so it is not collected while it runs.
        task = asyncio.ensure_future(self.run_model(run))
        self._batch_loops.add(task)
        task.add_done_callback(self._batch_loops.discard)

    async def describe(self) -> dict[str, Any]:
        """ModelStage's description, with the attention kernel really in effect and the speed set-up."""
        out = await super().describe()
        if self.runtime is not None:
            speed = self.runtime.describe()
            out["attention_backend"] = f"{self.profile.attention_backend} ({speed['attention_backend']})"
            out["speed"] = speed
        return out

    def _record(self, exc: BaseException | None, guard: StepGuard, checkpoints: LoopCheckpoints | None = None) -> None:
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
        if checkpoints is not None:
            self.last_run.update(resumed_from_step=checkpoints.resumed_from, checkpoints_saved=checkpoints.saved)
            if checkpoints.resumed_from:
                self.outcomes["resumed"] += 1

    async def stats(self) -> dict[str, Any]:
        """Outcome counters and the last run's step count (for operators and tests)."""
        out = {"outcomes": dict(self.outcomes), "last_run": dict(self.last_run)}
        if self.batcher is not None:
            out["batching"] = {"forwards": self.batcher.forwards, "max_batch_seen": self.batcher.max_batch_seen}
        return out
