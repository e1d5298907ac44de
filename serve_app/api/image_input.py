"""`input_reference`: the first-frame image of an image-to-video request, as OpenAI's API carries it.

Two forms, both OpenAI's:
- multipart/form-data with a file part named `input_reference`: what the SDK
  sends for `client.videos.create(input_reference=open("cat.png", "rb"))`;
- JSON `{"input_reference": {"image_url": "data:image/png;base64,..."}}` (also as
  the form fields `input_reference[image_url]`, the SDK's way of flattening it).
Remote URLs and OpenAI file ids are refused with a 400 naming the field: the
gateway fetching a client's URL would be a server-side request forgery hole,
and this service keeps no files API.

The image has its own size limit (`image_input.max_bytes`), apart from the
body's (`access.max_body_bytes`, which bounds everything else in the body).
The bytes are then opened with Pillow (serve_app/images.py) off the event
loop: a 4xx names `input_reference` for anything the model cannot start from.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from dataclasses import dataclass

from serve_app.api.protocol import CreateVideoRequest
from serve_app.errors import InvalidImage, InvalidRequest, RequestTooLarge
from serve_app.images import image_sha256, open_reference_image
from serve_app.settings.image_input import ImageInputOptions

FIELD = "input_reference"
# data:[<media type>][;param=value]*;base64,<data>  (RFC 2397; only the base64 form carries bytes safely)
DATA_URL = re.compile(r"data:(?P<media>[^;,]*)(?:;[^;,]*)*?;base64,", re.IGNORECASE)
# Room in a body for the data URL's prefix, the JSON key and quotes, or a multipart part's headers.
FRAMING_BYTES = 1024


@dataclass(frozen=True)
class CheckedImage:
    """An upload that Pillow opened and every check passed: what the job needs of it."""

    data: bytes
    sha256: str
    width: int
    height: int
    format: str


def body_allowance(options: ImageInputOptions | None) -> int:
    """Bytes a create body may carry beyond `access.max_body_bytes` for its image (base64 is 4/3)."""
    if options is None or not options.enabled:
        return 0
    return -(-options.max_bytes // 3) * 4 + FRAMING_BYTES


def check_image_bytes(n_bytes: int, options: ImageInputOptions) -> None:
    if n_bytes > options.max_bytes:
        raise RequestTooLarge(
            f"{FIELD} has {n_bytes} bytes; images of at most {options.max_bytes} bytes are accepted",
            param=FIELD,
            max_image_bytes=options.max_bytes,
        )


def refuse_if_off(options: ImageInputOptions | None) -> None:
    if options is None or not options.enabled:
        raise InvalidRequest(f"{FIELD}: image input is turned off on this service (text-to-video only)", param=FIELD)


def decode_image_url(url: str, options: ImageInputOptions) -> bytes:
    """The bytes of a base64 data URL; anything else is refused, naming the field."""
    param = f"{FIELD}.image_url"
    match = DATA_URL.match(url)
    if match is None:
        if re.match(r"[a-z][a-z0-9+.-]*://", url, re.IGNORECASE):
            raise InvalidRequest(
                f"{param}: remote URLs are not fetched by this service; send the image itself, as a "
                "'data:image/png;base64,...' URL or as a multipart file part named input_reference",
                param=param,
            )
        raise InvalidRequest(f"{param} is not a base64 data URL ('data:image/png;base64,...')", param=param)
    media = match.group("media").lower()
    if media and not media.startswith("image/"):
        raise InvalidImage(f"{param} declares media type {media!r}; an image/* type is expected", param=param)
    encoded = url[match.end() :]
    # Checked before decoding: the decoded size is known from the length, give or take padding.
    check_image_bytes(len(encoded) // 4 * 3 - encoded.count("=", -2), options)
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage(f"{param}: the data after 'base64,' is not valid base64", param=param) from None


def image_bytes_of(request: CreateVideoRequest, options: ImageInputOptions | None) -> bytes | None:
    """The image a create request carries (uploaded or as a data URL), size-checked; None without one."""
    upload = request.uploaded_image
    reference = request.input_reference
    if upload is None and reference is None:
        return None
    refuse_if_off(options)
    assert options is not None  # refuse_if_off raised otherwise; for the type checker
    if upload is not None:
        check_image_bytes(len(upload), options)
        return upload
    assert reference is not None
    if reference.file_id is not None:
        raise InvalidRequest(
            f"{FIELD}.file_id: OpenAI file ids are not served here; send the image itself", param=f"{FIELD}.file_id"
        )
    if reference.image_url is None:
        raise InvalidRequest(f"{FIELD} needs image_url (a base64 data URL)", param=FIELD)
    return decode_image_url(reference.image_url, options)


async def open_checked(data: bytes, options: ImageInputOptions | None) -> CheckedImage:
    """The image opened with Pillow and every check passed, or `InvalidImage` naming the field.
    Off the event loop: decoding takes milliseconds to a second."""
    refuse_if_off(options)
    assert options is not None
    image = await asyncio.to_thread(open_reference_image, data, options.max_pixels, FIELD)
    return CheckedImage(data, image_sha256(data), image.width, image.height, image.format)
