"""Webhook delivery: Standard-Webhooks signatures, an SSRF-safe destination check, retries.

A webhook URL is chosen by the client but fetched by us, from inside the
cluster, so it is a server-side request forgery vector: every destination
must match an operator allowlist, and every address its name resolves to must
be public unless the operator allowlisted that address (or its network)
explicitly. The check runs before *every* attempt because DNS answers change
between retries, and the request is then sent to the address that was checked
(pinned), so a second, different DNS answer (rebinding) cannot slip in between
check and connect.

Signatures follow the Standard Webhooks spec (https://www.standardwebhooks.com):

    webhook-id:        msg_<hex>                 (same across retries; receivers dedupe on it)
    webhook-timestamp: <epoch seconds>           (fresh per attempt; receivers reject stale ones)
    webhook-signature: v1,<base64 HMAC-SHA256(secret, f"{id}.{timestamp}.{body}")>
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import Field, field_validator, model_validator

from serve_app.errors import InvalidRequest
from serve_app.settings.base import StrictModel

logger = logging.getLogger("ray.serve")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# (host, port) -> IP address strings. The default wraps socket.getaddrinfo.
Resolver = Callable[[str, int], Iterable[str]]

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"


# --------------------------------------------------------------------------- errors


class WebhookRejected(InvalidRequest):
    """The webhook URL is not an allowed destination (HTTP 422, param 'webhook_url')."""

    code = "invalid_webhook_url"

    def __init__(self, message: str, *, param: str | None = "webhook_url", **details: Any) -> None:
        super().__init__(message, param=param, **details)


class WebhookUnresolved(WebhookRejected):
    """The webhook host did not resolve. At submission this is a 422; during
    delivery it is retried, because DNS failures are often transient."""

    code = "webhook_host_unresolved"


# --------------------------------------------------------------------------- config


class WebhookConfig(StrictModel):
    """Where webhooks may go, how they are signed, and how hard delivery tries."""

    enabled: bool = Field(
        True, description="Accept webhook URLs at all. When false, every webhook URL is rejected."
    )
    # repr=False: configs get logged; the secret must not be.
    secret: str = Field(
        "",
        repr=False,
        description="Signing secret. 'whsec_<base64>' uses the decoded bytes (Standard Webhooks); "
        "any other string its UTF-8 bytes. Required (non-empty) when `enabled`.",
    )
    allowed_hosts: tuple[str, ...] = Field(
        (),
        description="Destinations webhooks may reach: exact host names ('hooks.example.com'), "
        "suffix patterns ('*.example.com' matches any subdomain, not 'example.com' itself), or "
        "IP addresses / CIDRs ('127.0.0.1', '10.0.0.0/8', 'fd00::/8'). IP entries also permit "
        "names that resolve to those non-public addresses. Empty: no destination is allowed.",
    )
    max_attempts: int = Field(5, ge=1, le=100, description="Delivery attempts per webhook, first one included.")
    backoff_initial_s: float = Field(
        1.0, ge=0, description="Delay before the 2nd attempt; doubles after each failure."
    )
    backoff_max_s: float = Field(60.0, ge=0, description="Cap on the delay between two attempts.")
    timeout_s: float = Field(
        10.0, gt=0, description="Wall-clock limit of one attempt (connect, send, response headers)."
    )
    allow_http: bool = Field(
        False, description="Also allow plain http:// URLs (tests, trusted networks); https only when false."
    )

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _normalise_hosts(cls, v: Any) -> Any:
        if isinstance(v, str):
            raise ValueError(f"allowed_hosts={v!r} must be a list of host entries, not one string")
        return v

    @field_validator("allowed_hosts")
    @classmethod
    def _check_hosts(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for entry in v:
            _parse_host_entry(entry)  # raises ValueError quoting the entry
        return v

    @field_validator("secret")
    @classmethod
    def _check_secret(cls, v: str) -> str:
        if v.startswith(SECRET_PREFIX):
            try:
                _secret_bytes(v)
            except ValueError:
                # Never quote the secret itself in an error message.
                raise ValueError(f"secret starts with {SECRET_PREFIX!r} but the rest is not valid base64") from None
        return v

    @model_validator(mode="after")
    def _check_consistency(self) -> WebhookConfig:
        if self.enabled and not self.secret:
            raise ValueError("secret must be non-empty when enabled=True (unsigned webhooks are not sent)")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError(
                f"backoff_max_s={self.backoff_max_s} must be >= backoff_initial_s={self.backoff_initial_s}"
            )
        return self


@dataclass(frozen=True)
class _HostRules:
    names: frozenset[str]
    suffixes: tuple[str, ...]  # ".example.com" for "*.example.com"
    networks: tuple[IPNetwork, ...]


def _parse_host_entry(entry: str) -> str | IPNetwork:
    """One allowlist entry -> a normalised host name / '*.suffix' pattern, or an IP network."""
    if not isinstance(entry, str) or not entry.strip():
        raise ValueError(f"allowed_hosts entry {entry!r} is empty")
    text = entry.strip()
    try:
        # strict: '10.0.0.1/8' is a typo for '10.0.0.0/8' or '10.0.0.1'; refuse to guess.
        return ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        if "/" in text or _looks_like_ip(text):
            raise ValueError(f"allowed_hosts entry {entry!r} is not a valid IP address or CIDR: {e}") from None
    name = text.lower().rstrip(".")
    if not name.isascii():
        raise ValueError(f"allowed_hosts entry {entry!r} must be ASCII; write IDN hosts in punycode (xn--...)")
    pattern = name[2:] if name.startswith("*.") else name
    if not pattern or "*" in pattern or any(c in pattern for c in ":/@?# "):
        raise ValueError(
            f"allowed_hosts entry {entry!r} must be a host name, '*.suffix', or an IP/CIDR "
            "(no scheme, port, path or other wildcards)"
        )
    return name


def _looks_like_ip(text: str) -> bool:
    return ":" in text or text.replace(".", "").isdigit()


def _host_rules(config: WebhookConfig) -> _HostRules:
    names, suffixes, networks = set(), [], []
    for entry in config.allowed_hosts:
        parsed = _parse_host_entry(entry)
        if isinstance(parsed, str):
            if parsed.startswith("*."):
                suffixes.append(parsed[1:])
            else:
                names.add(parsed)
        else:
            networks.append(parsed)
    return _HostRules(frozenset(names), tuple(suffixes), tuple(networks))


# --------------------------------------------------------------------------- signing


def _secret_bytes(secret: str) -> bytes:
    if secret.startswith(SECRET_PREFIX):
        try:
            return base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
        except binascii.Error as e:
            raise ValueError("whsec_ secret is not valid base64") from e
    return secret.encode("utf-8")


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value for one message: 'v1,<base64 HMAC-SHA256>'."""
    # The body is signed as bytes, exactly as sent: re-serialising JSON would
    # not reproduce them (key order, spacing, escapes).
    content = f"{msg_id}.{int(timestamp)}.".encode() + body
    digest = hmac.new(_secret_bytes(secret), content, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


def signature_headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp)),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    tolerance_s: float = 300,
    now: float | None = None,
) -> bool:
    """True when `headers` carry a valid, fresh signature of `body` under `secret`.

    Accepts several space-separated signatures (secret rotation) and ignores
    versions other than v1. A timestamp further than `tolerance_s` from `now`
    either way is rejected: that is what stops replays of captured requests.
    """
    lowered = {str(k).lower(): v for k, v in headers.items()}
    msg_id = lowered.get("webhook-id")
    ts_text = lowered.get("webhook-timestamp")
    sig_text = lowered.get("webhook-signature")
    if not msg_id or not ts_text or not sig_text:
        return False
    try:
        timestamp = int(ts_text)
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        return False
    expected = sign(secret, msg_id, timestamp, body).encode("ascii")
    ok = False
    for candidate in sig_text.split():
        version, _, _value = candidate.partition(",")
        if version != SIGNATURE_VERSION:
            continue
        # Compare every candidate (no early exit) in constant time, so timing
        # tells an attacker neither which one nor how much of it matched.
        ok |= hmac.compare_digest(candidate.encode("utf-8", "replace"), expected)
    return ok


# --------------------------------------------------------------------------- destination check


def _default_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [info[4][0] for info in infos]


def _embedded_ipv4(ip: IPAddress) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries (mapped, 6to4, Teredo, NAT64):
    '::ffff:127.0.0.1' reaches 127.0.0.1 on a dual-stack socket."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    out = []
    if ip.ipv4_mapped is not None:
        out.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        out.append(ip.sixtofour)
    if ip.teredo is not None:
        out.append(ip.teredo[1])
    if ip in _NAT64:
        out.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return out


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _is_public(ip: IPAddress) -> bool:
    # `is_global` alone misses multicast (224.0.0.0/4 counts as global on
    # Python 3.11), so every category is tested.
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return False
    return ip.is_global and not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


def _in_networks(ip: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    # Mixed versions are simply "not in" for ipaddress, so no version check here.
    return any(ip in net for net in networks)


def _check_address(ip: IPAddress, rules: _HostRules, url_for_msg: str) -> None:
    """Reject `ip` unless it (and every IPv4 it embeds) is public or explicitly allowlisted."""
    forms = [ip, *_embedded_ipv4(ip)]
    if any(_in_networks(f, rules.networks) for f in forms):
        return
    bad = [f for f in forms if not _is_public(f)]
    if bad:
        raise WebhookRejected(
            f"webhook_url={url_for_msg!r} reaches non-public address {str(bad[0])!r} "
            "(private, loopback, link-local, multicast, reserved or unspecified); "
            "list that address or its network in allowed_hosts to permit it",
            address=str(ip),
        )


def _parse_ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def redact_url(url: httpx.URL | str) -> str:
    """scheme://host:port/path: query strings often carry tokens and must not reach logs."""
    u = url if isinstance(url, httpx.URL) else httpx.URL(url)
    return str(u.copy_with(userinfo=b"", query=None, fragment=None)) if u.host else "<invalid url>"


def check_destination(url: str, config: WebhookConfig, resolver: Resolver | None = None) -> tuple[str, ...] | None:
    """Raise `WebhookRejected` unless `url` is an allowed webhook destination.

    Returns the resolved addresses (all checked) for a host name, so the caller
    can connect to exactly those; None when the host is an IP literal.
    Raises `WebhookUnresolved` (a `WebhookRejected`) when the name does not resolve.
    """
    if not config.enabled:
        raise WebhookRejected("webhooks are disabled on this service; remove webhook_url")
    # httpx parses the URL here *and* when sending, so the check and the
    # request cannot disagree about which host is meant (parser differentials
    # are a classic SSRF bypass).
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as e:
        raise WebhookRejected(f"webhook_url is not a valid URL: {e}") from None
    safe = redact_url(parsed) if parsed.host else "<no host>"
    allowed_schemes = ("https", "http") if config.allow_http else ("https",)
    if parsed.scheme not in allowed_schemes:
        raise WebhookRejected(
            f"webhook_url={safe!r} has scheme {parsed.scheme!r}; allowed: {list(allowed_schemes)}"
        )
    if parsed.userinfo:
        raise WebhookRejected("webhook_url must not contain credentials (user:password@)")
    if not parsed.host:
        raise WebhookRejected("webhook_url has no host")
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        raise WebhookRejected(f"webhook_url has port {parsed.port}; ports are 1..65535")

    rules = _host_rules(config)
    host = parsed.raw_host.decode("ascii").lower().rstrip(".")
    literal = _parse_ip(host)
    if literal is not None:
        # Host-name entries never match a literal address: an IP must be
        # allowlisted as an IP (or network) to be reachable directly.
        forms = [literal, *_embedded_ipv4(literal)]
        if not any(_in_networks(f, rules.networks) for f in forms):
            raise WebhookRejected(
                f"webhook_url={safe!r}: address {host!r} is not in allowed_hosts", host=host
            )
        _check_address(literal, rules, safe)
        return None

    if host not in rules.names and not any(host.endswith(s) for s in rules.suffixes):
        raise WebhookRejected(f"webhook_url={safe!r}: host {host!r} is not in allowed_hosts", host=host)

    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        addresses = list((resolver or _default_resolver)(host, port))
    except (OSError, UnicodeError) as e:
        raise WebhookUnresolved(f"webhook_url={safe!r}: host {host!r} does not resolve: {e}", host=host) from None
    if not addresses:
        raise WebhookUnresolved(f"webhook_url={safe!r}: host {host!r} resolved to no address", host=host)
    checked = []
    for text in addresses:
        # getaddrinfo may append an IPv6 zone ('fe80::1%eth0'); ipaddress keeps it, fine.
        ip = _parse_ip(text)
        if ip is None:
            raise WebhookRejected(f"webhook_url={safe!r}: resolver returned non-address {text!r}", host=host)
        # ANY bad address rejects: the OS may connect to whichever one it likes.
        _check_address(ip, rules, safe)
        checked.append(str(ip))
    return tuple(dict.fromkeys(checked))


# --------------------------------------------------------------------------- delivery


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
    checked before every attempt. `msg_id` (default: a fresh 'msg_<hex>')
    stays the same across attempts so receivers can deduplicate; pass a
    stable one (e.g. derived from the job id) if delivery may be restarted.
    """
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
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
                msg_id, safe_url, attempts, config.max_attempts, last_error,
            )
    finally:
        if own_client:
            await client.aclose()
    logger.error("webhook %s to %s failed after %d attempts: %s", msg_id, safe_url, attempts, last_error)
    return DeliveryResult(False, attempts, last_status, last_error, msg_id)
