"""Many requests' denoising loops stepped together (`StepBatcher`), on the model thread.

batching.py has one job's loop and `step_jobs`, which steps several jobs in one
forward; this module decides which jobs share a step: those of one shape and
knobs, admitted at step boundaries.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future

from serve_app.deadline import StepGuard
from serve_app.params import GenerationParams
from serve_app.pipeline.batching import DenoiseJob, StepCallback, start_job, step_cache, step_jobs
from serve_app.settings.speed import FastKnobs

log = logging.getLogger("ray.serve")


class StepBatcher:
    """Runs many requests' loops together: same-shape jobs share each step's forward.

    `submit` may be called from any thread; it returns a Future of the CPU
    latents. The loop (`run`) runs on the model thread: at every step boundary
    it admits waiting jobs, groups active ones by shape and knobs, and steps
    each group once, so groups of other shapes take turns step by step. A job
    with a step cache runs alone: its hook state is per forward, not per row.
    `start_loop` is called with a callable that must run `run` on the model
    thread when `submit` finds no loop running.
    """

    def __init__(self, runtime, max_requests: int, max_tokens: int) -> None:
        self.runtime = runtime
        self.max_requests = max_requests
        self.max_tokens = max_tokens
        self._lock = threading.Lock()
        self._waiting: list[DenoiseJob] = []
        self._running = False
        self.forwards = 0  # for tests and stats: DiT step calls made
        self.max_batch_seen = 0

    def submit(
        self,
        params: GenerationParams,
        embeddings,
        guard: StepGuard,
        on_step: StepCallback | None,
        knobs: FastKnobs,
        start_loop: Callable[[Callable[[], None]], None],
        on_latents=None,
        image_latents=None,
    ) -> Future:
        job_args = (params, embeddings, guard, on_step, knobs, on_latents, image_latents)
        future: Future = Future()
        with self._lock:
            self._waiting.append((job_args, future))
            start = not self._running
            self._running = True
        if start:
            start_loop(self.run)
        return future

    def _admit(self, active: list[DenoiseJob]) -> None:
        import torch

        with self._lock:
            waiting, self._waiting = self._waiting, []
        for (params, embeddings, guard, on_step, knobs, on_latents, image_latents), future in waiting:
            if guard.should_stop():
                _fail(future, guard)
                continue
            try:
                self.runtime.transformer_for(knobs)  # fails early when the knob cannot be served
                with torch.inference_mode():
                    job = start_job(
                        self.runtime.pipe,
                        params,
                        embeddings,
                        guard,
                        on_step,
                        knobs,
                        dtype=self.runtime.dtype,
                        on_latents=on_latents,
                        image_latents=image_latents,
                    )
            except BaseException as exc:  # noqa: BLE001 - handed to the job's future; its awaiter re-raises it
                future.set_exception(exc)
                continue
            job.done = future
            active.append(job)

    def run(self) -> None:
        """Step until no job is active or waiting (model thread)."""
        active: list[DenoiseJob] = []
        try:
            self._loop(active)
        except BaseException as exc:
            # Whatever broke the loop itself (not one group's forward) must not
            # leave a request waiting forever.
            with self._lock:
                waiting, self._waiting = self._waiting, []
                self._running = False
            for job in active:
                if not job.done.done():
                    job.done.set_exception(exc)
            for _, future in waiting:
                future.set_exception(exc)
            raise

    def _loop(self, active: list[DenoiseJob]) -> None:
        import torch

        while True:
            self._admit(active)
            if not active:
                with self._lock:
                    if not self._waiting:
                        self._running = False
                        return
                continue
            for group in self._groups(active):
                transformer = self.runtime.transformer_for(group[0].knobs)
                try:
                    with torch.inference_mode(), step_cache(transformer, group[0].knobs):
                        self._step_group(transformer, group)
                except BaseException as exc:  # a failed forward fails its group, not the loop
                    log.exception("denoising step failed for %d job(s)", len(group))
                    for job in group:
                        if not job.done.done():
                            job.done.set_exception(exc)
                        active.remove(job)
                    continue
                for job in group:
                    if job.finished:
                        job.done.set_result(job.output().cpu())
                        active.remove(job)
                    elif job.guard.should_stop():
                        _fail(job.done, job.guard)
                        active.remove(job)

    def _step_group(self, transformer, group: list[DenoiseJob]) -> None:
        if group[0].knobs.step_cache_threshold is not None:
            # The cache's hook state spans the whole loop of one request, so a
            # cached job runs all its remaining steps now, alone.
            job = group[0]
            while not job.finished and not job.guard.should_stop():
                step_jobs(transformer, [job], cfg_batch=self.runtime.speed.cfg_batch, runtime=self.runtime)
                self.forwards += 1
            return
        step_jobs(transformer, group, cfg_batch=self.runtime.speed.cfg_batch, runtime=self.runtime)
        self.forwards += 1
        self.max_batch_seen = max(self.max_batch_seen, len(group))

    def _groups(self, active: list[DenoiseJob]) -> list[list[DenoiseJob]]:
        groups: dict[tuple, list[DenoiseJob]] = {}
        out: list[list[DenoiseJob]] = []
        for job in active:
            tokens = job.params.latent_tokens
            if job.knobs.step_cache_threshold is not None or tokens > self.max_tokens:
                out.append([job])
                continue
            group = groups.setdefault(job.batch_key(), [])
            group.append(job)
            if len(group) == self.max_requests:
                out.append(group)
                groups[job.batch_key()] = []
        out.extend(g for g in groups.values() if g)
        return out


def _fail(future: Future, guard: StepGuard) -> None:
    try:
        guard.raise_stop()
    except BaseException as exc:  # noqa: BLE001 - handed to the job's future; its awaiter re-raises it
        future.set_exception(exc)
