"""Webhook test inputs: a secret, a payload, a config for a local receiver, and fakes for DNS, sleep and the clock."""

from __future__ import annotations

import socket

from serve_app.webhooks import WebhookConfig

SECRET = "test-secret"
T0 = 1_700_000_000
PAYLOAD = {"id": "video_123", "object": "video", "status": "completed", "prompt": "a cat \U0001f431 in \u00e9t\u00e9"}
PUBLIC_IP = "93.184.216.34"


def local_config(**overrides) -> WebhookConfig:
    kwargs = dict(secret=SECRET, allowed_hosts=["127.0.0.1"], allow_http=True)
    kwargs.update(overrides)
    return WebhookConfig(**kwargs)


def resolver_for(mapping: dict[str, list[str]]):
    """A DNS stand-in: names in `mapping` resolve to its addresses, others fail like getaddrinfo; `.calls` records."""
    calls = []

    def resolve(host: str, port: int) -> list[str]:
        calls.append((host, port))
        if host not in mapping:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return mapping[host]

    resolve.calls = calls
    return resolve


class RecordingSleep:
    """Records the backoff delays instead of waiting them out."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


class Clock:
    """Advances 7 s per reading, so every attempt gets a distinct timestamp."""

    def __init__(self) -> None:
        self.readings: list[float] = []

    def __call__(self) -> float:
        t = T0 + 7 * len(self.readings)
        self.readings.append(t)
        return t
