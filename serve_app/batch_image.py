"""The batch runner's `image` field: the first frame of an image-to-video item, as a file path.

A path relative to the batch file's folder (so a batch and its pictures move
together), or absolute. The file is hashed when the batch is read, for the
item's idempotency key: the same path holding another picture is another
item. A missing or unreadable file makes that line a bad line, with the path
it looked for; the rest of the batch runs. The bytes are read again when the
item is sent, and must still hash the same (else the item fails, saying so,
rather than sending a picture its key does not describe).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

COLUMN = "image"  # the JSONL field (the "column" of a batch)


class ImageFileError(ValueError):
    """An item's image file cannot be used: missing, unreadable, or changed since the batch was read."""

    code = "image_file"


@dataclass(frozen=True)
class ImageFile:
    path: Path  # absolute
    sha256: str


def resolve_image(value: object, base_dir: Path) -> ImageFile:
    """The `image` field of a line -> its file and content hash; ImageFileError saying why not."""
    if not isinstance(value, str) or not value.strip():
        raise ImageFileError(f"{COLUMN}={value!r} must be a file path (relative to the batch file, or absolute)")
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    path = path.absolute()
    try:
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
    except FileNotFoundError:
        raise ImageFileError(f"{COLUMN}={value!r}: no such file ({path})") from None
    except IsADirectoryError:
        raise ImageFileError(f"{COLUMN}={value!r}: {path} is a folder, not an image file") from None
    except OSError as exc:
        raise ImageFileError(f"{COLUMN}={value!r}: cannot read {path}: {exc.strerror or exc}") from None
    return ImageFile(path, digest)


def read_image(image: ImageFile) -> bytes:
    """The file's bytes as the batch was read; ImageFileError if it is gone or was changed since."""
    try:
        data = image.path.read_bytes()
    except OSError as exc:
        raise ImageFileError(f"{COLUMN} {image.path}: cannot read it any more: {exc.strerror or exc}") from None
    if hashlib.sha256(data).hexdigest() != image.sha256:
        raise ImageFileError(
            f"{COLUMN} {image.path} changed since the batch was read; run the batch again to send the new picture"
        )
    return data
