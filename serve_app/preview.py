"""Low-resolution previews while denoising: latents -> RGB by a fitted linear map.

A full VAE decode per preview would cost as much as a denoising step on the
5B, so previews use a per-channel linear projection of the 48 latent channels
to RGB (plus a bias), one pixel per latent cell. There are no published
factors we could rely on for every profile (the tiny and random profiles have
random weights), so the projection is fitted: a few random latents are decoded
with the profile's own VAE at a small size, the frames are averaged down to
the latent grid, and a ridge least-squares fit maps latent cells to colours.
The fit is cached on disk per model, so only the first replica on a host pays.

How good a linear map can be depends on the VAE: trained VAEs decode
low-frequency content nearly linearly (which is why such projections are
common), while the tiny profile's random-weight VAE has almost no linear
colour structure, so its previews are close to flat. The machinery and its
cost are the same either way.

numpy and Pillow only at import time; torch is imported where a VAE is used.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("ray.serve")

# Bump when the fitting procedure changes, so cached fits are redone.
FIT_VERSION = 1
# Encoded previews above this are shrunk until they fit: they travel in every
# progress event that carries one and are kept in the job's event log.
MAX_PREVIEW_BYTES = 6000
# Wider strips are scaled down first: nobody needs more to see a composition.
MAX_PREVIEW_WIDTH = 256
JPEG_QUALITY = 70

Decode = Callable[[Any], np.ndarray]  # normalised latents (1, C, T, h, w) -> frames (F, H, W, 3) in [0, 1]


@dataclass(frozen=True)
class LatentProjection:
    """RGB in [0, 1] = latents (normalised, as the denoiser makes them) @ weight + bias."""

    weight: np.ndarray  # (C, 3) float32
    bias: np.ndarray  # (3,) float32

    def apply(self, cells: np.ndarray) -> np.ndarray:
        """(..., C) latent cells -> (..., 3) colours in [0, 1]."""
        return np.clip(cells.astype(np.float32) @ self.weight + self.bias, 0.0, 1.0)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, weight=self.weight, bias=self.bias)
        # Atomic: replicas starting together may fit at once; readers never see half a file.
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> LatentProjection:
        with np.load(path) as data:
            return cls(data["weight"].astype(np.float32), data["bias"].astype(np.float32))


# --- fitting -------------------------------------------------------------------------------


def pool_to_latent_grid(frames: np.ndarray, latent_frames: int, temporal: int, spatial: int) -> np.ndarray:
    """Decoded frames (F, H, W, 3) -> the colour of each latent cell (T, H/s, W/s, 3).

    Wan's causal VAE decodes latent frame 0 to one frame and every later latent
    frame to the next `temporal` frames; each cell covers `spatial` x `spatial`
    pixels. A cell's colour is the mean over what it decodes to.
    """
    count, height, width, _ = frames.shape
    if count != 1 + temporal * (latent_frames - 1):
        raise ValueError(f"{count} frames do not come from {latent_frames} latent frames at {temporal}x")
    h, w = height // spatial, width // spatial
    pooled = frames[:, : h * spatial, : w * spatial].reshape(count, h, spatial, w, spatial, 3).mean(axis=(2, 4))
    groups = [pooled[:1]] + [pooled[1 + temporal * (t - 1) : 1 + temporal * t] for t in range(1, latent_frames)]
    return np.stack([g.mean(axis=0) for g in groups])


def fit_latents(channels: int, seed: int = 0, samples: int = 3, frames: int = 2, side: int = 8) -> list[np.ndarray]:
    """Random latents to decode for a fit: N(0, 1) like the denoiser's, constant over blocks.

    Blocks of 1, 2 and 4 cells mix high- and low-frequency content; previews
    mostly show the low-frequency part (early x0 estimates are blurry).
    """
    rng = np.random.default_rng(seed)
    out = []
    for i in range(samples):
        block = (1, 2, 4)[i % 3]
        coarse = rng.standard_normal((1, channels, frames, -(-side // block), -(-side // block))).astype(np.float32)
        out.append(np.ascontiguousarray(coarse.repeat(block, 3).repeat(block, 4)[..., :side, :side]))
    return out


def fit_projection(
    decode: Decode,
    channels: int,
    temporal: int,
    spatial: int,
    latents: list[np.ndarray] | None = None,
    ridges: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0),
) -> LatentProjection:
    """Ridge least-squares map from latent cells to the colours `decode` gives them.

    The ridge strength is picked by leave-one-latent-out error: a VAE whose
    colours are nearly linear in the latents gets a near-plain fit, one with
    no linear colour structure (random weights) gets pulled to its mean
    colour, which is the honest preview of it rather than amplified noise.
    """
    xs, ys = [], []
    for z in latents if latents is not None else fit_latents(channels):
        frames = np.asarray(decode(z), dtype=np.float32)
        colours = pool_to_latent_grid(frames, z.shape[2], temporal, spatial)
        x = np.moveaxis(z[0], 0, -1).reshape(-1, channels).astype(np.float64)
        xs.append(np.concatenate([x, np.ones((len(x), 1))], axis=1))
        ys.append(colours.reshape(-1, 3).astype(np.float64))

    def solve(a: np.ndarray, y: np.ndarray, ridge: float) -> np.ndarray:
        # Scaled by the cell count so one strength means the same for any fit
        # size; the bias (last row) is never shrunk.
        penalty = ridge * len(a) * np.eye(channels + 1)
        penalty[-1, -1] = 0.0
        return np.linalg.solve(a.T @ a + penalty, a.T @ y)

    def held_out_error(ridge: float) -> float:
        if len(xs) < 2:
            return 0.0
        total = 0.0
        for k in range(len(xs)):
            rest = [i for i in range(len(xs)) if i != k]
            w = solve(np.concatenate([xs[i] for i in rest]), np.concatenate([ys[i] for i in rest]), ridge)
            total += float(np.mean((np.clip(xs[k] @ w, 0, 1) - ys[k]) ** 2))
        return total

    best = min(ridges, key=held_out_error)
    solution = solve(np.concatenate(xs), np.concatenate(ys), best)
    return LatentProjection(solution[:-1].astype(np.float32), solution[-1].astype(np.float32))


def _cache_key(profile) -> str:
    spec = {
        "version": FIT_VERSION,
        "identity": profile.identity,
        "source": profile.source,
        "path": profile.path,
        "vae_dtype": profile.vae_dtype,
        "tiny": profile.tiny.model_dump() if profile.source == "tiny" else None,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _fit_with_vae(profile, data_dir: Path) -> LatentProjection:
    from serve_app.pipeline.loading import load_pipeline
    from serve_app.pipeline.stages import decode_latents

    pipe = load_pipeline(profile, data_dir, "video_encoder")
    return fit_projection(
        lambda z: decode_latents(pipe, z),
        pipe.vae.config.z_dim,
        pipe.vae_scale_factor_temporal,
        pipe.vae_scale_factor_spatial,
    )


def projection_for_profile(profile, data_dir: Path) -> LatentProjection:
    """The profile's fitted projection: from the on-disk cache, else fitted with its VAE now.

    The denoiser holds no VAE, so one is loaded just for the fit and dropped
    after; decoding three 2x8x8 latents is cheap next to loading it.
    """
    path = Path(data_dir) / "previews" / f"{profile.name}-{_cache_key(profile)}.npz"
    if path.is_file():
        return LatentProjection.load(path)
    import torch

    started = time.perf_counter()
    try:
        projection = _fit_with_vae(profile, Path(data_dir))
    finally:
        # The VAE is gone with _fit_with_vae's frame; hand its memory back to
        # the card for the DiT that shares it.
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    projection.save(path)
    log.info("preview projection for %s fitted in %.2fs", profile.identity, time.perf_counter() - started)
    return projection


# --- rendering -----------------------------------------------------------------------------


def strip_indices(latent_frames: int, frames: int) -> list[int]:
    """Up to `frames` latent frames, evenly spaced, first and last included."""
    n = max(1, min(frames, latent_frames))
    if n == 1:
        return [latent_frames // 2]
    return sorted({round(i * (latent_frames - 1) / (n - 1)) for i in range(n)})


def project_strip(projection: LatentProjection, latents: Any, frames: int) -> np.ndarray:
    """Latents (1, C, T, h, w), torch or numpy -> uint8 RGB (n, h, w, 3) for `frames` latent frames.

    A torch tensor is projected where it lies (GPU included), so only three
    channels of a few frames cross to the CPU, never the whole latent.
    """
    index = strip_indices(latents.shape[2], frames)
    if hasattr(latents, "detach"):
        import torch

        x = latents.detach()[0, :, index].to(torch.float32)
        weight = torch.from_numpy(projection.weight).to(x.device)
        bias = torch.from_numpy(projection.bias).to(x.device)
        rgb = (torch.einsum("cthw,cr->thwr", x, weight) + bias).clamp_(0, 1).mul_(255).round_().to(torch.uint8)
        return rgb.cpu().numpy()
    cells = np.moveaxis(np.asarray(latents)[0][:, index], 0, -1)
    return np.round(projection.apply(cells) * 255).astype(np.uint8)


def encode_strip(rgb: np.ndarray, max_bytes: int = MAX_PREVIEW_BYTES) -> str:
    """uint8 (n, h, w, 3) -> a JPEG data URL of the frames side by side, at most `max_bytes` of JPEG."""
    from PIL import Image

    image = Image.fromarray(np.concatenate(list(rgb), axis=1))
    if image.width > MAX_PREVIEW_WIDTH:
        image = image.resize(
            (MAX_PREVIEW_WIDTH, max(1, round(image.height * MAX_PREVIEW_WIDTH / image.width))),
            Image.Resampling.BILINEAR,
        )
    while True:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=JPEG_QUALITY)
        data = buffer.getvalue()
        if len(data) <= max_bytes or min(image.size) <= 8:
            break
        # Noise-like early estimates compress worst; halving is rarely needed twice.
        image = image.resize((max(8, image.width // 2), max(8, image.height // 2)), Image.Resampling.BILINEAR)
    return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")


# --- when to make one ----------------------------------------------------------------------


def preview_steps(total: int, every_n_steps: int, max_previews: int) -> set[int]:
    """Steps that may get a preview: the first, every stride-th, and the last.

    The stride grows past `every_n_steps` until at most `max_previews` steps
    qualify, which is what bounds the previews one job adds to its event log.
    """
    stride = max(1, every_n_steps)
    while True:
        steps = {1, total} | set(range(stride, total + 1, stride))
        if len(steps) <= max(max_previews, 2) or stride >= total:
            return steps
        stride += 1


class PreviewRun:
    """One denoising run's previews: made on the model thread, taken by the progress sender.

    `on_latents` is the hook `stages.denoise` calls after each step; it renders
    only on due steps (and no sooner than `min_interval_s` after the last one,
    the final step excepted: its preview is what users look at during the VAE
    decode), so off-steps cost a set lookup.
    """

    def __init__(
        self, projection: LatentProjection, options, total_steps: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.projection = projection
        self.frames = options.frames
        self.min_interval_s = options.min_interval_s
        self.steps = preview_steps(total_steps, options.every_n_steps, options.max_per_job)
        self.total = total_steps
        self.clock = clock
        self._last = float("-inf")
        self._pending: str | None = None
        self.made = 0
        self.spent_s = 0.0  # time spent making previews, for cost reporting

    def on_latents(self, step: int, total: int, estimate: Callable[[], Any]) -> None:
        if step not in self.steps:
            return
        now = self.clock()
        if step != total and now - self._last < self.min_interval_s:
            return
        self._last = now
        started = time.perf_counter()
        try:
            self._pending = encode_strip(project_strip(self.projection, estimate(), self.frames))
        except Exception:
            log.exception("preview at step %d failed", step)
            return
        self.made += 1
        self.spent_s += time.perf_counter() - started

    def take(self) -> str | None:
        """The preview made since the last call, if any."""
        pending, self._pending = self._pending, None
        return pending


def preview_maker(options, profile, data_dir: Path) -> Callable[[int], PreviewRun] | None:
    """Per-run preview factory for a denoiser replica, or None when previews are off or unavailable."""
    if not options.enabled:
        return None
    try:
        projection = projection_for_profile(profile, data_dir)
    except Exception:
        log.exception("previews disabled: fitting the latent projection for %s failed", profile.identity)
        return None
    return lambda total_steps: PreviewRun(projection, options, total_steps)


def data_url_bytes(url: str) -> bytes:
    """The image bytes of a preview data URL (tests, tools)."""
    return base64.b64decode(url.split(",", 1)[1])
