"""Speed options of a model profile (`speed:`) and the per-request fast knobs.

`SpeedOptions` (a profile's `speed:` block) is what a replica is set up with:
regional compile, the shape buckets it warms at start, CUDA graphs for small
buckets, the decode mode, whether an FP8 copy of the DiT is held. `FastKnobs`
is what one request may ask for on top, each with a quality cost: a step cache
and FP8 weights. A degradation tier names FastKnobs values; the denoiser gets
them per request (`Denoiser.denoise(..., knobs=...)`). What they do to the DiT
is serve_app/pipeline/optimize.py.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from serve_app.settings.base import StrictModel


class FastKnobs(StrictModel):
    """Quality-changing speed-ups one request may ask for (a degradation tier sets them).

    Measured costs on the 5B architecture with random weights are in
    bench/results/gpu-*.json and docs/performance.md.
    """

    step_cache_threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="First-Block-Cache threshold (diffusers FirstBlockCacheConfig): a step "
        "reuses the last full step's residual when the first block's output changed by less than this relative "
        "amount. None turns the cache off; higher skips more steps at more quality cost. The right value depends "
        "on the weights: on the random-weight 5B nothing was skipped up to 0.3 and almost everything at 0.5.",
    )
    fp8: bool = Field(
        False,
        description="Run the DiT's block linears in FP8 (torchao dynamic activation + weight, per-row "
        "scales). Needs a replica whose profile has speed.fp8_weights: true and a card with FP8 (H100/H200).",
    )
    fp8_attention: bool = Field(
        False,
        description="Run the DiT blocks' self-attention in FP8 (cuDNN's FP8 SDPA, per-tensor scales from each "
        "call's own amax; serve_app/pipeline/fp8_attention.py). On an H100 the 720p guided forward took 1.56 s vs "
        "1.81 s exact, with every layer's attention output at cosine >= 0.998 of the exact one "
        "(bench/results/attention-*.json). Needs a replica whose profile has speed.fp8_attention: true.",
    )

    @property
    def exact(self) -> bool:
        """True when nothing here changes the pixels."""
        return self.step_cache_threshold is None and not self.fp8 and not self.fp8_attention


EXACT = FastKnobs()


class BatchingOptions(StrictModel):
    """Cross-request batching in the denoiser: same-shape requests share one forward."""

    enabled: bool = Field(
        False,
        description="Batch concurrent same-shape requests along the batch axis, step-aligned; a request "
        "joins at the next step boundary. Needs stages.denoiser.max_ongoing_requests > 1.",
    )
    max_requests: int = Field(4, ge=1, le=64, description="Most requests in one forward.")
    max_tokens: int = Field(
        4096,
        ge=1,
        description="Only requests with at most this many latent tokens are batched: above it one "
        "request already fills the GPU and batching only delays the first request.",
    )


class SpeedOptions(StrictModel):
    """How a replica runs the DiT and the VAE (exact unless a request's FastKnobs say otherwise)."""

    optimized_loop: bool = Field(
        True,
        description="Run the project's denoising loop (no host syncs per step, guidance batched, "
        "cross-request batching possible) instead of WanPipeline.__call__. Same result within bf16 rounding.",
    )
    compile: Literal["off", "default", "max-autotune-no-cudagraphs"] = Field(
        "off",
        description="Regional torch.compile of the DiT blocks (one compiled function shared by all blocks).",
    )
    compile_dynamic: bool = Field(
        True,
        description="Compile with symbolic shapes: one graph serves every resolution and batch size > 1, "
        "so a new size costs no recompile.",
    )
    cfg_batch: bool = Field(
        True,
        description="Run classifier-free guidance as one batch-2 forward instead of two batch-1 forwards.",
    )
    cuda_graph_max_tokens: int = Field(
        0,
        ge=0,
        description="Replay the whole DiT forward as a CUDA graph for buckets of at most this many "
        "latent tokens (captured at warm-up); 0 turns graphs off. Pays only where launches dominate.",
    )
    warmup_presets: list[str] = Field(
        default_factory=list,
        description="Presets whose shapes are compiled and run once at replica start, so no "
        "request pays compilation or first-run costs.",
    )
    warmup_in_background: bool = Field(
        False,
        description="Warm only the first of warmup_presets before the replica reports ready; the others "
        "warm afterwards on the model thread, one step at a time between requests (a request arriving then "
        "waits for one step at most: one preset's decode, or 2 DiT steps at its shape). Restarts and scale-ups "
        "serve sooner; the first request of a not-yet-warm shape pays its first-run costs.",
    )
    cudnn_benchmark: bool = Field(
        False,
        description="Let cuDNN time its convolution algorithms per shape (VAE decode); warmed per preset.",
    )
    decode: Literal["streaming", "oneshot", "tiled"] = Field(
        "streaming",
        description="'streaming': decode latent frame by latent frame and hand frames to the mp4 "
        "encoder as they come (overlapped); 'oneshot': WanPipeline's decode; 'tiled': vae.enable_tiling().",
    )
    tile_on_oom: bool = Field(True, description="Retry a decode that runs out of GPU memory with tiling.")
    vae_channels_last: bool = Field(
        False,
        description="Store the VAE's Conv3d weights channels-last (NDHWC), so cuDNN runs its "
        "channels-last kernels; same math, other kernels.",
    )
    text_encoder_compile: bool = Field(
        False,
        description="Regional torch.compile of the text encoder's blocks (UMT5; the prompt encoder). "
        "Prompts are padded to one length, so one static graph; compiled at the replica's warm-up encode.",
    )
    vae_fused_norms: bool = Field(
        False,
        description="Compile the VAE decoder's RMS norms, each fused with the SiLU after it in residual "
        "blocks, into one kernel (eager runs ~8 passes over every activation per norm). Same math in fp32, other "
        "rounding; compiled at the first decode of a shape, so warm the presets.",
    )
    fp8_weights: bool = Field(
        False,
        description="Hold an FP8 copy of the DiT (about +5 GB) so requests with fast knob fp8 can use it.",
    )
    fp8_attention: bool = Field(
        False,
        description="Hold a variant of the DiT whose self-attention runs in FP8, for requests with fast knob "
        "fp8_attention. It shares the bf16 DiT's weights (no extra memory) and compiles at warm-up (~7 s at "
        "720p). A card or host that cannot run it (not Hopper, or nvidia-cudnn-frontend missing: pip install "
        "'wan-serve[fp8-attention]') fails the replica's start with the reason.",
    )
    fp8_attention_kernel: Literal["cudnn", "reference"] = Field(
        "cudnn",
        description="'cudnn': cuDNN's FP8 SDPA (Hopper). 'reference': the same arithmetic in plain torch "
        "(reference_fp8_sdpa, fp32 scores): for CPU tests of the fast path; slow and memory-hungry.",
    )
    fp8_attention_min_tokens: int = Field(
        4096,
        ge=0,
        description="Requests with fewer latent tokens than this attend in bf16 even with fast knob fp8_attention: "
        "on an H100 the FP8 kernel's quantize passes cost more than it saves at 1,500 tokens (preview), while "
        "at 8,190 (832x480x81) and 27,280 (720p) it is faster.",
    )
    batching: BatchingOptions = Field(default_factory=BatchingOptions, description="Cross-request batching.")
    fast: FastKnobs = Field(
        default_factory=FastKnobs,
        description="The knobs of `quality: fast` requests on this model, and the reference values for a "
        "fast degradation tier. Knobs that need a variant of the DiT (fp8, fp8_attention) need it held "
        "(fp8_weights, fp8_attention).",
    )

    @field_validator("warmup_presets")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"warmup_presets={v} names a preset twice")
        return v

    @model_validator(mode="after")
    def _fast_knobs_held(self) -> SpeedOptions:
        missing = self.missing_for(self.fast)
        if missing:
            raise ValueError(f"fast={self.fast.model_dump(exclude_defaults=True)} needs {missing}")
        return self

    def missing_for(self, knobs: FastKnobs) -> str | None:
        """What this replica set-up lacks to run `knobs` (None: it can run them)."""
        lacking = [
            f"speed.{held}: true"
            for wanted, held in ((knobs.fp8, "fp8_weights"), (knobs.fp8_attention, "fp8_attention"))
            if wanted and not getattr(self, held)
        ]
        if (knobs.fp8 or knobs.fp8_attention or knobs.step_cache_threshold is not None) and not self.optimized_loop:
            lacking.append("speed.optimized_loop: true")
        return ", ".join(lacking) or None
