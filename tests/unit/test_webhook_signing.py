"""Standard Webhooks signatures: the HMAC, the reference vector, whsec_ secrets, and what verify refuses."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

from serve_app.webhooks import sign, verify
from tests.helpers.webhooks import PAYLOAD, SECRET, T0


def _headers(secret: str, body: bytes, ts: int = T0, msg_id: str = "msg_abc") -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sign(secret, msg_id, ts, body)}


def test_signature_is_hmac_sha256_of_id_timestamp_body():
    body = b'{"a":1}'
    expected = base64.b64encode(hmac.new(b"k", b'msg_1.123.{"a":1}', hashlib.sha256).digest()).decode()
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
