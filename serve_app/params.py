"""Turning a request into the exact settings a generation runs with.

`resolve_generation` is the service's `check_inputs`: it starts from a preset,
applies the request's overrides, and rejects anything outside the limits with
an `InvalidRequest` naming the field, the value and what is allowed. Nothing is
rounded or clamped: a value the model cannot take is an error, not a surprise.
"""

from __future__ import annotations

import math
import random
import re
import unicodedata
from typing import Any

from pydantic import field_validator

from serve_app.config import PresetCatalog
from serve_app.errors import InvalidRequest
from serve_app.settings.base import StrictModel
from serve_app.settings.limits import GenerationLimits
from serve_app.settings.speed import FastKnobs


class GenerationParams(StrictModel):
    """Everything that decides the pixels of one video (after presets and overrides)."""

    prompt: str
    negative_prompt: str
    width: int
    height: int
    num_frames: int
    num_inference_steps: int
    guidance_scale: float
    fps: int
    seed: int
    preset: str
    # Quality-changing speed-ups a degradation tier turned on; None: the exact path.
    fast: FastKnobs | None = None

    @field_validator("fast")
    @classmethod
    def _exact_is_none(cls, v: FastKnobs | None) -> FastKnobs | None:
        # One spelling of "the exact path": knobs that change nothing are None, so they
        # neither split the cache key nor time the exact path apart (estimates.py).
        return None if v is not None and v.exact else v

    # Image to video: SHA-256 of the first-frame image file (its bytes are kept beside the
    # videos, serve_app/reference_images.py); None: text to video.
    input_reference_sha256: str | None = None

    @property
    def size(self) -> str:
        """OpenAI's `size` string: WIDTHxHEIGHT."""
        return f"{self.width}x{self.height}"

    @property
    def seconds(self) -> float:
        return self.num_frames / self.fps

    @property
    def latent_frames(self) -> int:
        return (self.num_frames - 1) // 4 + 1

    @property
    def latent_tokens(self) -> int:
        """DiT sequence length: what the compute cost of one step scales with."""
        return self.latent_frames * (self.height // 32) * (self.width // 32)


def warmup_params(
    height: int, width: int, frames: int, steps: int = 2, guidance_scale: float = 5.0
) -> GenerationParams:
    """A replica's warm-up job at one shape (zero embeddings stand in for the text), seed 0."""
    return GenerationParams(
        prompt="warm up",
        negative_prompt="",
        width=width,
        height=height,
        num_frames=frames,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        fps=8,
        seed=0,
        preset="warmup",
    )


# Fields a request may override on top of its preset.
OVERRIDABLE = ("width", "height", "num_frames", "num_inference_steps", "guidance_scale", "fps", "negative_prompt")


SIZE_PATTERN = re.compile(r"\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*", re.ASCII)


def parse_size(size: str) -> tuple[int, int]:
    """'WIDTHxHEIGHT' -> (width, height)."""
    # re.ASCII: str.isdigit() and \d would also take '²' or full-width digits.
    match = SIZE_PATTERN.fullmatch(size)
    if match is None:
        raise InvalidRequest(f"size={size!r} is not of the form WIDTHxHEIGHT, e.g. '640x480'", param="size")
    return int(match.group(1)), int(match.group(2))


def allowed_seconds(fps: int, limits: GenerationLimits) -> list[str]:
    """The `seconds` values that make a valid video at `fps`, each written so that it does:
    frames = seconds x fps + 1 must be a whole 4k+1 within the limits. Lengths with no exact
    decimal (k/6 s at 24 fps) are left out: `num_frames` reaches those."""
    modulus = limits.frames_modulus
    first = -(-(limits.min_frames - 1) // modulus) * modulus + 1
    allowed = []
    for frames in range(first, limits.max_frames + 1, modulus):
        text = format(round((frames - 1) / fps, 4), "g")
        if float(text) * fps + 1 == frames:  # the very test frames_for_seconds applies
            allowed.append(text)
    return allowed


def _seconds_refused(
    seconds: Any, fps: int, reason: str, value: float | None, limits: GenerationLimits
) -> InvalidRequest:
    """An error about `seconds` (never `num_frames`, which the client did not send) that lists
    the values allowed at this fps and the nearest ones."""
    allowed = allowed_seconds(fps, limits)
    span = (
        f"frames = seconds x fps + 1 must be {limits.frames_modulus}k+1 "
        f"between {limits.min_frames} and {limits.max_frames}"
    )
    if not allowed:
        return InvalidRequest(
            f"seconds={seconds!r} {reason}; no seconds value gives whole frames at fps={fps} ({span}): give num_frames",
            param="seconds",
            allowed=[],
        )
    message = f"seconds={seconds!r} {reason}; allowed at fps={fps} ({span}): {', '.join(allowed)}"
    if value is not None and math.isfinite(value):
        below = [a for a in allowed if float(a) <= value]
        above = [a for a in allowed if float(a) >= value]
        nearest = list(dict.fromkeys([*below[-1:], *above[:1]]))
        message += f"; nearest: {' or '.join(nearest)}"
    return InvalidRequest(message, param="seconds", allowed=allowed)


def frames_for_seconds(seconds: Any, fps: int, num_frames: int | None, limits: GenerationLimits) -> int:
    """OpenAI's `seconds` -> frames: seconds x fps + 1 (the first frame is t=0)."""
    if num_frames is not None:
        raise InvalidRequest("give either seconds or num_frames, not both", param="seconds")
    # The allowed seconds depend on fps (and a zero fps would divide by zero below).
    _check_range("fps", fps, limits.min_fps, limits.max_fps)
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        raise _seconds_refused(seconds, fps, "is not a number", None, limits) from None
    if not math.isfinite(value):  # int(nan) and int(inf) raise below: a 500, not the client's 400
        raise _seconds_refused(seconds, fps, "is not a finite number", None, limits)
    frames = value * fps + 1
    if not math.isfinite(frames) or frames > limits.max_frames:  # 1e308 * 24 is inf: int() would raise
        count = f"{frames:g} frames, " if math.isfinite(frames) else ""
        raise _seconds_refused(
            seconds, fps, f"at fps={fps} gives {count}more than max_frames={limits.max_frames}", value, limits
        )
    if frames < limits.min_frames:
        raise _seconds_refused(
            seconds,
            fps,
            f"at fps={fps} gives {frames:g} frames, fewer than min_frames={limits.min_frames}",
            value,
            limits,
        )
    if frames != int(frames) or (int(frames) - 1) % limits.frames_modulus:
        raise _seconds_refused(
            seconds, fps, f"at fps={fps} gives {frames:g} frames, not a whole {limits.frames_modulus}k+1", value, limits
        )
    return int(frames)


def size_problem(width: int, height: int, limits: GenerationLimits) -> str | None:
    """Why the model cannot make `width`x`height`, or None if it can."""
    for field, side in (("width", width), ("height", height)):
        if not limits.min_side <= side <= limits.max_side:
            return f"{field} {side} is outside [{limits.min_side}, {limits.max_side}]"
        if side % limits.side_multiple:
            return (
                f"{field} {side} is not a multiple of {limits.side_multiple} "
                "(the 5B VAE's 16x downsampling times the DiT's 2x2 patches)"
            )
    if width * height > limits.max_pixels:
        return f"it has {width * height} pixels; at most {limits.max_pixels} are allowed"
    return None


def nearest_sizes(width: int, height: int, limits: GenerationLimits, count: int = 3) -> list[str]:
    """The `count` makeable sizes closest to `width`x`height`: by how far their aspect ratio
    and their area are from its (as logarithms, so 2x too big and 2x too small are as far),
    larger first on a tie: 1280x720 -> 1280x704, 1248x704, 1248x736."""
    target_aspect = math.log(max(width, 1) / max(height, 1))
    target_area = math.log(max(width, 1) * max(height, 1))
    step = limits.side_multiple
    sides = range(-(-limits.min_side // step) * step, limits.max_side + 1, step)
    ranked = sorted(
        (
            abs(math.log(w / h) - target_aspect) + abs(math.log(w * h) - target_area),
            -w * h,
            f"{w}x{h}",
        )
        for w in sides
        for h in sides
        if w * h <= limits.max_pixels
    )
    return [size for _, _, size in ranked[:count]]


def _check_range(field: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:
        raise InvalidRequest(f"{field}={value} is outside the allowed range [{lo}, {hi}]", param=field)


def check_generation(values: dict[str, Any], limits: GenerationLimits) -> None:
    """Raise `InvalidRequest` for the first field outside `limits`."""
    for field in ("prompt", "negative_prompt"):
        text = values[field]
        if len(text) > limits.max_prompt_chars:
            raise InvalidRequest(
                f"{field} has {len(text)} characters; at most {limits.max_prompt_chars} are allowed",
                param=field,
            )
        # A cacheable request runs its NFKC form (serve_app.cache.keys), and NFKC can grow
        # text 18x (U+FDFA is 18 characters): the limit holds for that form too. Checked
        # second, so normalisation never works on more than the limit as sent.
        normalised = len(unicodedata.normalize("NFKC", text))
        if normalised > limits.max_prompt_chars:
            raise InvalidRequest(
                f"{field} has {normalised} characters after Unicode NFKC normalisation ({len(text)} as sent); "
                f"at most {limits.max_prompt_chars} are allowed",
                param=field,
            )
    if not values["prompt"].strip():
        raise InvalidRequest("prompt is empty; describe the video to generate", param="prompt")

    for field in ("height", "width"):
        side = values[field]
        _check_range(field, side, limits.min_side, limits.max_side)
        if side % limits.side_multiple:
            raise InvalidRequest(
                f"{field}={side} is not a multiple of {limits.side_multiple} "
                f"(the 5B VAE's 16x downsampling times the DiT's 2x2 patches); "
                f"nearest allowed: {side // limits.side_multiple * limits.side_multiple} "
                f"or {(side // limits.side_multiple + 1) * limits.side_multiple}",
                param=field,
            )
    pixels = values["height"] * values["width"]
    if pixels > limits.max_pixels:
        raise InvalidRequest(
            f"size={values['width']}x{values['height']} has {pixels} pixels; at most {limits.max_pixels} are allowed",
            param="size",
        )

    frames = values["num_frames"]
    _check_range("num_frames", frames, limits.min_frames, limits.max_frames)
    if (frames - 1) % limits.frames_modulus:
        k = (frames - 1) // limits.frames_modulus
        raise InvalidRequest(
            f"num_frames={frames} is not of the form {limits.frames_modulus}k+1; "
            f"nearest allowed: {k * limits.frames_modulus + 1} or {(k + 1) * limits.frames_modulus + 1}",
            param="num_frames",
        )
    _check_range("num_inference_steps", values["num_inference_steps"], limits.min_steps, limits.max_steps)
    _check_range("guidance_scale", values["guidance_scale"], limits.min_guidance, limits.max_guidance)
    _check_range("fps", values["fps"], limits.min_fps, limits.max_fps)
    seed = values.get("seed")
    if seed is not None:
        _check_range("seed", seed, 0, limits.max_seed)


def resolve_generation(
    request: dict[str, Any],
    catalog: PresetCatalog,
    *,
    rng: random.Random | None = None,
) -> GenerationParams:
    """Preset + overrides -> checked `GenerationParams`.

    `request` holds the request's generation fields; None means "not given".
    A missing seed is random (`rng`); the answer reports the seed used. A
    cacheable request then runs `serve_app.cache.keys.cacheable_form` of this:
    prompts normalised as the key does it and a missing seed derived from the
    key, so the same request gives the same video.
    """
    preset_name = request.get("preset") or catalog.default_preset
    if preset_name not in catalog.presets:
        raise InvalidRequest(f"preset={preset_name!r} is not one of {sorted(catalog.presets)}", param="preset")
    preset = catalog.presets[preset_name]
    values: dict[str, Any] = {field: getattr(preset, field) for field in OVERRIDABLE}

    if request.get("size") is not None:
        if request.get("width") is not None or request.get("height") is not None:
            raise InvalidRequest("give either size or width/height, not both", param="size")
        values["width"], values["height"] = parse_size(request["size"])
        problem = size_problem(values["width"], values["height"], catalog.limits)
        if problem is not None:
            # OpenAI's sizes (1280x720, 1792x1024, ...) are not all the model's: name the ones it can make.
            nearest = nearest_sizes(values["width"], values["height"], catalog.limits)
            raise InvalidRequest(
                f"size={request['size']!r} is not a size this model makes: {problem}; nearest: {', '.join(nearest)}",
                param="size",
                nearest=nearest,
            )
    for field in OVERRIDABLE:
        if request.get(field) is not None:
            values[field] = request[field]
    if request.get("seconds") is not None:
        values["num_frames"] = frames_for_seconds(
            request["seconds"], values["fps"], request.get("num_frames"), catalog.limits
        )
    values["prompt"] = request.get("prompt") or ""
    values["seed"] = request.get("seed")
    if request.get("input_reference_sha256") is not None:  # checked by serve_app/api/image_input.py
        values["input_reference_sha256"] = request["input_reference_sha256"]

    check_generation(values, catalog.limits)

    if values["seed"] is None:
        values["seed"] = (rng or random.SystemRandom()).randint(0, catalog.limits.max_seed)
    return GenerationParams(preset=preset_name, **values)
