"""Webhook delivery: Standard-Webhooks signatures, an SSRF-safe destination check, retries.

A webhook URL is chosen by the client but fetched by us, from inside the
cluster; every destination is checked against an operator allowlist and
resolved to public (or explicitly allowed) addresses before every attempt,
and the request goes to exactly the address that was checked. One module
per concern:

    config.py       WebhookConfig: allowlist, secret, attempts, timeouts
    allowlist.py    parsing allowlist entries into host and network rules
    events.py       video_event: the body, OpenAI's event envelope (video.completed / video.failed)
    signing.py      sign / verify (https://www.standardwebhooks.com), as OpenAI's SDK verifies
    destination.py  check_destination: the SSRF check, DNS pinning
    delivery.py     deliver: signed POST with retries and backoff
    errors.py       WebhookRejected (400), WebhookUnresolved (retried)

Everything callers use is re-exported here: `from serve_app.webhooks import deliver`.
"""

from __future__ import annotations

from serve_app.webhooks.allowlist import IPAddress, IPNetwork
from serve_app.webhooks.config import WebhookConfig
from serve_app.webhooks.delivery import DeliveryResult, backoff_delay, deliver, longest_delivery_s
from serve_app.webhooks.destination import Resolver, check_destination, redact_url
from serve_app.webhooks.errors import WebhookRejected, WebhookUnresolved
from serve_app.webhooks.events import video_event
from serve_app.webhooks.signing import SECRET_PREFIX, SIGNATURE_VERSION, sign, signature_headers, verify

__all__ = [
    "SECRET_PREFIX",
    "SIGNATURE_VERSION",
    "DeliveryResult",
    "IPAddress",
    "IPNetwork",
    "Resolver",
    "WebhookConfig",
    "WebhookRejected",
    "WebhookUnresolved",
    "backoff_delay",
    "check_destination",
    "deliver",
    "longest_delivery_s",
    "redact_url",
    "sign",
    "signature_headers",
    "verify",
    "video_event",
]
