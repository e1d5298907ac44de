"""The first-frame image of an image-to-video request: checked, decoded and fitted, with Pillow.

The gateway opens every upload once, to refuse with a 4xx naming the field
what the model cannot start from; the video encoder opens the same bytes the
same way and fits them to the requested size (`fit_to_size`) before the VAE
encodes them. Pillow only, no torch: the gateway imports this module.

Refused, each with its own message (nothing is silently corrected):
- anything but PNG, JPEG or WebP, and files that do not decode (corrupt, truncated);
- more than `max_pixels` pixels, read from the header before any decoding (a
  decompression bomb costs nothing);
- animated images (APNG, animated WebP): which frame is the first is a guess;
- CMYK: turning it into RGB without the file's colour profile changes the colours;
- more than 8 bits per channel (16-bit PNG): Pillow would drop the low bits;
- transparent pixels: the model has no notion of transparency, and what shows
  through (often black) would become the first frame.
Converted, since nothing is lost: greyscale and palette images become RGB, an
alpha channel that is opaque everywhere is dropped, and the EXIF orientation is
applied (as diffusers' `load_image` does), so the first frame is upright as
viewers show the picture.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import Any

from serve_app.errors import InvalidImage

FORMATS = ("PNG", "JPEG", "WEBP")
# Modes whose channels are 8 bits, that become RGB without changing what the picture shows.
EIGHT_BIT_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA")
# Modes with more than 8 bits per channel (Pillow's names): refused, not truncated.
DEEP_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


@dataclass(frozen=True)
class ReferenceImage:
    """An upload that passed every check: the picture as RGB, upright, at its own size."""

    image: Any  # PIL.Image.Image, mode RGB
    format: str  # PNG | JPEG | WEBP (MPO: a JPEG with extra pictures, of which the first is used)
    width: int
    height: int


def image_sha256(data: bytes) -> str:
    """The content hash of an upload, as the cache key and the job hold it."""
    return hashlib.sha256(data).hexdigest()


def open_reference_image(data: bytes, max_pixels: int, field: str = "input_reference") -> ReferenceImage:
    """Decode `data` into an RGB picture, or raise `InvalidImage` saying what is wrong with it."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise InvalidImage(f"{field} is not a PNG, JPEG or WebP image", param=field) from None
    except Image.DecompressionBombError:
        raise InvalidImage(f"{field} has more than {max_pixels} pixels, the most accepted", param=field) from None
    except Exception as exc:  # noqa: BLE001 - any failure to parse a client's file is the file's fault
        raise InvalidImage(f"{field} could not be read: {_reason(exc)}", param=field) from None
    _check_header(image, max_pixels, field)
    try:
        image.load()
    except Exception as exc:  # noqa: BLE001 - as above: truncated and corrupt files fail here
        if "truncated" in str(exc).lower():
            raise InvalidImage(
                f"{field} is truncated: the file ends before the {image.format} image does", param=field
            ) from None
        raise InvalidImage(f"{field} is corrupt: {_reason(exc)}", param=field) from None
    from PIL import ImageOps

    # Before the conversion: the EXIF block and any transparency ride along in `info`.
    upright = _to_rgb(ImageOps.exif_transpose(image), field)
    return ReferenceImage(upright, image.format or "", upright.width, upright.height)


def _reason(exc: BaseException) -> str:
    # The client's own file is described; the text is Pillow's, cut to a line.
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def _check_header(image: Any, max_pixels: int, field: str) -> None:
    """What the header says, before anything is decoded."""
    width, height = image.size
    if width * height > max_pixels:
        raise InvalidImage(
            f"{field} is {width}x{height} = {width * height} pixels; at most {max_pixels} are accepted",
            param=field,
            max_pixels=max_pixels,
        )
    # MPO is a JPEG with more pictures after the first (depth maps, stereo pairs): the first is the photo.
    if image.format != "MPO" and getattr(image, "n_frames", 1) > 1:
        raise InvalidImage(
            f"{field} is animated ({image.n_frames} frames); send one still image (the first frame to start from)",
            param=field,
        )
    raw_modes = [str(tile.args if isinstance(tile.args, str) else (tile.args or ("",))[0]) for tile in image.tile]
    if image.mode in DEEP_MODES or any(";16" in raw for raw in raw_modes):
        raise InvalidImage(
            f"{field} has 16 bits per channel ({image.format}, mode {image.mode!r}); send an 8-bit image: the "
            "model takes 8 bits and Pillow would drop the low bits unasked",
            param=field,
        )
    if image.mode == "CMYK":
        raise InvalidImage(
            f"{field} is a CMYK image; send RGB: converting it here, without the file's colour profile, would "
            "change its colours",
            param=field,
        )
    if image.mode not in EIGHT_BIT_MODES:
        raise InvalidImage(
            f"{field} has colour mode {image.mode!r}; accepted: RGB, greyscale or palette images, 8 bits per channel",
            param=field,
        )


def _to_rgb(image: Any, field: str) -> Any:
    """RGB, refusing transparency rather than flattening it onto a colour nobody chose."""
    if "A" in image.mode or "transparency" in image.info:
        rgba = image.convert("RGBA")
        lowest_alpha = rgba.getchannel("A").getextrema()[0]
        if lowest_alpha < 255:
            raise InvalidImage(
                f"{field} has transparent pixels (alpha down to {lowest_alpha}); flatten it onto a background "
                "first: the model has no notion of transparency",
                param=field,
            )
        return rgba.convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def fit_to_size(image: Any, width: int, height: int) -> Any:
    """Scale `image` to cover width x height, keeping its aspect, and cut the overflow evenly from both sides.

    diffusers' `VaeImageProcessor.resize(..., resize_mode="crop")`, Lanczos and all
    (a test holds it to that): the picture is never stretched, and an image of
    the requested size is passed through unchanged.
    """
    from PIL import Image

    if image.size == (width, height):
        return image
    ratio = width / height
    src_ratio = image.width / image.height
    src_w = width if ratio > src_ratio else image.width * height // image.height
    src_h = height if ratio <= src_ratio else image.height * width // image.width
    resized = image.resize((src_w, src_h), resample=Image.Resampling.LANCZOS)
    fitted = Image.new("RGB", (width, height))
    fitted.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    return fitted


def fitted_image(data: bytes, width: int, height: int, max_pixels: int, field: str = "input_reference") -> Any:
    """An upload's bytes -> the RGB picture the VAE encodes: opened as the gateway checked it, then fitted."""
    return fit_to_size(open_reference_image(data, max_pixels, field).image, width, height)
