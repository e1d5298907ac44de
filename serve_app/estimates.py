"""How long a generation will take, from what this service measured.

A job costs prompt encoding + steps x (one step at its shape) + decode and
mp4 encode. Step cost scales with latent tokens (and doubles with guidance);
decode cost with output pixels. Each measured job updates exponentially
weighted averages of those unit costs per shape, so estimates follow the
hardware actually serving; until a shape has been seen, the nearest measured
shape's unit cost (or the model profile's prior) stands in.

With a multi-GPU denoiser (serve_app/routing.py), a large job denoises on
that deployment, `routes.speedup` times faster than on one GPU until measured.
Step costs are kept in single-GPU units: a job measured on the parallel
replica is stored multiplied by the speed-up and estimated divided by it, so
its own shape's estimate is exactly what was measured there, and a shape not
seen yet borrows its neighbour's unit cost on the right deployment's scale.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from serve_app.params import GenerationParams
from serve_app.routing import DenoiserRoutes

# Weight of the newest measurement: recent enough to follow load and clocks,
# smooth enough that one outlier does not swing sync/async decisions.
EWMA_ALPHA = 0.3


def _passes(params: GenerationParams) -> int:
    return 2 if params.guidance_scale > 1.0 else 1


def _shape(params: GenerationParams) -> tuple:
    # Fast-tier runs (step cache, FP8) of a shape are timed apart from exact ones:
    # mixing them would make exact requests look cheaper than they are.
    # (FastKnobs is frozen, so hashable; None is the exact path.)
    return (params.width, params.height, params.num_frames, _passes(params), params.fast)


@dataclass
class _Unit:
    """Seconds per unit of work, smoothed."""

    value: float
    samples: int = 0

    def update(self, measured: float) -> None:
        self.value = measured if self.samples == 0 else (1 - EWMA_ALPHA) * self.value + EWMA_ALPHA * measured
        self.samples += 1


@dataclass
class StageTimeEstimator:
    prior_step_s_per_ktoken: float
    prior_decode_s_per_mpixel: float
    prior_prompt_encode_s: float = 0.05
    routes: DenoiserRoutes = field(default_factory=DenoiserRoutes)  # which deployment denoises a job
    _step: dict[tuple, _Unit] = field(default_factory=dict)  # s per 1k tokens per pass, single-GPU units
    _decode: dict[tuple, _Unit] = field(default_factory=dict)  # s per megapixel-frame
    _encode: _Unit | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @staticmethod
    def _ktoken_passes(params: GenerationParams) -> float:
        return params.latent_tokens / 1000 * _passes(params)

    @staticmethod
    def _mpixels(params: GenerationParams) -> float:
        return params.num_frames * params.width * params.height / 1e6

    def _nearest(self, table: dict[tuple, _Unit], params: GenerationParams, prior: float) -> float:
        shape = _shape(params)
        if shape in table:
            return table[shape].value
        if not table:
            return prior
        tokens = params.latent_tokens
        nearest = min(table, key=lambda s: abs((s[0] // 32) * (s[1] // 32) * ((s[2] - 1) // 4 + 1) - tokens))
        return table[nearest].value

    def stage_estimates(self, params: GenerationParams) -> tuple[float, float, float]:
        """Seconds of (prompt encoding, denoising, decode + mp4) for one job alone."""
        with self._lock:
            step = self._nearest(self._step, params, self.prior_step_s_per_ktoken)
            decode = self._nearest(self._decode, params, self.prior_decode_s_per_mpixel)
            encode = self._encode.value if self._encode else self.prior_prompt_encode_s
        return (
            encode,
            params.num_inference_steps * step * self._ktoken_passes(params) / self.routes.speedup_of(params),
            decode * self._mpixels(params),
        )

    def estimate(self, params: GenerationParams) -> float:
        """Seconds from the encoder's start to the finished mp4, for one job alone."""
        return sum(self.stage_estimates(params))

    def observe(self, params: GenerationParams, prompt_encode_s: float, denoise_s: float, decode_s: float) -> None:
        """Learn from a finished job's measured stage times."""
        with self._lock:
            shape = _shape(params)
            per_step = denoise_s / params.num_inference_steps / max(self._ktoken_passes(params), 1e-9)
            per_step *= self.routes.speedup_of(params)
            self._step.setdefault(shape, _Unit(per_step)).update(per_step)
            per_mpixel = decode_s / max(self._mpixels(params), 1e-9)
            self._decode.setdefault(shape, _Unit(per_mpixel)).update(per_mpixel)
            if self._encode is None:
                self._encode = _Unit(prompt_encode_s)
            self._encode.update(prompt_encode_s)
