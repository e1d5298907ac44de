"""Reading a create request's body: JSON, urlencoded or multipart/form-data
(the OpenAI SDK sends multipart), never more than a bounded number of bytes
and parts, before anything is validated.

An image-to-video request's image (`input_reference`, serve_app/api/image_input.py)
has a limit of its own: the body may be larger by what the image may take, and
what is left besides the image is held to the plain body limit."""

from __future__ import annotations

import json
import re
from urllib.parse import parse_qsl

from fastapi import Request
from pydantic import ValidationError
from starlette.formparsers import MultiPartException, MultiPartParser

from serve_app.api.error_handlers import first_error, short
from serve_app.api.image_input import FIELD as IMAGE_FIELD
from serve_app.api.image_input import body_allowance, refuse_if_off
from serve_app.api.protocol import CreateVideoRequest, RemixVideoRequest
from serve_app.errors import InvalidRequest, RequestTooLarge
from serve_app.settings.image_input import ImageInputOptions

# The largest request body read before anything is parsed (a prompt is at
# most a few kB; the rest is headroom for multipart framing).
MAX_BODY_BYTES = 64 * 1024
# Form fields a create request may have (CreateVideoRequest has fewer): bounds the
# parts a multipart or urlencoded body is split into before anything is validated.
MAX_FORM_FIELDS = 32


def check_body_size(n_bytes: int | None, limit: int) -> None:
    if n_bytes is not None and n_bytes > limit:
        raise RequestTooLarge(
            f"body has {n_bytes} bytes; at most {limit} are accepted", param="body", max_body_bytes=limit
        )


async def read_body(request: Request, limit: int) -> bytes:
    """The body, never read past `limit` bytes: a client that declares no length
    (chunked) or a false one cannot make the gateway buffer more than that."""
    declared = request.headers.get("content-length", "")
    # ASCII digits only: str.isdigit() also takes '²', which int() refuses.
    if re.fullmatch(r"[0-9]{1,19}", declared):
        check_body_size(int(declared), limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"body exceeds {limit} bytes, the most accepted", param="body", max_body_bytes=limit)
        chunks.append(chunk)
    return b"".join(chunks)


# `input_reference[image_url]` and `[file_id]`: how the SDK's form encoding flattens the JSON object.
IMAGE_SUBFIELD = re.compile(r"input_reference\[(image_url|file_id)\]")


async def _form_fields(request: Request, body: bytes, content_type: str) -> list[tuple[str, str | bytes]]:
    """(name, value) pairs of a urlencoded or multipart body, with part counts bounded; a file
    part's value is its bytes (read before the form, and its spooled file, is closed)."""
    if content_type.startswith("application/x-www-form-urlencoded"):
        try:
            return parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
        except ValueError as exc:  # bad UTF-8, too many fields
            raise InvalidRequest(f"form body is not valid: {exc}", param="body") from None

    async def replay():
        yield body

    # Parsed from the bytes already read (and bounded) rather than request.form(),
    # whose limit errors would surface as a bare 400 without our error shape.
    parser = MultiPartParser(
        request.headers, replay(), max_files=1, max_fields=MAX_FORM_FIELDS, max_part_size=len(body) + 1
    )
    try:
        form = await parser.parse()
    except (MultiPartException, KeyError, ValueError) as exc:  # KeyError: no boundary
        reason = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        raise InvalidRequest(f"multipart body is not valid: {reason}", param="body") from None
    try:
        items: list[tuple[str, str | bytes]] = []
        for key, value in form.multi_items():
            items.append((key, value if isinstance(value, str) else await value.read()))
        return items
    finally:
        await form.close()


async def read_create_request(
    request: Request, max_body_bytes: int = MAX_BODY_BYTES, image_input: ImageInputOptions | None = None
) -> CreateVideoRequest:
    """JSON or multipart/form-data (the OpenAI SDK sends multipart). `image_input`: the limits of
    an `input_reference` image (None or disabled: no image is accepted, nor the room for one)."""
    allowance = body_allowance(image_input)
    try:
        body = await read_body(request, max_body_bytes + allowance)
    except RequestTooLarge as exc:
        if not allowance or image_input is None:
            raise
        # Say what the two limits are: a large image is the likely cause, not the fields.
        raise RequestTooLarge(
            f"{exc.message}: {max_body_bytes} bytes of fields plus an {IMAGE_FIELD} image of at most "
            f"{image_input.max_bytes} bytes (4/3 of that as base64)",
            param="body",
            max_body_bytes=max_body_bytes,
            max_image_bytes=image_input.max_bytes,
        ) from None
    if len(body) > max_body_bytes and IMAGE_FIELD.encode() not in body:
        # Only an image may take the body past the plain limit: without one, nothing is parsed.
        check_body_size(len(body), max_body_bytes)
    content_type = request.headers.get("content-type", "")
    upload: bytes | None = None
    if content_type.startswith("multipart/form-data") or content_type.startswith("application/x-www-form-urlencoded"):
        fields: dict = {}
        for key, value in await _form_fields(request, body, content_type):
            if isinstance(value, bytes):
                if key != IMAGE_FIELD:
                    raise InvalidRequest(f"{short(key)}: only {IMAGE_FIELD} may be a file part", param=key)
                refuse_if_off(image_input)
                if upload is not None:
                    raise InvalidRequest(f"{IMAGE_FIELD} is given more than once", param=key)
                upload = value
                continue
            sub = IMAGE_SUBFIELD.fullmatch(key)
            if sub is not None:
                reference = fields.setdefault(IMAGE_FIELD, {})
                if not isinstance(reference, dict) or sub.group(1) in reference:
                    raise InvalidRequest(f"{short(key)} is given more than once", param=key)
                reference[sub.group(1)] = value
                continue
            if key == IMAGE_FIELD:
                raise InvalidRequest(
                    f"{IMAGE_FIELD} in a form must be a file part (or give {IMAGE_FIELD}[image_url])", param=key
                )
            if key in fields:
                raise InvalidRequest(f"{short(key)} is given more than once", param=key)
            fields[key] = value
        if upload is not None and IMAGE_FIELD in fields:
            raise InvalidRequest(f"{IMAGE_FIELD} is given more than once", param=IMAGE_FIELD)
    else:
        fields = json_object(body)
    _check_rest_of_body(len(body), fields, upload, max_body_bytes)
    try:
        parsed = CreateVideoRequest.model_validate(fields)
    except ValidationError as exc:
        raise first_error(exc.errors()) from None
    parsed._uploaded_image = upload
    return parsed


def json_object(body: bytes) -> dict:
    """A JSON body that must be an object; anything else is a 400 naming `body`."""
    try:
        fields = json.loads(body or b"null")
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"body is not valid JSON: {exc.msg}", param="body") from None
    except (ValueError, RecursionError) as exc:
        # Not UTF-8, an integer beyond Python's 4300-digit limit, or nesting
        # deeper than the recursion limit: still the client's body at fault.
        raise InvalidRequest(f"body is not valid JSON: {type(exc).__name__}", param="body") from None
    if not isinstance(fields, dict):
        raise InvalidRequest("body must be a JSON object", param="body")
    return fields


async def read_remix_request(request: Request, max_body_bytes: int = MAX_BODY_BYTES) -> RemixVideoRequest:
    """POST /v1/videos/{id}/remix's JSON body (the SDK sends JSON), within the plain body limit."""
    fields = json_object(await read_body(request, max_body_bytes))
    try:
        return RemixVideoRequest.model_validate(fields)
    except ValidationError as exc:
        raise first_error(exc.errors()) from None


def _check_rest_of_body(n_bytes: int, fields: dict, upload: bytes | None, max_body_bytes: int) -> None:
    """Everything but the image within the plain body limit (the image has its own)."""
    image = len(upload) if upload is not None else 0
    reference = fields.get(IMAGE_FIELD)
    if isinstance(reference, dict) and isinstance(reference.get("image_url"), str):
        image = len(reference["image_url"])  # base64: one byte per character
    if n_bytes - image > max_body_bytes:
        raise RequestTooLarge(
            f"body has {n_bytes - image} bytes besides {IMAGE_FIELD}; at most {max_body_bytes} are accepted",
            param="body",
            max_body_bytes=max_body_bytes,
        )
