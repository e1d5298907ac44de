"""Delivery: POST a signed JSON body to the checked (pinned) address, retrying with backoff."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from serve_app.webhooks.config import WebhookConfig
from serve_app.webhooks.destination import Resolver, check_destination, redact_url
from serve_app.webhooks.errors import WebhookRejected, WebhookUnresolved
from serve_app.webhooks.events import outcome_digest
from serve_app.webhooks.signing import signature_headers

logger = logging.getLogger("ray.serve")


def message_id(payload: Any) -> str:
    """'msg_<hex>': for a video's event (events.py), the hex of its event id, which is derived
    from the video's id and outcome (and for a bare video object the same, from its id and
    status), so every sending of one job's outcome (a retry, a gateway's second try after a
    restart, the same answer sent twice) carries one id a receiver can deduplicate on;
    otherwise a fresh one."""
    if isinstance(payload, dict):
        event_id = payload.get("id")
        if payload.get("object") == "event" and isinstance(event_id, str) and event_id.startswith("evt_"):
            return "msg_" + event_id.removeprefix("evt_")
        if isinstance(event_id, str) and isinstance(payload.get("status"), str):
            return "msg_" + outcome_digest(event_id, payload["status"])
    return f"msg_{uuid.uuid4().hex}"


@dataclass
class DeliveryResult:
    delivered: bool
    attempts: int
    last_status: int | None
    last_error: str | None
    msg_id: str | None = None


def backoff_delay(config: WebhookConfig, failures: int, random: Callable[[], float] | None = None) -> float:
    """Delay after the `failures`-th failure (1-based): initial * 2^(failures-1), capped.

    With `random` (e.g. `random.random`), "full jitter": uniform in [0, capped),
    which spreads retries of many failed webhooks after an outage.
    """
    # min() before the power overflows: 2**1000 as a float raises.
    exponent = min(failures - 1, 64)
    capped = min(config.backoff_max_s, config.backoff_initial_s * (2.0**exponent))
    return capped * random() if random is not None else capped


def longest_delivery_s(config: WebhookConfig) -> float:
    """How long one `deliver` call can take with every attempt timing out: the attempts'
    timeouts plus the backoffs between them (DNS lookups aside, which have no timeout)."""
    waits = sum(backoff_delay(config, failures) for failures in range(1, config.max_attempts))
    return config.max_attempts * config.timeout_s + waits


def _pinned_request_target(parsed: httpx.URL, addresses: tuple[str, ...] | None) -> tuple[httpx.URL, dict, dict]:
    """(URL to connect to, extra headers, request extensions) for the checked address.

    The URL's host becomes the checked IP; Host and TLS SNI keep the name, so
    virtual hosting and certificate verification work as without pinning.
    """
    if not addresses:
        return parsed, {}, {}
    ip = ipaddress.ip_address(addresses[0])
    host_header = parsed.raw_host.decode("ascii")
    if parsed.port is not None:
        host_header = f"{host_header}:{parsed.port}"
    # Zone ids ('%eth0') are not valid in a URL host; drop them for the literal.
    ip_text = str(ip).split("%")[0]
    target = parsed.copy_with(host=ip_text)
    extensions = {"sni_hostname": parsed.raw_host.decode("ascii")} if parsed.scheme == "https" else {}
    return target, {"Host": host_header}, extensions


async def deliver(
    url: str,
    payload: dict,
    config: WebhookConfig,
    *,
    client: httpx.AsyncClient | None = None,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    now: Callable[[], float] = time.time,
    resolver: Resolver | None = None,
    random: Callable[[], float] | None = None,
    msg_id: str | None = None,
) -> DeliveryResult:
    """POST `payload` as signed JSON to `url`, retrying with backoff; never raises on failure.

    2xx is success. Any other status (3xx included: redirects are never
    followed, they could lead to internal addresses), a timeout or a
    connection error is a failed attempt, retried up to `max_attempts`. A
    destination that `check_destination` rejects stops delivery at once; it is
    checked before every attempt. `msg_id` (default: `message_id(payload)`)
    stays the same across attempts so receivers can deduplicate.
    """
    msg_id = msg_id or message_id(payload)
    try:
        safe_url = redact_url(url)
    except Exception:  # noqa: BLE001 - a bad URL is reported by check_destination below
        safe_url = "<invalid url>"
    try:
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError) as e:
        logger.error("webhook %s to %s not sent: payload is not JSON: %s", msg_id, safe_url, e)
        return DeliveryResult(False, 0, None, f"payload is not JSON-serialisable: {e}", msg_id)

    own_client = client is None
    if own_client:
        # trust_env=False: no proxy variables or .netrc credentials applied to
        # client-chosen URLs. Callers that need an egress proxy pass a client.
        client = httpx.AsyncClient(follow_redirects=False, trust_env=False)
    attempts = 0
    last_status: int | None = None
    last_error: str | None = None
    try:
        while attempts < config.max_attempts:
            if attempts:
                await sleep(backoff_delay(config, attempts, random))
            try:
                # getaddrinfo blocks; keep it off the event loop of the replica.
                addresses = await asyncio.to_thread(check_destination, url, config, resolver)
            except WebhookUnresolved as e:
                attempts += 1
                last_status, last_error = None, e.message
                logger.warning("webhook %s attempt %d/%d: %s", msg_id, attempts, config.max_attempts, e.message)
                continue
            except WebhookRejected as e:
                last_error = e.message
                logger.warning("webhook %s to %s refused, not retried: %s", msg_id, safe_url, e.message)
                return DeliveryResult(False, attempts, last_status, last_error, msg_id)

            attempts += 1
            target, host_header, extensions = _pinned_request_target(httpx.URL(url), addresses)
            timestamp = int(now())
            headers = {
                "content-type": "application/json",
                **host_header,
                **signature_headers(config.secret, msg_id, timestamp, body),
            }
            try:
                # asyncio.timeout bounds the whole attempt; httpx's own timeout
                # is per phase, and a receiver trickling bytes would outlast it.
                async with asyncio.timeout(config.timeout_s):
                    # stream(): the response body is never read, so a huge or
                    # endless answer costs nothing.
                    async with client.stream(
                        "POST",
                        target,
                        content=body,
                        headers=headers,
                        extensions=extensions,
                        follow_redirects=False,
                        timeout=config.timeout_s,
                    ) as response:
                        last_status = response.status_code
            except TimeoutError:
                last_status, last_error = None, f"timed out after {config.timeout_s}s"
            except httpx.TimeoutException as e:
                last_status, last_error = None, f"timed out after {config.timeout_s}s ({type(e).__name__})"
            except Exception as e:  # noqa: BLE001 - httpx errors and anything else: "never raises" is the contract
                last_status, last_error = None, f"{type(e).__name__}: {e}"
            else:
                if 200 <= last_status < 300:
                    logger.info("webhook %s delivered to %s (attempt %d)", msg_id, safe_url, attempts)
                    return DeliveryResult(True, attempts, last_status, None, msg_id)
                last_error = f"HTTP {last_status}"
                if 300 <= last_status < 400:
                    last_error += " (redirects are not followed)"
            logger.warning(
                "webhook %s to %s attempt %d/%d failed: %s",
                msg_id,
                safe_url,
                attempts,
                config.max_attempts,
                last_error,
            )
    finally:
        if own_client:
            await client.aclose()
    logger.error("webhook %s to %s failed after %d attempts: %s", msg_id, safe_url, attempts, last_error)
    return DeliveryResult(False, attempts, last_status, last_error, msg_id)
