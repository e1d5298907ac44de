"""mp4 encoding: what goes in comes back out (frames, size, fps), index first.

Thumbnails: a JPEG of the middle frame, scaled down but never up.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest

from serve_app.video import encode_mp4, frames_to_uint8, make_thumbnail, probe_mp4


def gradient_frames(frames: int, height: int, width: int) -> np.ndarray:
    # Moving content, so the encoder cannot collapse frames into nothing.
    t = np.arange(frames)[:, None, None, None]
    y = np.arange(height)[None, :, None, None]
    x = np.arange(width)[None, None, :, None]
    c = np.arange(3)[None, None, None, :]
    return ((x * 3 + y * 2 + t * 20 + c * 60) % 256).astype(np.uint8)


def top_level_boxes(data: bytes) -> list[str]:
    boxes, pos = [], 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if size == 1:  # 64-bit size follows the type
            size = struct.unpack(">Q", data[pos + 8 : pos + 16])[0]
        elif size == 0:  # box runs to the end of the file
            size = len(data) - pos
        boxes.append(kind.decode("latin-1"))
        pos += size
    return boxes


@pytest.mark.parametrize("frames, height, width, fps", [(5, 64, 64, 24), (9, 96, 160, 8)])
def test_encode_then_probe(frames, height, width, fps):
    data = encode_mp4(gradient_frames(frames, height, width), fps)
    info = probe_mp4(data)
    assert (info.frames, info.height, info.width) == (frames, height, width)
    assert info.fps == fps
    assert info.codec == "h264"


def test_faststart_puts_moov_before_mdat():
    boxes = top_level_boxes(encode_mp4(gradient_frames(5, 64, 64), 24))
    assert boxes[0] == "ftyp"
    assert boxes.index("moov") < boxes.index("mdat")


def test_frames_to_uint8_rounds_and_clips():
    floats = np.array([-0.1, 0.0, 0.002, 0.5, 0.998, 1.0, 1.2], dtype=np.float32)
    out = frames_to_uint8(floats)
    assert out.dtype == np.uint8
    # 0.5 * 255 = 127.5 rounds to even; truncation would give 127.
    assert out.tolist() == [0, 0, 1, 128, 254, 255, 255]


@pytest.mark.parametrize(
    "frames",
    [
        np.zeros((5, 64, 64, 3), dtype=np.float32),
        np.zeros((5, 64, 64, 3), dtype=np.uint16),
        np.zeros((64, 64, 3), dtype=np.uint8),
        np.zeros((5, 64, 64, 4), dtype=np.uint8),
        np.zeros((1, 5, 64, 64, 3), dtype=np.uint8),
    ],
    ids=["float32", "uint16", "3d", "rgba", "5d"],
)
def test_wrong_dtype_or_shape(frames):
    with pytest.raises(ValueError, match=r"expected uint8 frames of shape \(F, H, W, 3\)"):
        encode_mp4(frames, 24)


def indexed_colour_frames(frames: int, height: int, width: int) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    # One flat colour per frame index, far apart, so the decoded colour says
    # which frame became the thumbnail despite JPEG's losses.
    colours = [(20 * i + 10, 240 - 20 * i, (90 * i) % 256) for i in range(frames)]
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for i, colour in enumerate(colours):
        out[i] = colour
    return out, colours


def decode_jpeg(data: bytes):
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize(
    "shape, expected_size",
    [
        ((9, 96, 160), (160, 96)),  # already small: kept, never upscaled
        ((9, 720, 1280), (320, 180)),  # landscape: longer side to 320
        ((5, 1280, 704), (176, 320)),  # portrait keeps its aspect too
        ((4, 320, 320), (320, 320)),  # exactly max_side stays
    ],
)
def test_thumbnail_size_and_middle_frame(shape, expected_size):
    frames, colours = indexed_colour_frames(*shape)
    image = decode_jpeg(make_thumbnail(frames))
    assert image.format == "JPEG" and image.mode == "RGB"
    assert image.size == expected_size
    middle = colours[shape[0] // 2]
    centre = image.getpixel((image.width // 2, image.height // 2))
    assert all(abs(a - b) <= 4 for a, b in zip(centre, middle)), (centre, middle)


def test_thumbnail_max_side():
    frames, _ = indexed_colour_frames(3, 96, 160)
    assert decode_jpeg(make_thumbnail(frames, max_side=64)).size == (64, 38)


@pytest.mark.parametrize(
    "frames",
    [
        np.zeros((5, 64, 64, 3), dtype=np.float32),
        np.zeros((64, 64, 3), dtype=np.uint8),
        np.zeros((5, 64, 64, 4), dtype=np.uint8),
        np.zeros((0, 64, 64, 3), dtype=np.uint8),
    ],
    ids=["float32", "3d", "rgba", "no-frames"],
)
def test_thumbnail_wrong_input(frames):
    with pytest.raises(ValueError, match=r"expected uint8 frames of shape \(F, H, W, 3\)"):
        make_thumbnail(frames)


def test_thumbnail_max_side_must_be_positive():
    with pytest.raises(ValueError, match="max_side must be >= 1, got 0"):
        make_thumbnail(np.zeros((1, 8, 8, 3), dtype=np.uint8), max_side=0)
