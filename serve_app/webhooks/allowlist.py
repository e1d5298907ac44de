"""The operator's allowlist of webhook destinations: parsing its entries into host and network rules.

Parsed once when `WebhookConfig` is validated (so a bad entry fails at
start-up, quoted) and again per destination check, where the rules are used.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class HostRules:
    """An allowlist, parsed: exact names, '*.suffix' patterns, and IP networks."""

    names: frozenset[str]
    suffixes: tuple[str, ...]  # ".example.com" for "*.example.com"
    networks: tuple[IPNetwork, ...]


def parse_host_entry(entry: str) -> str | IPNetwork:
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


def host_rules(allowed_hosts: Iterable[str]) -> HostRules:
    """`WebhookConfig.allowed_hosts` as rules (its validator has already refused bad entries)."""
    names, suffixes, networks = set(), [], []
    for entry in allowed_hosts:
        parsed = parse_host_entry(entry)
        if isinstance(parsed, str):
            if parsed.startswith("*."):
                suffixes.append(parsed[1:])
            else:
                names.add(parsed)
        else:
            networks.append(parsed)
    return HostRules(frozenset(names), tuple(suffixes), tuple(networks))
