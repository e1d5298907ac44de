"""`RankWorker`: one rank of a multi-GPU denoiser replica, the body of one Ray actor.

deployments/parallel_denoiser.py starts one per GPU of its placement group
and calls the COLLECTIVE methods (`warm_up`, `denoise`, `decode`,
`denoise_and_decode`) on every rank at once; rank 0's answer is the replica's.
`progress`, `cancel` and `ping` answer from another thread of the actor while
a collective runs (the actor is threaded, max_concurrency > 1).

A plain class, so tests and benchmarks run ranks as processes without Ray.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

from serve_app.deadline import Deadline, StepGuard
from serve_app.messages import DenoisedLatents, EncodedVideo
from serve_app.params import GenerationParams, warmup_params
from serve_app.pipeline.checkpoint import LoopCheckpoints, fingerprint
from serve_app.pipeline.parallel.group import ParallelGroup
from serve_app.pipeline.parallel.loop import denoise_parallel, latent_tokens, split_evenly
from serve_app.pipeline.stages import PromptEmbeddings
from serve_app.settings.speed import EXACT, FastKnobs

log = logging.getLogger("ray.serve")


def free_port() -> int:
    """A TCP port free on this node now (rank 0's, for the group's rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


class ParallelRuntime:
    """The DiT of one rank, compiled and split over its guidance half.

    Two weight-sharing copies: one split evenly (plain Ulysses), for token
    counts the half's rank count divides (every 720p and 480p preset), and one
    in diffusers' any-length mode for the rest, which costs a small extra
    collective in every attention call. Exact path only: the FP8 copies and
    the step cache of single-GPU replicas are not built here, so fast-tier
    requests stay on single-GPU replicas (the gateway routes them there).
    CUDA graphs are off: a captured graph would freeze the collectives' buffers.
    """

    def __init__(self, pipe, speed, group: ParallelGroup) -> None:
        from serve_app.pipeline.fp8_attention import sharing_weights
        from serve_app.pipeline.optimize import compile_blocks

        self.pipe = pipe
        self.speed = speed
        self.group = group
        self.graphs = None
        self.transformer = pipe.transformer
        self.dtype = pipe.transformer.dtype
        self.any_length = sharing_weights(self.transformer) if group.layout.ulysses_degree > 1 else None
        for module in (self.transformer, self.any_length):
            if module is None:
                continue
            if speed.compile != "off":
                # Graph breaks allowed from the start: single-GPU replicas recompile without
                # fullgraph on a failure, which here would drop the split's hooks (they wrap
                # the compiled block forward, so the compile goes first).
                compile_blocks(module, speed.compile, speed.compile_dynamic, fullgraph=False)
            group.enable_context_parallel(module, any_length=module is self.any_length)

    def transformer_for(self, knobs: FastKnobs, tokens: int):
        if not knobs.exact:
            raise ValueError(
                f"fast knobs {knobs.model_dump(exclude_defaults=True)} are not available on a multi-GPU replica "
                "(exact path only); fast-tier requests run on single-GPU replicas"
            )
        if self.any_length is None or split_evenly(tokens, self.group.layout.ulysses_degree):
            return self.transformer
        return self.any_length


class RankWorker:
    def __init__(
        self,
        args: dict[str, Any],
        rank: int,
        world: int,
        master_addr: str,
        master_port: int,
        timeout_s: float = 300.0,
        cfg_parallel: bool = True,
        memory_fraction: float | None = None,
    ) -> None:
        """`memory_fraction`: the rank's share of its card (its bundle's GPU), capped before the
        weights load as single-GPU replicas cap theirs, so a rank never crowds out the
        fractional replicas beside it; None leaves the allocator uncapped."""
        from serve_app.config import ServiceArgs
        from serve_app.gpu_share import cap_gpu_memory
        from serve_app.pipeline.loading import load_pipeline, resolve_device
        from serve_app.pipeline.optimize import use_compile_cache

        started = time.perf_counter()
        self.args = ServiceArgs.model_validate(args)
        self.profile = self.args.model_profile()
        self.rank = rank
        cache = self.args.compile_cache_path
        self.compile_cache = use_compile_cache(cache) if cache is not None else {}
        self.memory_fraction = cap_gpu_memory(memory_fraction, resolve_device(self.profile))
        self.pipe = load_pipeline(self.profile, self.args.data_path, "parallel_denoiser")
        heads = self.pipe.transformer.config.num_attention_heads
        self.group = ParallelGroup.join(rank, world, master_addr, master_port, timeout_s, heads, cfg_parallel)
        self.runtime = ParallelRuntime(self.pipe, self.profile.speed, self.group)
        self.load_s = time.perf_counter() - started
        self.warmup_s: dict[str, float] = {}
        self._lock = threading.Lock()
        self._guard: StepGuard | None = None
        self._step, self._total, self._running = 0, 0, False
        self._last_step_at = time.monotonic()
        log.info("rank %d/%d ready in %.1fs on %s", rank, world, self.load_s, self.group.device)

    # --- collective calls ------------------------------------------------------------------

    def warm_up(self, shapes: list[tuple[int, int, int]] | None = None) -> dict[str, float]:
        """Compile and first-run each (height, width, frames) bucket, guided, 2 steps, and its
        parallel VAE decode. Default: the profile's speed.warmup_presets."""
        import torch

        if shapes is None:
            catalog = self.args.preset_catalog()
            presets = [catalog.presets[name] for name in self.profile.speed.warmup_presets]
            shapes = [(p.height, p.width, p.num_frames) for p in presets]
        dim = self.pipe.transformer.config.text_dim
        zeros = torch.zeros(1, self.profile.max_sequence_length, dim)
        for height, width, frames in shapes:
            started = time.perf_counter()
            params = warmup_params(height, width, frames)
            latents = denoise_parallel(
                self.runtime,
                self.group,
                params,
                PromptEmbeddings(zeros, zeros),
                StepGuard(Deadline.after(3600), params.num_inference_steps),
            )
            # And its decode: the convolutions' first calls at this size (cuDNN picks
            # algorithms per shape) are paid here, not by the first request.
            self.decode(latents, 8)
            self.warmup_s[f"{width}x{height}x{frames}"] = time.perf_counter() - started
        return dict(self.warmup_s)

    def denoise(
        self,
        params: GenerationParams,
        embeddings: PromptEmbeddings,
        deadline: Deadline,
        knobs: FastKnobs | None = None,
        job_id: str | None = None,
        image_latents: Any = None,
    ) -> DenoisedLatents | None:
        """This rank's share of one request's loop; rank 0 returns the latents (numpy), others None."""
        started = time.perf_counter()
        latents = self._denoise(params, embeddings, deadline, knobs, job_id, image_latents)
        if self.rank != 0:
            return None
        return DenoisedLatents(latents.float().numpy(), time.perf_counter() - started, embeddings.encode_s)

    def decode(self, latents: Any, fps: int) -> EncodedVideo | None:
        """The VAE decode spread over the ranks (vae_decode.py; every rank passes the same
        latents); rank 0 writes the mp4 and returns it, the others None."""
        from serve_app.pipeline.parallel.vae_decode import decode_to_mp4_parallel

        video = decode_to_mp4_parallel(self.pipe, latents, fps, self.group)
        if video is None:
            return None
        return EncodedVideo.of(video, fps)

    def denoise_and_decode(
        self,
        params: GenerationParams,
        embeddings: PromptEmbeddings,
        deadline: Deadline,
        knobs: FastKnobs | None = None,
        job_id: str | None = None,
        image_latents: Any = None,
    ) -> tuple[DenoisedLatents, EncodedVideo] | None:
        """Both in one call: the loop leaves the same latents on every rank (loop.py), so each
        decodes its share of its own copy and nothing is sent. Rank 0 returns both messages."""
        started = time.perf_counter()
        latents = self._denoise(params, embeddings, deadline, knobs, job_id, image_latents)
        elapsed = time.perf_counter() - started
        video = self.decode(latents, params.fps)
        if self.rank != 0:
            return None
        assert video is not None
        return DenoisedLatents(latents.float().numpy(), elapsed, embeddings.encode_s), video

    def _denoise(self, params, embeddings, deadline, knobs, job_id, image_latents):
        knobs = EXACT if knobs is None else knobs
        guard = StepGuard(deadline, params.num_inference_steps)
        # An ImageLatents message, or its array.
        condition = None if image_latents is None else getattr(image_latents, "latents", image_latents)
        checkpoints = None
        if job_id and self.args.checkpoint_every_s:
            # The single-GPU denoiser's fingerprint: a job may resume on either kind of replica.
            request = fingerprint(self.profile.identity, params.model_dump_json(), knobs.model_dump_json())
            checkpoints = LoopCheckpoints(self.args.checkpoint_path, job_id, request, self.args.checkpoint_every_s)
        with self._lock:
            self._guard, self._step, self._total, self._running = guard, 0, params.num_inference_steps, True
            self._last_step_at = time.monotonic()
        try:
            return denoise_parallel(
                self.runtime,
                self.group,
                params,
                embeddings,
                guard,
                self._on_step,
                knobs,
                checkpoints=checkpoints,
                image_latents=condition,
            )
        finally:
            with self._lock:
                self._running, self._guard = False, None

    # --- answers while a collective runs (other actor threads) ----------------------------------

    def _on_step(self, step: int, total: int) -> None:
        with self._lock:
            self._step, self._total = step, total
            self._last_step_at = time.monotonic()

    def progress(self) -> dict[str, Any]:
        with self._lock:
            return {"step": self._step, "total": self._total, "running": self._running}

    def cancel(self) -> None:
        """The running loop stops at its next step on every rank (the ranks agree each step)."""
        with self._lock:
            if self._guard is not None:
                self._guard.cancel()

    def ping(self) -> dict[str, Any]:
        import torch

        with self._lock:
            out: dict[str, Any] = {
                "rank": self.rank,
                "device": str(self.group.device),
                "step": self._step,
                "running": self._running,
                "seconds_since_step": round(time.monotonic() - self._last_step_at, 3),
            }
        if self.group.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.group.device)
            out["gpu_memory"] = {
                "allocated_gb": round(torch.cuda.memory_allocated(self.group.device) / 1e9, 2),
                "free_gb": round(free / 1e9, 2),
                "total_gb": round(total / 1e9, 2),
            }
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.profile.identity,
            **self.group.describe(),
            "load_s": round(self.load_s, 3),
            "gpu_memory_fraction": self.memory_fraction,
            "warmup_s": {k: round(v, 2) for k, v in self.warmup_s.items()},
            "compile": self.profile.speed.compile,
            "compile_cache": self.compile_cache,
        }

    def close(self) -> None:
        self.group.close()


__all__ = ["ParallelRuntime", "RankWorker", "free_port", "latent_tokens"]
