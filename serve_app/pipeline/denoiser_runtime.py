"""`DenoiserRuntime`: the DiT of one denoiser replica, set up per its `SpeedOptions`.

It sits above both optimize.py (what compile, FP8 and CUDA graphs do to a
module) and batching.py (the denoising loop): it builds the first and warms
up through the second, and the loop takes a runtime as an argument without
importing this module, so neither of them imports the other.

torch is imported inside methods, as everywhere in the pipeline: importing
this module (deployments/denoiser.py does) loads no torch until a replica
builds its model.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from serve_app.deadline import Deadline, StepGuard
from serve_app.params import GenerationParams
from serve_app.pipeline.batching import denoise_optimized
from serve_app.pipeline.optimize import (
    GraphedForward,
    attention_in_effect,
    compile_blocks,
    make_fp8_copy,
    uncompile_blocks,
)
from serve_app.pipeline.stages import PromptEmbeddings
from serve_app.settings.speed import EXACT, FastKnobs, SpeedOptions

log = logging.getLogger("ray.serve")


class DenoiserRuntime:
    """The DiT of one replica, set up per `SpeedOptions`, plus what requests may pick.

    `transformer_for(knobs)` returns the module a request runs: the bf16 DiT,
    or the FP8 copy. The step cache is switched on per request with diffusers'
    `enable_cache` / `disable_cache` around the loop (see batching.py).
    """

    def __init__(self, pipe, speed: SpeedOptions) -> None:
        import torch

        self.pipe = pipe
        self.speed = speed
        self.transformer = pipe.transformer
        self.dtype = pipe.transformer.dtype  # compute dtype of every copy's inputs
        self.device = pipe._execution_device
        self.fp8_transformer = None
        self.fp8_error: str | None = None
        self.fullgraph_error: str | None = None
        self.warmup_s: dict[str, float] = {}
        if speed.cudnn_benchmark:
            torch.backends.cudnn.benchmark = True
        if speed.fp8_weights:
            try:
                self.fp8_transformer = make_fp8_copy(self.transformer)
            except Exception as exc:  # noqa: BLE001 - reported in /healthz; requests asking for fp8 then get a clear error
                self.fp8_error = f"{type(exc).__name__}: {exc}"
                log.warning("FP8 copy of the DiT not available: %s", self.fp8_error)
        if speed.compile != "off":
            compile_blocks(self.transformer, speed.compile, speed.compile_dynamic)
            if self.fp8_transformer is not None:
                compile_blocks(self.fp8_transformer, speed.compile, speed.compile_dynamic)
        self.graphs = None
        if speed.cuda_graph_max_tokens and torch.cuda.is_available() and self.device.type == "cuda":
            self.graphs = GraphedForward(self.transformer, speed.cuda_graph_max_tokens)

    def transformer_for(self, knobs: FastKnobs):
        if knobs.fp8:
            if self.fp8_transformer is None:
                raise RuntimeError(
                    "fast knob fp8 asked for, but this replica holds no FP8 DiT "
                    f"(speed.fp8_weights={self.speed.fp8_weights}; {self.fp8_error or 'not loaded'})"
                )
            return self.fp8_transformer
        return self.transformer

    def describe(self) -> dict[str, Any]:
        return {
            "attention_backend": attention_in_effect(self.transformer),
            "compile": self.speed.compile,
            "cuda_graph_max_tokens": self.speed.cuda_graph_max_tokens,
            "cfg_batch": self.speed.cfg_batch,
            "fp8_available": self.fp8_transformer is not None,
            "fp8_error": self.fp8_error,
            "batching": self.speed.batching.enabled,
            "warmup_s": {k: round(v, 2) for k, v in self.warmup_s.items()},
            "fullgraph_error": self.fullgraph_error,
        }

    def warm_up(
        self,
        shapes: list[tuple[int, int, int]],
        text_len: int,
        steps: int = 2,
        guidance: tuple[float, ...] = (5.0, 1.0),
        image: bool = False,
    ) -> None:
        """Compile and run each (height, width, frames) bucket once, guided and unguided.

        With symbolic shapes the first bucket compiles the batch>1 graph and an
        unguided run the batch-1 one; later buckets only pay cuBLAS/cuDNN first
        calls and allocator growth, here instead of in a request. `image`: as an
        image-to-video job, whose per-token timesteps are another graph to compile.
        """
        import torch

        dim = self.transformer.config.text_dim
        zeros = torch.zeros(1, text_len, dim)
        knob_sets = [EXACT] + ([FastKnobs(fp8=True)] if self.fp8_transformer is not None else [])

        def run(height, width, frames, knobs, scale):
            params = GenerationParams(
                prompt="warm up",
                negative_prompt="",
                width=width,
                height=height,
                num_frames=frames,
                num_inference_steps=steps,
                guidance_scale=scale,
                fps=8,
                seed=0,
                preset="warmup",
            )
            guard = StepGuard(Deadline.after(3600), steps)
            scale = self.pipe.vae_scale_factor_spatial
            first_frame = torch.zeros(1, self.transformer.config.in_channels, 1, height // scale, width // scale)
            denoise_optimized(
                self,
                params,
                PromptEmbeddings(zeros, zeros if scale > 1 else None),
                guard,
                knobs=knobs,
                image_latents=first_frame if image else None,
            )

        for height, width, frames in shapes:
            started = time.perf_counter()
            for knobs in knob_sets:
                for scale in guidance:
                    try:
                        run(height, width, frames, knobs, scale)
                    except Exception as exc:
                        if self.speed.compile == "off" or self.fullgraph_error is not None:
                            raise
                        # A graph break somewhere (an attention backend dynamo cannot
                        # trace, say): compile again allowing breaks, and say so.
                        self.fullgraph_error = f"{type(exc).__name__}: {str(exc)[:300]}"
                        log.warning(
                            "fullgraph compile failed (%s); recompiling with graph breaks allowed", self.fullgraph_error
                        )
                        import torch

                        torch._dynamo.reset()
                        for tr in (self.transformer, self.fp8_transformer):
                            if tr is not None:
                                uncompile_blocks(tr)
                                compile_blocks(tr, self.speed.compile, self.speed.compile_dynamic, fullgraph=False)
                        run(height, width, frames, knobs, scale)
            bucket = f"{width}x{height}x{frames}" + (" image" if image else "")
            self.warmup_s[bucket] = time.perf_counter() - started
            log.info("warmed DiT bucket %s in %.1fs", bucket, self.warmup_s[bucket])
