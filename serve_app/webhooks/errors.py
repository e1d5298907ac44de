"""The errors of a refused webhook URL: a 400 at submission, the end (or a retry) of a delivery."""

from __future__ import annotations

from typing import Any

from serve_app.errors import InvalidRequest


class WebhookRejected(InvalidRequest):
    """The webhook URL is not an allowed destination (HTTP 400, param 'webhook_url')."""

    code = "invalid_webhook_url"

    def __init__(self, message: str, *, param: str | None = "webhook_url", **details: Any) -> None:
        super().__init__(message, param=param, **details)


class WebhookUnresolved(WebhookRejected):
    """The webhook host did not resolve. At submission this is a 400; during
    delivery it is retried, because DNS failures are often transient."""

    code = "webhook_host_unresolved"
