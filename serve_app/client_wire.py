"""What the Python client (client.py) puts on and reads off the wire: an image-to-video
request's multipart form, the service's JSON errors as one exception type, and
Server-Sent Events parsed from a response's lines."""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeAlias, Union

import httpx

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

# The file part's name: OpenAI's field, as the SDK sends `client.videos.create(input_reference=...)`.
IMAGE_FIELD = "input_reference"
# A path, the file's bytes, an open binary file, or a PIL image (sent as a lossless PNG).
ImageInput: TypeAlias = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, IO[bytes], "PILImage"]
# The formats the service takes, by their first bytes; the service sniffs the bytes itself,
# the content type only labels the part.
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "png", "image/png"), (b"\xff\xd8\xff", "jpg", "image/jpeg"))


def _sniff(data: bytes) -> tuple[str, str]:
    """(file extension, content type) of an image's bytes; octet-stream for anything else."""
    for magic, extension, media in _MAGIC:
        if data.startswith(magic):
            return extension, media
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp", "image/webp"
    return "bin", "application/octet-stream"


def image_part(image: ImageInput) -> tuple[str, bytes, str]:
    """(file name, bytes, content type) of the `input_reference` file part for `image`.

    Bytes and files are sent as they are: the service checks them (and names
    `input_reference` in its 4xx); nothing is re-encoded on the way. A PIL image has
    no file, so it goes as PNG, which keeps its pixels exactly.
    """
    name: str | None = None
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
    elif isinstance(image, (str, os.PathLike)):
        path = Path(image)
        data, name = path.read_bytes(), path.name
    elif callable(getattr(image, "read", None)):
        data = image.read()
        if not isinstance(data, bytes):
            raise TypeError(f"image: the file must be opened in binary mode ('rb'); read() gave {type(data).__name__}")
        file_name = getattr(image, "name", None)
        name = os.path.basename(file_name) if isinstance(file_name, str) else None
    else:
        data = _png_of_pil(image)
    extension, media = _sniff(data)
    return name or f"image.{extension}", data, media


def _png_of_pil(image: Any) -> bytes:
    # A PIL image's module is loaded already if there is one: the client never imports Pillow itself.
    pil = sys.modules.get("PIL.Image")
    if pil is None or not isinstance(image, pil.Image):
        raise TypeError(f"image: expected a path, bytes, a file opened 'rb' or a PIL image, got {type(image).__name__}")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def form_fields(body: dict[str, Any]) -> dict[str, str]:
    """A create request's JSON fields as multipart form fields (text, as the SDK sends them);
    a field set to None is left out, which the service reads the same as null."""
    form: dict[str, str] = {}
    for key, value in body.items():
        if value is None:
            continue
        if isinstance(value, bool):
            form[key] = "true" if value else "false"
        elif isinstance(value, (dict, list)):
            raise TypeError(f"{key}: a structured field cannot go in a form beside an image")
        else:
            form[key] = str(value)
    return form


class ClientError(Exception):
    """An error answer of the service, or no answer at all.

    `status` is the HTTP status (None when the service could not be reached),
    `code` the service's stable machine code (e.g. `invalid_request`,
    `not_found`, `conflict`), `param` the offending field when the service
    named one, and `details` every other field of the error body (e.g.
    `video_id`, `step`, `total_steps` of a `deadline_exceeded`).
    """

    def __init__(
        self,
        status: int | None,
        code: str,
        message: str,
        param: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.details = details or {}

    def __str__(self) -> str:
        where = f" (param: {self.param})" if self.param else ""
        status = f"HTTP {self.status} " if self.status is not None else ""
        return f"{status}{self.code}: {self.message}{where}"

    @classmethod
    def from_response(cls, response: httpx.Response) -> ClientError:
        """From the service's `{"error": {...}}` body; anything else (a proxy's
        plain-text 502, FastAPI's `{"detail": ...}`) still gives a readable error."""
        try:
            body = response.json()
        except ValueError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            fields = dict(error)
            code = str(fields.pop("code", None) or "http_error")
            message = str(fields.pop("message", None) or response.reason_phrase)
            param = fields.pop("param", None)
            fields.pop("type", None)
            return cls(response.status_code, code, message, param, fields)
        if isinstance(body, dict) and "detail" in body:
            return cls(response.status_code, "http_error", str(body["detail"]))
        text = response.text.strip()[:500] if response.text else ""
        return cls(response.status_code, "http_error", text or response.reason_phrase or "error")


class ServiceUnreachable(ClientError):
    """The request never got an HTTP answer (connection refused, timeout, dropped)."""

    def __init__(self, url: str, cause: Exception) -> None:
        reason = str(cause) or type(cause).__name__
        super().__init__(None, "connection_error", f"cannot reach {url}: {reason}")
        self.cause = cause


@dataclass(frozen=True)
class ServerSentEvent:
    """One dispatched SSE event (WHATWG HTML, "Interpreting an event stream")."""

    data: str
    event: str = "message"
    id: str | None = None

    def json(self) -> Any:
        return json.loads(self.data)


def parse_sse(lines: Iterable[str]) -> Iterator[ServerSentEvent]:
    """Events from decoded lines of a `text/event-stream` (line breaks already split off).

    Follows the spec: `field: value` with one optional space after the colon,
    `data` lines joined with newlines, comments (`:...`) and unknown fields
    ignored, an event dispatched on a blank line, and a trailing event without
    its blank line discarded (the connection broke mid-event). `id` persists
    across events as the last event id, as a browser's EventSource keeps it.
    """
    data: list[str] = []
    event = ""
    last_id: str | None = None
    has_data = False
    for line in lines:
        if line == "":
            if has_data:
                yield ServerSentEvent(data="\n".join(data), event=event or "message", id=last_id)
            data, event, has_data = [], "", False
            continue
        if line.startswith(":"):
            continue
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "data":
            data.append(value)
            has_data = True
        elif field == "event":
            event = value
        elif field == "id":
            if "\0" not in value:
                last_id = value
        # "retry" and unknown fields: nothing to do for a non-browser reader.
