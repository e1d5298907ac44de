"""What crosses deployment boundaries, besides `GenerationParams` and `Deadline`.

Only embeddings and latents (megabytes) travel between stages; frames never
do: the video encoder turns latents into an mp4 in one place. `GraphResult`
is what the whole graph hands the gateway's job runner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StepProgress:
    """The denoiser finished `step` of `total_steps`."""

    step: int
    total_steps: int
    # A JPEG data URL of the video so far (serve_app/preview.py), on the steps
    # that got one; a few kB, so it may ride along with every progress event.
    preview: str | None = None


@dataclass(frozen=True)
class DenoisedLatents:
    """The denoiser's last message: latents on the CPU."""

    latents: object  # numpy.ndarray, float32 (B, 48, latent frames, H/16, W/16)
    elapsed_s: float
    prompt_encode_s: float  # the text encoder's time, relayed for the answer's timings


@dataclass(frozen=True)
class ImageLatents:
    """Image to video: the first frame, fitted and VAE-encoded by the video encoder, on its way
    to the denoiser (serve_app/pipeline/image_condition.py)."""

    latents: object  # numpy.ndarray, float32 (1, 48, 1, H/16, W/16), normalised as the DiT's latents are
    encode_s: float  # the video encoder's time: opening, fitting and encoding the image


@dataclass(frozen=True)
class EncodedVideo:
    mp4: bytes
    num_frames: int
    width: int
    height: int
    fps: int
    decode_s: float
    encode_s: float
    thumbnail: bytes = b""  # JPEG of the middle frame

    @classmethod
    def of(cls, video: Any, fps: int) -> EncodedVideo:
        """The message for a `stages.DecodedVideo` (not imported: this module stays torch-free)."""
        return cls(
            mp4=video.mp4,
            num_frames=video.num_frames,
            width=video.width,
            height=video.height,
            fps=fps,
            decode_s=video.decode_s,
            encode_s=video.encode_s,
            thumbnail=video.thumbnail,
        )


@dataclass
class GraphResult:
    """One job through all the stages: its mp4 and where the time went."""

    video: EncodedVideo
    prompt_encode_s: float
    denoise_s: float
    total_s: float


ProgressCallback = Callable[[StepProgress], None]
