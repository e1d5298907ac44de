"""Frames to mp4 with PyAV (H.264), and reading an mp4 back for checks."""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass

import numpy as np

# x264 "veryfast" at CRF 20: on 17-121 frames the encode is ~1-3% of a job's
# time, and CRF 20 keeps the model's detail without bloating files.
DEFAULT_CODEC_OPTIONS = {"preset": "veryfast", "crf": "20"}
# Threaded x264 (through libavcodec) is not bit-reproducible: the same frames
# gave 3-4 different files in 15 encodes under CPU load, even with
# non-deterministic=0. One thread is; tests that compare files use this.
REPRODUCIBLE_CODEC_OPTIONS = {"preset": "veryfast", "crf": "20", "threads": "1"}


def frames_to_uint8(frames: np.ndarray) -> np.ndarray:
    """Float frames in [0, 1] -> uint8, rounding to nearest."""
    return np.clip(np.rint(frames * 255.0), 0, 255).astype(np.uint8)


def encode_mp4(frames: np.ndarray, fps: int, codec_options: dict[str, str] | None = None) -> bytes:
    """uint8 frames (F, H, W, 3) -> mp4 bytes (H.264, yuv420p, `faststart` for streaming)."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames of shape (F, H, W, 3), got {frames.dtype} {frames.shape}")
    _, height, width, _ = frames.shape
    with Mp4Writer(fps, width, height, codec_options) as writer:
        writer.write(frames)
    return writer.data


class Mp4Writer:
    """An mp4 written chunk by chunk, so encoding can start before the last frame exists.

    `write` takes uint8 (n, H, W, 3) chunks as they come (from the VAE decode,
    say); `close` flushes the encoder and leaves the file's bytes in `data`.
    The one-shot `encode_mp4` is this writer with a single chunk, so both give
    the same file for the same frames.
    """

    def __init__(self, fps: int, width: int, height: int, codec_options: dict[str, str] | None = None) -> None:
        import av

        if height % 2 or width % 2:
            raise ValueError(f"yuv420p needs even sides, got {width}x{height}")
        self.width, self.height = width, height
        self.frames = 0
        self.data = b""
        # faststart moves the index to the front, so players start before the
        # download ends; the muxer rewrites the file for it, which needs a real file.
        self._tmp = tempfile.TemporaryDirectory(prefix="mp4-")
        self._path = os.path.join(self._tmp.name, "video.mp4")
        self._container = av.open(self._path, mode="w", format="mp4", options={"movflags": "faststart"})
        self._stream = self._container.add_stream("libx264", rate=fps)
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, "yuv420p"
        self._stream.options = dict(codec_options or DEFAULT_CODEC_OPTIONS)

    def write(self, frames: np.ndarray) -> None:
        import av

        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (self.height, self.width, 3):
            raise ValueError(
                f"expected uint8 frames of shape (n, {self.height}, {self.width}, 3), got {frames.dtype} {frames.shape}"
            )
        for frame in frames:
            for packet in self._stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                self._container.mux(packet)
        self.frames += len(frames)

    def close(self) -> bytes:
        if self._container is None:
            return self.data
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
            self._container = None
            with open(self._path, "rb") as f:
                self.data = f.read()
        finally:
            self.abort()
        return self.data

    def abort(self) -> None:
        """Drop what was written (e.g. a decode that failed half-way)."""
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - closing a half-written file may fail; it is deleted anyway
                pass
            self._container = None
        self._tmp.cleanup()

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    width: int
    height: int
    fps: float
    codec: str


def probe_mp4(data: bytes) -> VideoInfo:
    """Decode every frame (not just the header) and report what is really there."""
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        count = sum(1 for _ in container.decode(stream))
        return VideoInfo(
            frames=count,
            width=stream.width,
            height=stream.height,
            fps=float(stream.average_rate),
            codec=stream.codec_context.name,
        )


def decode_mp4(data: bytes) -> np.ndarray:
    """All frames of an mp4 as uint8 RGB, shape (F, H, W, 3)."""
    import av

    with av.open(io.BytesIO(data)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


# JPEG quality 85: visually clean at thumbnail size, a few KB per image.
THUMBNAIL_QUALITY = 85


def make_thumbnail(frames: np.ndarray, max_side: int = 320) -> bytes:
    """JPEG of the middle frame of uint8 (F, H, W, 3) frames, longer side <= max_side.

    The middle frame, because first frames of generated videos are often
    still settling. Smaller frames are kept as they are: upscaling adds bytes,
    not detail.
    """
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"expected uint8 frames of shape (F, H, W, 3) with F >= 1, got {frames.dtype} {frames.shape}")
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    from PIL import Image

    _, height, width, _ = frames.shape
    image = Image.fromarray(np.ascontiguousarray(frames[frames.shape[0] // 2]))
    scale = max_side / max(height, width)
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=THUMBNAIL_QUALITY)
    return out.getvalue()
