"""The SSRF destination check: schemes, the allowlist, non-public addresses, literals, resolution."""

from __future__ import annotations

import pytest

from serve_app.errors import InvalidRequest
from serve_app.webhooks import WebhookConfig, WebhookRejected, WebhookUnresolved, check_destination
from tests.helpers.webhooks import PUBLIC_IP, SECRET, local_config, resolver_for

WILDCARD = WebhookConfig(secret=SECRET, allowed_hosts=["*.example.com", "hooks.partner.net"])


def test_rejection_is_a_400_on_webhook_url():
    with pytest.raises(WebhookRejected) as info:
        check_destination("https://evil.net/x", WILDCARD, resolver=resolver_for({}))
    err = info.value
    assert isinstance(err, InvalidRequest)
    assert (err.status_code, err.param, err.code) == (400, "webhook_url", "invalid_webhook_url")
    assert err.to_dict()["error"]["param"] == "webhook_url"


@pytest.mark.parametrize(
    "url, allow_http",
    [
        ("http://a.example.com/hook", False),
        ("ftp://a.example.com/hook", True),
        ("file:///etc/passwd", True),
        ("gopher://a.example.com/", True),
    ],
)
def test_rejects_schemes(url, allow_http):
    config = WebhookConfig(secret=SECRET, allowed_hosts=["*.example.com"], allow_http=allow_http)
    with pytest.raises(WebhookRejected, match="scheme"):
        check_destination(url, config, resolver=resolver_for({"a.example.com": [PUBLIC_IP]}))


def test_http_is_accepted_when_allowed():
    config = WebhookConfig(secret=SECRET, allowed_hosts=["*.example.com"], allow_http=True)
    resolve = resolver_for({"a.example.com": [PUBLIC_IP]})
    assert check_destination("http://a.example.com/hook", config, resolver=resolve) == (PUBLIC_IP,)
    assert resolve.calls == [("a.example.com", 80)]


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.net/hook",
        "https://example.com/hook",  # '*.example.com' is subdomains only
        "https://example.com.evil.net/hook",
        "https://evilexample.com/hook",
        "https://a.example.com.evil.net/hook",
        "https://partner.net/hook",
        "https://localhost/hook",
        "https://2130706433/hook",  # 127.0.0.1 as one decimal number
        "https://0x7f.1/hook",
        f"https://{PUBLIC_IP}/hook",  # a literal address needs an IP entry
    ],
)
def test_rejects_hosts_not_in_allowlist(url):
    resolve = resolver_for({})
    with pytest.raises(WebhookRejected, match="not in allowed_hosts"):
        check_destination(url, WILDCARD, resolver=resolve)
    assert resolve.calls == []  # rejected before any DNS lookup


@pytest.mark.parametrize(
    "url",
    ["https://a.example.com/hook", "https://deep.sub.a.example.com/hook", "https://A.Example.COM./hook"],
)
def test_wildcard_accepts_subdomains_resolving_to_public_addresses(url):
    resolve = resolver_for({"a.example.com": [PUBLIC_IP], "deep.sub.a.example.com": [PUBLIC_IP, "2606:2800:220:1::1"]})
    assert PUBLIC_IP in check_destination(url, WILDCARD, resolver=resolve)
    assert resolve.calls[0][1] == 443


def test_exact_name_entry():
    resolve = resolver_for({"hooks.partner.net": [PUBLIC_IP]})
    assert check_destination("https://hooks.partner.net:8443/x", WILDCARD, resolver=resolve) == (PUBLIC_IP,)
    assert resolve.calls == [("hooks.partner.net", 8443)]


@pytest.mark.parametrize(
    "bad_ip",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # carrier-grade NAT
        "0.0.0.0",
        "224.0.0.1",  # multicast: Python 3.11 calls it is_global
        "240.0.0.1",
        "::1",
        "::",
        "fe80::1",
        "fd00::1",
        "ff02::1",
        "::ffff:127.0.0.1",  # IPv4-mapped loopback
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    ],
)
def test_allowlisted_name_resolving_to_non_public_address_is_rejected(bad_ip):
    resolve = resolver_for({"a.example.com": [bad_ip]})
    with pytest.raises(WebhookRejected, match="non-public address"):
        check_destination("https://a.example.com/hook", WILDCARD, resolver=resolve)


def test_any_bad_address_among_several_rejects():
    resolve = resolver_for({"a.example.com": [PUBLIC_IP, "127.0.0.1"]})
    with pytest.raises(WebhookRejected, match="127.0.0.1"):
        check_destination("https://a.example.com/hook", WILDCARD, resolver=resolve)


def test_default_resolver_catches_localhost():
    """No injected resolver: the real getaddrinfo answers for 'localhost' (no network needed)."""
    config = WebhookConfig(secret=SECRET, allowed_hosts=["localhost"])
    with pytest.raises(WebhookRejected, match="non-public address"):
        check_destination("https://localhost/hook", config)


def test_explicit_network_entry_permits_private_addresses():
    config = WebhookConfig(secret=SECRET, allowed_hosts=["hooks.internal", "10.0.0.0/8", "fd00::/8"])
    resolve = resolver_for({"hooks.internal": ["10.1.2.3", "fd00::7"]})
    assert check_destination("https://hooks.internal/x", config, resolver=resolve) == ("10.1.2.3", "fd00::7")
    assert check_destination("https://10.9.9.9/x", config) is None
    assert check_destination("https://[fd00::1]:8443/x", config) is None
    resolve = resolver_for({"hooks.internal": ["10.1.2.3", "192.168.1.1"]})
    with pytest.raises(WebhookRejected, match="192.168.1.1"):
        check_destination("https://hooks.internal/x", config, resolver=resolve)


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.2/hook", "http://[::1]/hook", "http://0.0.0.0/hook", "http://[::]/hook", "http://10.0.0.1/"],
)
def test_literal_addresses_need_an_exact_ip_entry(url):
    with pytest.raises(WebhookRejected, match="not in allowed_hosts"):
        check_destination(url, local_config())


def test_literal_allowlisted_address_is_accepted_including_mapped_form():
    assert check_destination("http://127.0.0.1:8080/hook", local_config()) is None
    assert check_destination("http://[::ffff:127.0.0.1]:8080/hook", local_config()) is None


@pytest.mark.parametrize(
    "url",
    ["https://user:pw@a.example.com/hook", "https://user@a.example.com/hook", "https://:pw@a.example.com/hook"],
)
def test_rejects_userinfo(url):
    with pytest.raises(WebhookRejected, match="credentials"):
        check_destination(url, WILDCARD, resolver=resolver_for({"a.example.com": [PUBLIC_IP]}))


@pytest.mark.parametrize(
    "url", ["", "not a url", "https://", "https:///path", "https://a.example.com:99999/", "https://a.example.com:0/"]
)
def test_rejects_malformed_urls(url):
    with pytest.raises(WebhookRejected):
        check_destination(url, WILDCARD, resolver=resolver_for({"a.example.com": [PUBLIC_IP]}))


def test_unresolvable_name_is_its_own_rejection():
    with pytest.raises(WebhookUnresolved, match="does not resolve") as info:
        check_destination("https://nope.example.com/", WILDCARD, resolver=resolver_for({}))
    assert info.value.code == "webhook_host_unresolved" and info.value.param == "webhook_url"


def test_disabled_rejects_everything():
    config = WebhookConfig(enabled=False, allowed_hosts=["127.0.0.1"], allow_http=True)
    with pytest.raises(WebhookRejected, match="disabled"):
        check_destination("http://127.0.0.1/hook", config)
