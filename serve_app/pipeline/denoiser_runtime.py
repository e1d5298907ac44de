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

import functools
import logging
import time
from typing import Any

from serve_app.deadline import Deadline, StepGuard
from serve_app.params import warmup_params
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

    `transformer_for(knobs)` returns the module a request runs, one of
    `variants`, keyed by (fp8 linears, fp8 attention): the bf16 DiT, the FP8
    copy (speed.fp8_weights), and of each a weight-sharing variant whose
    self-attention runs in FP8 (speed.fp8_attention). The step cache is
    switched on per request with diffusers' `enable_cache` / `disable_cache`
    around the loop (see batching.py).
    """

    def __init__(self, pipe, speed: SpeedOptions) -> None:
        import torch

        self.pipe = pipe
        self.speed = speed
        self.transformer = pipe.transformer
        self.dtype = pipe.transformer.dtype  # compute dtype of every copy's inputs
        self.device = pipe._execution_device
        self.fp8_error: str | None = None
        self.fullgraph_error: str | None = None
        self.warmup_s: dict[str, float] = {}
        if speed.cudnn_benchmark:
            torch.backends.cudnn.benchmark = True
        self.variants: dict[tuple[bool, bool], Any] = {(False, False): self.transformer}
        if speed.fp8_weights:
            try:
                self.variants[(True, False)] = make_fp8_copy(self.transformer)
            except Exception as exc:  # noqa: BLE001 - reported in /healthz; requests asking for fp8 then get a clear error
                self.fp8_error = f"{type(exc).__name__}: {exc}"
                log.warning("FP8 copy of the DiT not available: %s", self.fp8_error)
        if speed.fp8_attention:
            self._add_fp8_attention_variants()
        if speed.compile != "off":
            for module in self.variants.values():
                compile_blocks(module, speed.compile, speed.compile_dynamic)
        self.graphs = None
        if speed.cuda_graph_max_tokens and torch.cuda.is_available() and self.device.type == "cuda":
            self.graphs = GraphedForward(self.transformer, speed.cuda_graph_max_tokens)

    @property
    def fp8_transformer(self):
        return self.variants.get((True, False))

    def _add_fp8_attention_variants(self) -> None:
        """A weight-sharing copy of each variant with FP8 self-attention; a host that cannot
        run the kernel fails the start here, with the reason (the profile asked for it)."""
        from serve_app.errors import ModelLoadError
        from serve_app.pipeline import fp8_attention

        attention = None
        if self.speed.fp8_attention_kernel == "reference":
            attention = functools.partial(fp8_attention.fp8_sdpa, kernel=fp8_attention.reference_fp8_sdpa)
        else:
            ok, why = fp8_attention.fp8_attention_supported()
            if not ok:
                raise ModelLoadError(f"speed.fp8_attention is on, but FP8 attention cannot run here: {why}")
        for (fp8, _), module in list(self.variants.items()):
            variant = fp8_attention.sharing_weights(module)
            fp8_attention.use_fp8_self_attention(variant, attention, self.speed.fp8_attention_min_tokens)
            self.variants[(fp8, True)] = variant

    def transformer_for(self, knobs: FastKnobs):
        variant = self.variants.get((knobs.fp8, knobs.fp8_attention))
        if variant is None:
            raise RuntimeError(
                f"fast knobs {knobs.model_dump(exclude_defaults=True)} asked for, but this replica holds no such "
                f"DiT (speed.fp8_weights={self.speed.fp8_weights}, speed.fp8_attention={self.speed.fp8_attention}; "
                f"{self.fp8_error or 'not loaded'})"
            )
        return variant

    def fast_knob_sets(self) -> list[FastKnobs]:
        """One FastKnobs per non-exact variant held (what warm-up compiles after the exact path)."""
        return [FastKnobs(fp8=fp8, fp8_attention=attention) for fp8, attention in self.variants if fp8 or attention]

    def describe(self) -> dict[str, Any]:
        return {
            "attention_backend": attention_in_effect(self.transformer),
            "compile": self.speed.compile,
            "cuda_graph_max_tokens": self.speed.cuda_graph_max_tokens,
            "cfg_batch": self.speed.cfg_batch,
            "fp8_available": self.fp8_transformer is not None,
            "fp8_error": self.fp8_error,
            "fp8_attention_available": (False, True) in self.variants,
            "fast_variants": [k.model_dump(exclude_defaults=True) for k in self.fast_knob_sets()],
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
        knob_sets: list[FastKnobs] | None = None,
    ) -> None:
        """Compile and run each (height, width, frames) bucket once, guided and unguided.

        With symbolic shapes the first bucket compiles the batch>1 graph and an
        unguided run the batch-1 one; later buckets only pay cuBLAS/cuDNN first
        calls and allocator growth, here instead of in a request. `image`: as an
        image-to-video job, whose per-token timesteps are another graph to compile.
        `knob_sets`: which variants (default: the exact one and every fast one held).
        """
        import torch

        dim = self.transformer.config.text_dim
        zeros = torch.zeros(1, text_len, dim)
        knob_sets = knob_sets if knob_sets is not None else [EXACT, *self.fast_knob_sets()]

        def run(height, width, frames, knobs, scale):
            params = warmup_params(height, width, frames, steps, scale)
            guard = StepGuard(Deadline.after(3600), steps)
            spatial = self.pipe.vae_scale_factor_spatial
            first_frame = torch.zeros(1, self.transformer.config.in_channels, 1, height // spatial, width // spatial)
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
                        for tr in self.variants.values():
                            uncompile_blocks(tr)
                            compile_blocks(tr, self.speed.compile, self.speed.compile_dynamic, fullgraph=False)
                        run(height, width, frames, knobs, scale)
            bucket = f"{width}x{height}x{frames}" + (" image" if image else "")
            self.warmup_s[bucket] = time.perf_counter() - started
            log.info("warmed DiT bucket %s in %.1fs", bucket, self.warmup_s[bucket])
