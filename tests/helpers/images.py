"""Images for the image-to-video tests: pictures with structure, in every shape an upload can take."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np


def picture(width: int, height: int, seed: int = 0) -> np.ndarray:
    """uint8 (height, width, 3): gradients plus noise, so a crop or a shift changes the pixels."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], axis=-1)
    return ((base * 0.7) + rng.integers(0, 76, (height, width, 3))).astype(np.uint8)


def encoded(array: np.ndarray, fmt: str = "PNG", mode: str | None = None, **save) -> bytes:
    from PIL import Image

    image = Image.fromarray(array)
    if mode is not None:
        image = image.convert(mode)
    out = io.BytesIO()
    image.save(out, fmt, **save)
    return out.getvalue()


def png(width: int, height: int, seed: int = 0) -> bytes:
    return encoded(picture(width, height, seed))


def data_url(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


def png_16bit(width: int, height: int, color_type: int = 2) -> bytes:
    """A valid 16-bit-per-channel PNG (Pillow cannot write one): RGB (2) or greyscale (0)."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    row = (bytes(range(256)) * (1 + width * channels * 2 // 256))[: width * channels * 2]
    raw = b"".join(b"\x00" + row for _ in range(height))  # filter byte 0, then the samples

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height and holds a few bytes: a decompression bomb's header."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    ihdr = struct.pack(">I", len(header)) + b"IHDR" + header + struct.pack(">I", zlib.crc32(b"IHDR" + header))
    idat_payload = zlib.compress(b"\x00" * 64)
    idat = (
        struct.pack(">I", len(idat_payload))
        + b"IDAT"
        + idat_payload
        + struct.pack(">I", zlib.crc32(b"IDAT" + idat_payload))
    )
    return b"\x89PNG\r\n\x1a\n" + ihdr + idat


def animated(fmt: str = "PNG") -> bytes:
    from PIL import Image

    frames = [Image.fromarray(picture(32, 32, seed)) for seed in (1, 2)]
    out = io.BytesIO()
    frames[0].save(out, fmt, save_all=True, append_images=frames[1:])
    return out.getvalue()


def with_exif_orientation(array: np.ndarray, orientation: int) -> bytes:
    """A JPEG whose EXIF says how to turn it (6: rotate 90 degrees clockwise to view)."""
    from PIL import Image

    image = Image.fromarray(array)
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif.tobytes(), quality=95)
    return out.getvalue()
