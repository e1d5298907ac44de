"""What the Python client (client.py) reads off the wire: the service's JSON errors as one
exception type, and Server-Sent Events parsed from a response's lines."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx


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
