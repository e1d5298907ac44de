"""Reading a create request's body: JSON, urlencoded or multipart/form-data
(the OpenAI SDK sends multipart), never more than a bounded number of bytes
and parts, before anything is validated."""

from __future__ import annotations

import json
import re
from urllib.parse import parse_qsl

from fastapi import Request
from pydantic import ValidationError
from starlette.formparsers import MultiPartException, MultiPartParser

from serve_app.api.error_handlers import first_error, short
from serve_app.api.protocol import CreateVideoRequest
from serve_app.errors import InvalidRequest, RequestTooLarge

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


async def _form_fields(request: Request, body: bytes, content_type: str) -> list[tuple[str, object]]:
    """(name, value) pairs of a urlencoded or multipart body, with part counts bounded."""
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
        return list(form.multi_items())
    finally:
        await form.close()


async def read_create_request(request: Request, max_body_bytes: int = MAX_BODY_BYTES) -> CreateVideoRequest:
    """JSON or multipart/form-data (the OpenAI SDK sends multipart)."""
    body = await read_body(request, max_body_bytes)
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data") or content_type.startswith("application/x-www-form-urlencoded"):
        fields: dict = {}
        for key, value in await _form_fields(request, body, content_type):
            if not isinstance(value, str):
                raise InvalidRequest(f"{key}: file uploads are not supported (text-to-video only)", param=key)
            if key in fields:
                raise InvalidRequest(f"{short(key)} is given more than once", param=key)
            fields[key] = value
    else:
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
    try:
        return CreateVideoRequest.model_validate(fields)
    except ValidationError as exc:
        raise first_error(exc.errors()) from None
