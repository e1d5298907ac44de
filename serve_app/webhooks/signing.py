"""Standard Webhooks signatures (https://www.standardwebhooks.com): signing and verifying.

webhook-id:        msg_<hex>                 (same across retries; receivers dedupe on it)
webhook-timestamp: <epoch seconds>           (fresh per attempt; receivers reject stale ones)
webhook-signature: v1,<base64 HMAC-SHA256(secret, f"{id}.{timestamp}.{body}")>
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"


def secret_bytes(secret: str) -> bytes:
    """The HMAC key of a secret: the decoded bytes of 'whsec_<base64>', else its UTF-8 bytes."""
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
    digest = hmac.new(secret_bytes(secret), content, hashlib.sha256).digest()
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
