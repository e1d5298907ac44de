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


def webhook_gateway(data_dir, *, cache: bool = False, replica_id: str = "test", **overrides):
    """A gateway as `build_gateway` makes it, over a fake generator, with webhooks on (signed with
    SECRET) to 127.0.0.1 over http, one attempt each; `cache`: with the result cache. Gateways
    over one `data_dir` share their job store and webhook outbox, as replicas on one host do."""
    from deployments.result_cache import ResultCache
    from serve_app.api.gateway_app import GatewayHandles, GatewaySettings, GatewayStores, build_gateway
    from serve_app.artifacts import open_artifact_store
    from serve_app.cache.index import open_cache_index
    from serve_app.config import ServiceArgs
    from serve_app.jobs.stores import open_job_store
    from tests.helpers.fakes import FakeGenerator
    from tests.helpers.service import TEST_TIMINGS, fast_estimator

    base = {
        **TEST_TIMINGS,
        "webhook_allowed_hosts": ["127.0.0.1"],
        "webhook_allow_http": True,
        "webhook_max_attempts": 1,
        "webhook_timeout_s": 60.0,
    }
    args = ServiceArgs(data_dir=str(data_dir), **{**base, **overrides})
    settings = GatewaySettings.load(args, {"WAN_SERVE_WEBHOOK_SECRET": SECRET}, replica_id=replica_id)
    result_cache = ResultCache.func_or_class(args.model_dump()) if cache else None
    stores = GatewayStores(
        jobs=open_job_store(args.job_store, args.data_path),
        artifacts=open_artifact_store(args.artifact_store, args.data_path),
        cache_index=open_cache_index(args.cache_store, args.data_path) if cache else None,
    )
    handles = GatewayHandles(generator=FakeGenerator(), cache=result_cache)
    return build_gateway(settings, handles, stores, admission=False, estimator=fast_estimator())
