"""The access guard: per-key and anonymous limits, read buckets, what describe() tells, and what it imports."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from serve_app.access.config import AccessConfig
from serve_app.access.guard import AccessGuard
from serve_app.access.keys import ApiKeys, Principal, hash_secret
from serve_app.errors import ConcurrencyLimited, RateLimited
from tests.helpers.access import ADMIN, ALICE, BOB, FakeClock, keyed_config, unique_prefix


@pytest.fixture
def prefix():
    return unique_prefix()


def test_guard_applies_per_key_limits_and_anonymous_ones():
    clock = FakeClock()
    guard = AccessGuard(keyed_config(), {}, clock=clock)
    alice = guard.authenticate(f"Bearer {ALICE}")
    ops = guard.authenticate(f"Bearer {ADMIN}")
    guard.check_rate(alice)
    guard.check_rate(alice)
    with pytest.raises(RateLimited, match="'alice'"):
        guard.check_rate(alice)  # her burst is 2
    guard.check_rate(ops)  # others keep their own buckets
    guard.acquire_job(alice, "a1")
    with pytest.raises(ConcurrencyLimited) as err:
        guard.acquire_job(alice, "a2")
    assert err.value.retry_after_s == 5  # the configured default estimate
    with pytest.raises(ConcurrencyLimited) as err:
        guard.acquire_job(alice, "a2", retry_after_s=41.5)
    assert err.value.retry_after_s == 42
    assert guard.release_job(alice.id, "a1") is True
    guard.acquire_job(alice, "a2")


def test_reads_have_their_own_bucket_and_zero_turns_it_off():
    guard = AccessGuard(
        AccessConfig(burst=1, read_burst=2, read_rate_per_s=0.001, limit_anonymous=True), {}, clock=FakeClock()
    )
    anon = guard.authenticate(None)
    guard.check_rate(anon, "create")
    guard.check_rate(anon, "read")
    guard.check_rate(anon, "read")
    with pytest.raises(RateLimited, match="read rate limit"):
        guard.check_rate(anon, "read")
    unlimited_reads = AccessGuard(AccessConfig(read_rate_per_s=0, limit_anonymous=True), {}, clock=FakeClock())
    for _ in range(500):
        unlimited_reads.check_rate(unlimited_reads.authenticate(None), "read")


def test_anonymous_limits_can_be_turned_off():
    guard = AccessGuard(AccessConfig(burst=1, max_concurrent_jobs=1, limit_anonymous=False), {})
    anon = guard.authenticate(None)
    for i in range(20):
        guard.check_rate(anon)
        guard.acquire_job(anon, f"j{i}")
    assert guard.active_jobs("anonymous") == 0
    assert guard.describe()["anonymous_limited"] is False


def test_describe_tells_on_off_and_counts_without_secrets(redis_server, prefix):
    guard = AccessGuard(
        keyed_config(api_keys_env="K", store=redis_server.url, store_prefix=prefix), {"K": f"bob:{BOB}"}
    )
    try:
        described = guard.describe()
        text = json.dumps(described)
        assert described["auth"] == "on" and described["limits_backend"] == "redis"
        assert (described["keys"], described["keys_from_config"], described["keys_from_env"]) == (3, 2, 1)
        assert described["admin_keys"] == 1 and described["anonymous_limited"] is False
        for secret in (ALICE, BOB, ADMIN):
            assert secret not in text and hash_secret(secret) not in text
        assert str(redis_server.port) not in text
    finally:
        guard.close()
    assert AccessGuard(AccessConfig(), {}).describe()["auth"] == "off"


def test_principal_is_hashable_and_frozen():
    principal = ApiKeys(keyed_config(), {}).authenticate(f"Bearer {ALICE}")
    assert isinstance(principal, Principal) and hash(principal)
    with pytest.raises(AttributeError):
        principal.admin = True


def test_the_guard_imports_neither_redis_nor_ray_nor_torch():
    # Redis is an optional extra, loaded only for a redis:// store; the gateway never loads torch.
    code = "import sys, serve_app.access.guard; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    loaded = set(out.split())
    assert not loaded & {"redis", "ray", "torch"}
