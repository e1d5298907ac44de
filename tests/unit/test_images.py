"""serve_app/images.py: what an upload must be to become a first frame, and how it is fitted.

Every refusal is an `InvalidImage` (400, code invalid_image) naming the field;
the fit is diffusers' own resize-and-crop, Lanczos and all.
"""

from __future__ import annotations

import io

import numpy as np
import pytest

from serve_app.errors import InvalidImage
from serve_app.images import fit_to_size, fitted_image, image_sha256, open_reference_image
from tests.helpers.images import (
    animated,
    encoded,
    picture,
    png,
    png_16bit,
    png_header_only,
    with_exif_orientation,
)

MAX_PIXELS = 50_000_000


def refused(data: bytes, max_pixels: int = MAX_PIXELS) -> str:
    with pytest.raises(InvalidImage) as caught:
        open_reference_image(data, max_pixels)
    error = caught.value
    assert error.param == "input_reference" and error.code == "invalid_image" and error.status_code == 400
    return error.message


def _truncated_png() -> bytes:
    data = png(80, 64)
    return data[: len(data) // 2]


def _corrupt_png() -> bytes:
    data = bytearray(png(80, 64))
    data[200:260] = bytes(60)  # inside the compressed pixel data
    return bytes(data)


@pytest.mark.parametrize(
    "data, fragment",
    [
        (b"GIF89a" + bytes(100), "is not a PNG, JPEG or WebP image"),
        (b"%PDF-1.7 not an image", "is not a PNG, JPEG or WebP image"),
        (encoded(picture(32, 32), "GIF"), "is not a PNG, JPEG or WebP image"),
        (_corrupt_png(), "is corrupt"),
        (_truncated_png(), "is truncated"),
        (encoded(picture(80, 64), "JPEG")[:900], "is truncated"),
        (animated("PNG"), "is animated (2 frames)"),
        (animated("WEBP"), "is animated (2 frames)"),
        (encoded(picture(32, 32), "JPEG", mode="CMYK"), "is a CMYK image"),
        (png_16bit(8, 4, color_type=2), "has 16 bits per channel"),
        (png_16bit(8, 4, color_type=0), "has 16 bits per channel"),
        (png_header_only(9000, 9000), "is 9000x9000 = 81000000 pixels; at most 50000000"),
        (encoded(np.dstack([picture(16, 16), np.full((16, 16), 128, np.uint8)]), "PNG"), "has transparent pixels"),
    ],
    ids=[
        "gif-bytes",
        "pdf",
        "gif",
        "corrupt-png",
        "truncated-png",
        "truncated-jpeg",
        "animated-png",
        "animated-webp",
        "cmyk",
        "16-bit-rgb",
        "16-bit-grey",
        "too-many-pixels",
        "transparent",
    ],
)
def test_what_the_model_cannot_start_from_is_refused_naming_the_field(data, fragment):
    assert fragment in refused(data)


def test_a_decompression_bomb_is_refused_from_its_header_before_pillow_decodes_anything():
    # 400 megapixels claimed in a few hundred bytes: Pillow's own guard speaks, as our 4xx.
    assert "more than 1000 pixels" in refused(png_header_only(20000, 20000), max_pixels=1000)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_rgb_pngs_jpegs_and_webps_are_read(fmt):
    image = open_reference_image(encoded(picture(40, 30), fmt), MAX_PIXELS)
    assert image.image.mode == "RGB" and (image.width, image.height) == (40, 30)
    assert image.format == fmt


@pytest.mark.parametrize("mode", ["L", "P", "1", "RGBA", "LA"])
def test_greyscale_palette_and_opaque_alpha_become_the_same_rgb(mode):
    from PIL import Image

    source = Image.fromarray(picture(24, 16)).convert(mode)
    expected = np.asarray(source.convert("RGB"))
    buffer = io.BytesIO()
    source.save(buffer, "PNG")
    image = open_reference_image(buffer.getvalue(), MAX_PIXELS)
    assert image.image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(image.image), expected)


def test_the_exif_orientation_is_applied_so_the_first_frame_is_upright():
    # Stored 40 wide and 20 high, to be shown turned 90 degrees (orientation 6): 20 wide, 40 high.
    image = open_reference_image(with_exif_orientation(picture(40, 20), 6), MAX_PIXELS)
    assert (image.width, image.height) == (20, 40)


@pytest.mark.parametrize(
    "source, target",
    [
        ((120, 90), (96, 64)),  # wider target: the top and bottom are cut
        ((90, 120), (96, 64)),  # portrait source, landscape target
        ((64, 128), (96, 64)),
        ((33, 17), (640, 480)),  # upscaled
        ((97, 61), (64, 128)),  # odd sizes: integer division as diffusers does it
        ((96, 64), (96, 64)),  # already the size: unchanged
    ],
)
def test_the_fit_is_diffusers_resize_and_centre_crop(source, target):
    from diffusers.image_processor import VaeImageProcessor
    from PIL import Image

    image = Image.fromarray(picture(*source))
    ours = fit_to_size(image, *target)
    theirs = VaeImageProcessor().resize(image, height=target[1], width=target[0], resize_mode="crop")
    assert ours.size == target
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


def test_the_fit_keeps_the_centre_and_never_stretches():
    from PIL import Image

    # A 200x100 image whose middle 100x100 is white and whose sides are black: fitted to a
    # square, the sides are cut (not squeezed in), so it is white all over.
    array = np.zeros((100, 200, 3), np.uint8)
    array[:, 50:150] = 255
    fitted = np.asarray(fit_to_size(Image.fromarray(array), 64, 64))
    assert fitted.min() > 200  # Lanczos rings a little at the cut, from the black beyond it
    stretched = np.asarray(Image.fromarray(array).resize((64, 64)))
    assert stretched.min() == 0  # what a plain resize would have shown


def test_fitted_image_opens_then_fits():
    data = png(120, 90)
    fitted = fitted_image(data, 96, 64, MAX_PIXELS)
    assert fitted.size == (96, 64) and fitted.mode == "RGB"
    with pytest.raises(InvalidImage):
        fitted_image(b"not an image", 96, 64, MAX_PIXELS)


def test_the_hash_is_of_the_file():
    import hashlib

    data = png(10, 10)
    assert image_sha256(data) == hashlib.sha256(data).hexdigest()
    assert image_sha256(data) != image_sha256(png(10, 10, seed=1))
