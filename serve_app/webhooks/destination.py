"""The SSRF-safe destination check: is a client-chosen webhook URL one we may fetch?

A webhook URL is chosen by the client but fetched by us, from inside the
cluster, so it is a server-side request forgery vector: every destination
must match an operator allowlist, and every address its name resolves to must
be public unless the operator allowlisted that address (or its network)
explicitly. The check runs before *every* attempt because DNS answers change
between retries, and the request is then sent to the address that was checked
(pinned, serve_app/webhooks/delivery.py), so a second, different DNS answer
(rebinding) cannot slip in between check and connect.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable

import httpx

from serve_app.webhooks.allowlist import HostRules, IPAddress, IPNetwork, host_rules
from serve_app.webhooks.config import WebhookConfig
from serve_app.webhooks.errors import WebhookRejected, WebhookUnresolved

# (host, port) -> IP address strings. The default wraps socket.getaddrinfo.
Resolver = Callable[[str, int], Iterable[str]]

# The well-known NAT64 prefix: its last 32 bits are the IPv4 address a gateway reaches.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


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


def _is_public(ip: IPAddress) -> bool:
    # `is_global` alone misses multicast (224.0.0.0/4 counts as global on
    # Python 3.11), so every category is tested.
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return False
    return ip.is_global and not (
        ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved or ip.is_unspecified
    )


def _in_networks(ip: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    # Mixed versions are simply "not in" for ipaddress, so no version check here.
    return any(ip in net for net in networks)


def _check_address(ip: IPAddress, rules: HostRules, url_for_msg: str) -> None:
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
        raise WebhookRejected(f"webhook_url={safe!r} has scheme {parsed.scheme!r}; allowed: {list(allowed_schemes)}")
    if parsed.userinfo:
        raise WebhookRejected("webhook_url must not contain credentials (user:password@)")
    if not parsed.host:
        raise WebhookRejected("webhook_url has no host")
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        raise WebhookRejected(f"webhook_url has port {parsed.port}; ports are 1..65535")

    rules = host_rules(config.allowed_hosts)
    host = parsed.raw_host.decode("ascii").lower().rstrip(".")
    literal = _parse_ip(host)
    if literal is not None:
        # Host-name entries never match a literal address: an IP must be
        # allowlisted as an IP (or network) to be reachable directly.
        forms = [literal, *_embedded_ipv4(literal)]
        if not any(_in_networks(f, rules.networks) for f in forms):
            raise WebhookRejected(f"webhook_url={safe!r}: address {host!r} is not in allowed_hosts", host=host)
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
