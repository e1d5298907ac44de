"""Webhook signing, the SSRF destination check, and delivery against a real local receiver.

Nothing here sleeps for real: `deliver` gets a `sleep` that records the
backoff delays, and a fake clock for the signature timestamps. The receiver is
an aiohttp server on 127.0.0.1 (port 0) inside the test's own event loop.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
import pytest
from pydantic import ValidationError

from serve_app.errors import InvalidRequest
from serve_app.webhooks import (
    WebhookConfig,
    WebhookRejected,
    WebhookUnresolved,
    backoff_delay,
    check_destination,
    deliver,
    sign,
    verify,
)

web = pytest.importorskip("aiohttp.web")

SECRET = "test-secret"
T0 = 1_700_000_000
PAYLOAD = {"id": "video_123", "object": "video", "status": "completed", "prompt": "a cat \U0001f431 in \u00e9t\u00e9"}
PUBLIC_IP = "93.184.216.34"


def local_config(**overrides) -> WebhookConfig:
    kwargs = dict(secret=SECRET, allowed_hosts=["127.0.0.1"], allow_http=True)
    kwargs.update(overrides)
    return WebhookConfig(**kwargs)


def resolver_for(mapping: dict[str, list[str]]):
    calls = []

    def resolve(host: str, port: int) -> list[str]:
        calls.append((host, port))
        if host not in mapping:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return mapping[host]

    resolve.calls = calls
    return resolve


class RecordingSleep:
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


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    url: str
    port: int
    seen: list[Seen] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)


@asynccontextmanager
async def receiver(respond):
    """A real HTTP server on 127.0.0.1; `respond(rec, request)` makes each answer."""
    rec: Receiver | None = None

    async def handle(request):
        rec.seen.append(Seen(request.path, {k.lower(): v for k, v in request.headers.items()}, await request.read()))
        return await respond(rec, request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    rec = Receiver(url=f"http://127.0.0.1:{port}/hook", port=port)
    try:
        yield rec
    finally:
        rec.release.set()  # un-hang handlers that wait forever
        await runner.cleanup()


def statuses(*codes: int):
    """A responder answering with `codes` in turn, then repeating the last one."""

    async def respond(rec, request):
        code = codes[min(len(rec.seen) - 1, len(codes) - 1)]
        return web.Response(status=code, text="ok" if code < 300 else "no")

    return respond


# --------------------------------------------------------------------------- delivery


def test_delivered_on_200_with_verifiable_signature():
    async def scenario():
        sleep, clock = RecordingSleep(), Clock()
        async with receiver(statuses(200)) as rec:
            result = await deliver(rec.url, PAYLOAD, local_config(), sleep=sleep, now=clock)
        return result, rec, sleep

    result, rec, sleep = asyncio.run(scenario())
    assert (result.delivered, result.attempts, result.last_status, result.last_error) == (True, 1, 200, None)
    assert sleep.delays == []
    [req] = rec.seen
    assert req.path == "/hook"
    assert req.headers["content-type"] == "application/json"
    assert json.loads(req.body) == PAYLOAD
    assert req.headers["webhook-id"].startswith("msg_") and req.headers["webhook-id"] == result.msg_id
    assert req.headers["webhook-timestamp"] == str(T0)
    assert req.headers["webhook-signature"].startswith("v1,")
    assert verify(SECRET, req.headers, req.body, now=T0)
    assert not verify("other-secret", req.headers, req.body, now=T0)


def test_fails_twice_then_delivers_with_same_id_fresh_signatures_and_backoff():
    async def scenario():
        sleep, clock = RecordingSleep(), Clock()
        async with receiver(statuses(500, 500, 200)) as rec:
            result = await deliver(rec.url, PAYLOAD, local_config(), sleep=sleep, now=clock)
        return result, rec, sleep, clock

    result, rec, sleep, clock = asyncio.run(scenario())
    assert (result.delivered, result.attempts, result.last_status) == (True, 3, 200)
    assert sleep.delays == [1.0, 2.0]
    assert len(rec.seen) == 3
    assert len({r.headers["webhook-id"] for r in rec.seen}) == 1
    timestamps = [int(r.headers["webhook-timestamp"]) for r in rec.seen]
    assert timestamps == clock.readings == [T0, T0 + 7, T0 + 14]
    assert len({r.headers["webhook-signature"] for r in rec.seen}) == 3
    for r, ts in zip(rec.seen, timestamps):
        assert verify(SECRET, r.headers, r.body, now=ts)


def test_always_failing_receiver_gets_max_attempts_and_backoff_is_capped():
    async def scenario():
        sleep = RecordingSleep()
        config = local_config(max_attempts=5, backoff_initial_s=1.0, backoff_max_s=3.0)
        async with receiver(statuses(503)) as rec:
            result = await deliver(rec.url, PAYLOAD, config, sleep=sleep, now=Clock())
        return result, rec, sleep

    result, rec, sleep = asyncio.run(scenario())
    assert (result.delivered, result.attempts, result.last_status) == (False, 5, 503)
    assert result.last_error == "HTTP 503"
    assert len(rec.seen) == 5
    assert sleep.delays == [1.0, 2.0, 3.0, 3.0]


def test_full_jitter_scales_the_delay_by_the_injected_random():
    async def scenario():
        sleep = RecordingSleep()
        async with receiver(statuses(500)) as rec:
            result = await deliver(
                rec.url, PAYLOAD, local_config(max_attempts=3), sleep=sleep, now=Clock(), random=lambda: 0.5
            )
        return result, sleep

    result, sleep = asyncio.run(scenario())
    assert result.attempts == 3
    assert sleep.delays == [0.5, 1.0]


def test_backoff_delay_does_not_overflow():
    config = local_config(backoff_initial_s=1.0, backoff_max_s=60.0)
    assert [backoff_delay(config, n) for n in (1, 2, 3, 7, 8, 5000)] == [1, 2, 4, 60, 60, 60]


def test_redirect_is_not_followed_and_counts_as_failure():
    async def respond(rec, request):
        if request.path == "/elsewhere":
            return web.Response(status=200)
        raise web.HTTPFound(location=f"http://127.0.0.1:{rec.port}/elsewhere")

    async def scenario():
        sleep = RecordingSleep()
        # A client that follows redirects by default: deliver must override it per request.
        async with httpx.AsyncClient(follow_redirects=True) as client:
            async with receiver(respond) as rec:
                result = await deliver(
                    rec.url, PAYLOAD, local_config(max_attempts=2), client=client, sleep=sleep, now=Clock()
                )
        return result, rec

    result, rec = asyncio.run(scenario())
    assert (result.delivered, result.attempts, result.last_status) == (False, 2, 302)
    assert "redirect" in result.last_error
    assert [r.path for r in rec.seen] == ["/hook", "/hook"]


def test_receiver_that_never_answers_times_out_without_hanging():
    async def never(rec, request):
        await rec.release.wait()
        return web.Response(status=200)

    async def scenario():
        sleep = RecordingSleep()
        async with receiver(never) as rec:
            start = time.monotonic()
            result = await deliver(
                rec.url, PAYLOAD, local_config(timeout_s=0.2, max_attempts=2), sleep=sleep, now=Clock()
            )
            elapsed = time.monotonic() - start
        return result, elapsed, sleep

    result, elapsed, sleep = asyncio.run(scenario())
    assert (result.delivered, result.attempts, result.last_status) == (False, 2, None)
    assert "timed out" in result.last_error
    assert sleep.delays == [1.0]
    assert elapsed < 3.0  # two 0.2 s attempts; generous for slow CI, far below a hang


def test_connection_refused_is_retried():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on `port` any more.

    async def scenario():
        sleep = RecordingSleep()
        result = await deliver(
            f"http://127.0.0.1:{port}/hook", PAYLOAD, local_config(max_attempts=3), sleep=sleep, now=Clock()
        )
        return result, sleep

    result, sleep = asyncio.run(scenario())
    assert (result.delivered, result.attempts, result.last_status) == (False, 3, None)
    assert "ConnectError" in result.last_error
    assert sleep.delays == [1.0, 2.0]


def test_rejected_destination_makes_no_request():
    async def scenario():
        sleep = RecordingSleep()
        config = local_config(allowed_hosts=["hooks.example.com"])
        async with receiver(statuses(200)) as rec:
            result = await deliver(rec.url, PAYLOAD, config, sleep=sleep, now=Clock())
        return result, rec, sleep

    result, rec, sleep = asyncio.run(scenario())
    assert (result.delivered, result.attempts, result.last_status) == (False, 0, None)
    assert "allowed_hosts" in result.last_error
    assert rec.seen == [] and sleep.delays == []


def test_destination_is_rechecked_before_every_attempt_and_pinned():
    """First answer 127.0.0.1 (allowlisted), then 10.0.0.5 (not): the retry must not be sent.

    'hooks.test' exists only in the injected resolver, so the first request
    reaching the receiver also proves the checked address was the one used.
    """
    answers = [["127.0.0.1"], ["10.0.0.5"]]
    calls = []

    def resolve(host, port):
        calls.append((host, port))
        return answers[min(len(calls) - 1, 1)]

    async def scenario():
        sleep = RecordingSleep()
        config = local_config(allowed_hosts=["hooks.test", "127.0.0.1"])
        async with receiver(statuses(500)) as rec:
            url = f"http://hooks.test:{rec.port}/hook"
            result = await deliver(url, PAYLOAD, config, sleep=sleep, now=Clock(), resolver=resolve)
        return result, rec, sleep

    result, rec, sleep = asyncio.run(scenario())
    assert (result.delivered, result.attempts, result.last_status) == (False, 1, 500)
    assert "10.0.0.5" in result.last_error
    assert len(calls) == 2 and sleep.delays == [1.0]
    [req] = rec.seen
    assert req.headers["host"] == f"hooks.test:{rec.port}"


def test_pinned_delivery_to_a_resolved_name_succeeds():
    async def scenario():
        config = local_config(allowed_hosts=["hooks.test", "127.0.0.1"])
        resolve = resolver_for({"hooks.test": ["127.0.0.1"]})
        async with receiver(statuses(204)) as rec:
            result = await deliver(
                f"http://hooks.test:{rec.port}/hook", PAYLOAD, config, sleep=RecordingSleep(), resolver=resolve
            )
        return result, rec

    result, rec = asyncio.run(scenario())
    assert (result.delivered, result.attempts, result.last_status) == (True, 1, 204)
    assert rec.seen[0].headers["host"] == f"hooks.test:{rec.port}"


def test_unresolvable_host_is_retried_not_refused():
    async def scenario():
        sleep = RecordingSleep()
        config = local_config(allowed_hosts=["hooks.test"], max_attempts=3)
        result = await deliver(
            "http://hooks.test/hook", PAYLOAD, config, sleep=sleep, now=Clock(), resolver=resolver_for({})
        )
        return result, sleep

    result, sleep = asyncio.run(scenario())
    assert (result.delivered, result.attempts, result.last_status) == (False, 3, None)
    assert "does not resolve" in result.last_error
    assert sleep.delays == [1.0, 2.0]


def test_payload_that_is_not_json_is_reported_not_raised():
    result = asyncio.run(deliver("http://127.0.0.1:9/hook", {"x": object()}, local_config(), sleep=RecordingSleep()))
    assert (result.delivered, result.attempts) == (False, 0)
    assert "JSON" in result.last_error


# --------------------------------------------------------------------------- check_destination


WILDCARD = WebhookConfig(secret=SECRET, allowed_hosts=["*.example.com", "hooks.partner.net"])


def test_rejection_is_a_422_on_webhook_url():
    with pytest.raises(WebhookRejected) as info:
        check_destination("https://evil.net/x", WILDCARD, resolver=resolver_for({}))
    err = info.value
    assert isinstance(err, InvalidRequest)
    assert (err.status_code, err.param, err.code) == (422, "webhook_url", "invalid_webhook_url")
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
    resolve = resolver_for(
        {"a.example.com": [PUBLIC_IP], "deep.sub.a.example.com": [PUBLIC_IP, "2606:2800:220:1::1"]}
    )
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


# --------------------------------------------------------------------------- signing


def _headers(secret: str, body: bytes, ts: int = T0, msg_id: str = "msg_abc") -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sign(secret, msg_id, ts, body)}


def test_signature_is_hmac_sha256_of_id_timestamp_body():
    body = b'{"a":1}'
    expected = base64.b64encode(hmac.new(b"k", b"msg_1.123.{\"a\":1}", hashlib.sha256).digest()).decode()
    assert sign("k", "msg_1", 123, body) == f"v1,{expected}"


def test_standard_webhooks_reference_vector():
    """The example from the Standard Webhooks reference libraries (whsec_ secret)."""
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    signature = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_whsec_secret_uses_decoded_bytes():
    raw = bytes(range(24))
    secret = "whsec_" + base64.b64encode(raw).decode()
    body = b"{}"
    headers = _headers(secret, body)
    assert verify(secret, headers, body, now=T0)
    expected = base64.b64encode(hmac.new(raw, b"m.1.{}", hashlib.sha256).digest()).decode()
    assert sign(secret, "m", 1, body) == f"v1,{expected}"
    assert not verify(secret[len("whsec_") :], headers, body, now=T0)  # the same text, not decoded


def test_verify_rejects_tampering_wrong_secret_and_stale_timestamps():
    body = json.dumps(PAYLOAD).encode()
    headers = _headers(SECRET, body)
    assert verify(SECRET, headers, body, now=T0 + 299)
    assert not verify(SECRET, headers, body + b" ", now=T0)
    assert not verify(SECRET, headers, body.replace(b"completed", b"failed"), now=T0)
    assert not verify("wrong", headers, body, now=T0)
    assert not verify(SECRET, headers, body, now=T0 + 301)  # stale
    assert not verify(SECRET, headers, body, now=T0 - 301)  # from the future
    assert not verify(SECRET, headers, body, tolerance_s=10, now=T0 + 11)
    assert not verify(SECRET, {**headers, "webhook-id": "msg_other"}, body, now=T0)
    assert not verify(SECRET, {**headers, "webhook-timestamp": str(T0 + 1)}, body, now=T0)


def test_verify_several_signatures_versions_and_header_case():
    body = b"{}"
    good = sign(SECRET, "msg_abc", T0, body)
    base = _headers(SECRET, body)
    rotated = {**base, "webhook-signature": f"v1,AAAA {sign('old', 'msg_abc', T0, body)} {good}"}
    assert verify(SECRET, rotated, body, now=T0)
    assert not verify(SECRET, {**base, "webhook-signature": "v2," + good[3:]}, body, now=T0)
    assert not verify(SECRET, {**base, "webhook-signature": good[3:]}, body, now=T0)
    assert not verify(SECRET, {**base, "webhook-signature": ""}, body, now=T0)
    assert verify(SECRET, {k.title(): v for k, v in base.items()}, body, now=T0)
    assert not verify(SECRET, {**base, "webhook-timestamp": "soon"}, body, now=T0)
    for missing in base:
        assert not verify(SECRET, {k: v for k, v in base.items() if k != missing}, body, now=T0)


def test_verify_defaults_to_the_wall_clock():
    body = b"{}"
    assert verify(SECRET, _headers(SECRET, body, ts=int(time.time())), body)
    assert not verify(SECRET, _headers(SECRET, body, ts=T0), body)


# --------------------------------------------------------------------------- config


def test_every_config_field_has_a_description():
    for name, info in WebhookConfig.model_fields.items():
        assert info.description, name


def test_config_defaults_and_secret_not_in_repr():
    config = WebhookConfig(secret="s3cr3t-value")
    assert (config.enabled, config.allowed_hosts, config.max_attempts, config.allow_http) == (True, (), 5, False)
    assert (config.backoff_initial_s, config.backoff_max_s, config.timeout_s) == (1.0, 60.0, 10.0)
    assert "s3cr3t-value" not in repr(config)
    with pytest.raises(ValidationError):
        config.secret = "x"  # frozen


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({}, "secret must be non-empty"),
        ({"secret": "s", "extra": 1}, "Extra inputs"),
        ({"secret": "s", "allowed_hosts": ["10.0.0.1/8"]}, "10.0.0.1/8"),
        ({"secret": "s", "allowed_hosts": ["*"]}, "'*'"),
        ({"secret": "s", "allowed_hosts": ["a.*.com"]}, "a.*.com"),
        ({"secret": "s", "allowed_hosts": ["https://a.com"]}, "https://a.com"),
        ({"secret": "s", "allowed_hosts": ["a.com:443"]}, "a.com:443"),
        ({"secret": "s", "allowed_hosts": [""]}, "empty"),
        ({"secret": "s", "allowed_hosts": "a.com"}, "list"),
        ({"secret": "s", "backoff_initial_s": 10, "backoff_max_s": 5}, "backoff_max_s=5.0"),
        ({"secret": "s", "max_attempts": 0}, "max_attempts"),
        ({"secret": "s", "timeout_s": 0}, "timeout_s"),
        ({"secret": "whsec_!!notbase64!!"}, "not valid base64"),
    ],
)
def test_config_rejects(kwargs, fragment):
    with pytest.raises(ValidationError) as info:
        WebhookConfig(**kwargs)
    assert fragment in str(info.value)


def test_disabled_config_needs_no_secret():
    assert WebhookConfig(enabled=False).secret == ""
