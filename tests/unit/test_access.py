"""Gateway protection: API keys, token buckets and job caps (in-process and a real Redis)."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import json
import threading
import uuid

import pytest
import redis
import yaml
from pydantic import ValidationError

from serve_app.access import keys as keys_module
from serve_app.access.config import AccessConfig, ApiKeyEntry
from serve_app.access.guard import AccessGuard
from serve_app.access.keys import ApiKeys, Principal, hash_secret, parse_env_keys, require_admin
from serve_app.access.limits import InProcessJobLimiter, InProcessRateLimiter
from serve_app.access.redis_limits import RedisLimiter
from serve_app.access.stores import open_limits
from serve_app.errors import (
    ConcurrencyLimited,
    Forbidden,
    RateLimited,
    ServiceUnavailable,
    Unauthorized,
)
from tests.helpers.redis_server import _free_port

ALICE = "wan_alice-secret-0123456789abcdef"
BOB = "wan_bob-secret-0123456789abcdef00"
ADMIN = "wan_admin-secret-0123456789abcdef"


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def keyed_config(**overrides) -> AccessConfig:
    data = {
        "api_keys": [
            {"id": "alice", "sha256": hash_secret(ALICE), "burst": 2, "max_concurrent_jobs": 1},
            {"id": "ops", "sha256": hash_secret(ADMIN), "admin": True},
        ],
        "api_keys_env": "",
    }
    data.update(overrides)
    return AccessConfig.model_validate(data)


# --- config --------------------------------------------------------------------------------


@pytest.mark.parametrize("model", [AccessConfig, ApiKeyEntry])
def test_every_field_is_described(model):
    missing = [name for name, field in model.model_fields.items() if not field.description]
    assert missing == []


def test_config_is_strict_and_frozen():
    with pytest.raises(ValidationError, match="extra"):
        AccessConfig(rate_limit=3)
    config = AccessConfig()
    with pytest.raises(ValidationError):
        config.burst = 3


def test_sha256_is_normalised_and_a_pasted_secret_is_refused_without_echo():
    digest = hash_secret(ALICE)
    assert ApiKeyEntry(id="a", sha256=digest.upper()).sha256 == digest
    with pytest.raises(ValidationError) as err:
        ApiKeyEntry(id="a", sha256=ALICE)
    assert "64 hex characters" in str(err.value) and ALICE not in str(err.value)


@pytest.mark.parametrize("key_id", ["", "has space", "a:b", "x" * 65, "anonymous"])
def test_bad_key_ids_are_refused(key_id):
    with pytest.raises(ValidationError, match="api_keys"):
        ApiKeyEntry(id=key_id, sha256=hash_secret(ALICE))


def test_duplicate_ids_and_secrets_are_refused():
    with pytest.raises(ValidationError, match="'a' appears twice"):
        AccessConfig(api_keys=[{"id": "a", "sha256": hash_secret(ALICE)}, {"id": "a", "sha256": hash_secret(BOB)}])
    with pytest.raises(ValidationError, match="same sha256"):
        AccessConfig(api_keys=[{"id": "a", "sha256": hash_secret(ALICE)}, {"id": "b", "sha256": hash_secret(ALICE)}])


def test_store_url_scheme_is_checked_without_quoting_the_rest():
    with pytest.raises(ValidationError) as err:
        AccessConfig(store="memcached://user:hunter2@cache:11211")
    assert "'memcached'" in str(err.value) and "hunter2" not in str(err.value)
    assert AccessConfig(store="rediss://cache:6380/1").store == "rediss://cache:6380/1"


# --- keys ----------------------------------------------------------------------------------


def test_env_keys_are_parsed_hashed_and_may_be_admin():
    entries = parse_env_keys(f" bob:{BOB}, ops2:{ADMIN}:admin ,", "KEYS")
    assert [(e.id, e.sha256, e.admin) for e in entries] == [
        ("bob", hash_secret(BOB), False),
        ("ops2", hash_secret(ADMIN), True),
    ]


@pytest.mark.parametrize(
    "value, message",
    [
        (f"bob{BOB}", "entry 1 is not 'id:secret'"),
        (f"bob:{BOB}:root", "entry 1 is not 'id:secret'"),
        (f"bob:{BOB},carol:short-secret", "entry 2 .*'carol'.*at least 16"),
        (f"bad id:{BOB}", "entry 1 id='bad id'"),
    ],
)
def test_bad_env_keys_name_the_entry_and_never_the_secret(value, message):
    with pytest.raises(ValueError, match=message) as err:
        parse_env_keys(value, "KEYS")
    assert BOB not in str(err.value) and "short-secret" not in str(err.value)


def test_env_keys_join_config_keys_and_clashes_are_refused():
    config = keyed_config(api_keys_env="MY_KEYS")
    keys = ApiKeys(config, {"MY_KEYS": f"bob:{BOB}"})
    assert (len(keys), keys.from_config, keys.from_env, keys.admin_count) == (3, 2, 1, 1)
    assert keys.authenticate(f"Bearer {BOB}").id == "bob"
    with pytest.raises(ValueError, match="'alice' is defined twice"):
        ApiKeys(config, {"MY_KEYS": f"alice:{BOB}"})
    with pytest.raises(ValueError, match="same secret"):
        ApiKeys(config, {"MY_KEYS": f"carol:{ALICE}"})


def test_env_none_reads_the_process_environment(monkeypatch):
    monkeypatch.setenv("WAN_SERVE_API_KEYS", f"bob:{BOB}")
    assert ApiKeys(AccessConfig()).authenticate(f"Bearer {BOB}").id == "bob"
    monkeypatch.delenv("WAN_SERVE_API_KEYS")
    assert not ApiKeys(AccessConfig()).enabled


def test_auth_is_off_without_keys_and_everyone_is_anonymous():
    keys = ApiKeys(AccessConfig(limit_anonymous=True), {})
    assert not keys.enabled
    for header in (None, "", "Bearer whatever", "garbage"):
        principal = keys.authenticate(header)
        assert (principal.id, principal.authenticated, principal.admin, principal.limited) == (
            "anonymous", False, False, True
        )
    # The default: a keyless service is not limited per client.
    assert not ApiKeys(AccessConfig(), {}).authenticate(None).limited


def test_a_key_gets_its_overrides_and_the_defaults_for_the_rest():
    keys = ApiKeys(keyed_config(rate_per_s=0.5), {})
    alice = keys.authenticate(f"Bearer {ALICE}")
    assert (alice.id, alice.admin, alice.authenticated) == ("alice", False, True)
    assert (alice.limits.burst, alice.limits.max_concurrent_jobs, alice.limits.rate_per_s) == (2, 1, 0.5)
    ops = keys.authenticate(f"bearer   {ADMIN} ")
    assert ops.admin and ops.limits.burst == 10 and ops.limits.max_concurrent_jobs == 4


@pytest.mark.parametrize(
    "header, words",
    [
        (None, "missing Authorization header"),
        ("   ", "missing Authorization header"),
        (ALICE, "malformed Authorization header"),
        (f"Basic {ALICE}", "malformed Authorization header"),
        ("Bearer", "malformed Authorization header"),
        (f"Bearer {ALICE} extra", "malformed Authorization header"),
        ("Bearer wan_not-a-configured-key-000000", "unknown API key"),
    ],
)
def test_401s_say_which_problem_and_never_echo_the_key(header, words):
    keys = ApiKeys(keyed_config(), {})
    with pytest.raises(Unauthorized) as err:
        keys.authenticate(header)
    body = err.value.to_dict()["error"]
    assert err.value.status_code == 401
    assert body["code"] == "unauthorized" and body["param"] == "Authorization"
    assert words in body["message"]
    assert ALICE not in json.dumps(body) and "wan_not-a-configured" not in json.dumps(body)


def test_require_admin_403s_say_why():
    keys = ApiKeys(keyed_config(), {})
    require_admin(keys.authenticate(f"Bearer {ADMIN}"))
    with pytest.raises(Forbidden, match="'alice' is not an admin key") as err:
        require_admin(keys.authenticate(f"Bearer {ALICE}"))
    assert err.value.status_code == 403 and err.value.to_dict()["error"]["code"] == "forbidden"
    with pytest.raises(Forbidden, match="auth is off"):
        require_admin(ApiKeys(AccessConfig(), {}).authenticate(None))


def test_cli_hash_reads_stdin_and_new_prints_a_working_entry(monkeypatch, capsys):
    assert keys_module._main(["hash", ALICE]) == 0
    assert capsys.readouterr().out == f"sha256: {hashlib.sha256(ALICE.encode()).hexdigest()}\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(ALICE + "\n"))
    assert keys_module._main(["hash", "-"]) == 0
    assert capsys.readouterr().out == f"sha256: {hash_secret(ALICE)}\n"

    assert keys_module._main(["new", "--id", "carol", "--admin"]) == 0
    out = capsys.readouterr().out
    secret = next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("# key: "))
    entries = yaml.safe_load(out)  # the comment lines drop out; the entry is what gets pasted
    keys = ApiKeys(AccessConfig(api_keys=entries, api_keys_env=""), {})
    principal = keys.authenticate(f"Bearer {secret}")
    assert (principal.id, principal.admin) == ("carol", True)
    # The env form printed alongside works too.
    env_value = out.strip().splitlines()[-1].split("WAN_SERVE_API_KEYS=", 1)[1]
    assert parse_env_keys(env_value, "X")[0].sha256 == entries[0]["sha256"]


# --- limiters: both backends ---------------------------------------------------------------


@pytest.fixture
def prefix():
    return f"test-access:{uuid.uuid4().hex}"


@pytest.fixture(params=["in-process", "redis"])
def limiters(request, redis_server, prefix):
    if request.param == "in-process":
        built = open_limits("")
    else:
        built = open_limits(redis_server.url, prefix=prefix)
    assert built.backend == request.param
    yield built
    built.close()


def test_open_limits_picks_the_backend_and_names_the_field():
    assert isinstance(open_limits("").rate, InProcessRateLimiter)
    with pytest.raises(ValueError, match=r"access\.store: scheme 'http'") as err:
        open_limits("http://user:hunter2@x")
    assert "hunter2" not in str(err.value)
    with pytest.raises(ValueError, match="scheme '\\(none\\)'"):
        open_limits("localhost:6379")


def test_bucket_allows_a_burst_then_429s_with_retry_after(limiters):
    key = f"k{uuid.uuid4().hex[:8]}"
    # A rate so slow that no token comes back while the test runs, on either clock.
    left = [limiters.rate.hit(key, "create", 0.001, 3) for _ in range(3)]
    assert left == pytest.approx([2, 1, 0], abs=0.01)
    with pytest.raises(RateLimited) as err:
        limiters.rate.hit(key, "create", 0.001, 3)
    assert err.value.status_code == 429 and err.value.code == "rate_limited"
    assert 990 <= err.value.retry_after_s <= 1000
    assert err.value.headers() == {"Retry-After": str(err.value.retry_after_s)}
    assert f"API key {key!r} is over its create rate limit (0.001/s, burst 3)" in err.value.message
    # Other buckets are untouched: the read bucket of the key, and other keys.
    assert limiters.rate.hit(key, "read", 0.001, 3) == pytest.approx(2, abs=0.01)
    assert limiters.rate.hit(key + "x", "create", 0.001, 3) == pytest.approx(2, abs=0.01)
    with pytest.raises(ValueError, match="bucket kind 'write'"):
        limiters.rate.hit(key, "write", 1, 1)


def test_a_lowered_burst_applies_at_once(limiters):
    limiters.rate.hit("k", "create", 0.001, 10)
    assert limiters.rate.hit("k", "create", 0.001, 2) == pytest.approx(1.0, abs=0.01)


def test_job_cap_is_idempotent_per_job_and_release_frees_a_slot(limiters):
    jobs = limiters.jobs
    assert jobs.acquire("k", "j1", 2, 60) == 1
    assert jobs.acquire("k", "j2", 2, 60) == 2
    assert jobs.acquire("k", "j1", 2, 60) == 2  # a retry of j1 takes no second slot
    with pytest.raises(ConcurrencyLimited) as err:
        jobs.acquire("k", "j3", 2, 60, retry_after_s=7.2)
    assert err.value.status_code == 429 and err.value.code == "too_many_concurrent_jobs"
    assert err.value.headers() == {"Retry-After": "8"}
    assert "'k' has 2 unfinished jobs and may have at most 2" in err.value.message
    assert jobs.acquire("other", "j3", 2, 60) == 1  # caps are per key
    assert jobs.release("k", "j1") is True
    assert jobs.release("k", "j1") is False
    assert jobs.release("k", "never") is False
    assert jobs.active("k") == 1
    assert jobs.acquire("k", "j3", 2, 60) == 2
    assert jobs.touch("k", "j3", 60) is True
    assert jobs.touch("k", "j1", 60) is False  # released: touch does not bring it back


def test_no_over_admission_under_concurrent_acquires(limiters):
    limit, threads_n = 5, 16
    barrier = threading.Barrier(threads_n)
    admitted, refused = [], []
    lock = threading.Lock()

    def worker(i: int) -> None:
        barrier.wait()
        for attempt in range(3):
            job_id = f"job-{i}-{attempt}"
            try:
                limiters.jobs.acquire("hot", job_id, limit, 60)
            except ConcurrencyLimited:
                with lock:
                    refused.append(job_id)
            else:
                with lock:
                    admitted.append(job_id)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == limit and len(refused) == threads_n * 3 - limit
    assert limiters.jobs.active("hot") == limit


def test_no_over_spending_of_tokens_under_concurrent_hits(limiters):
    burst, threads_n = 10, 12
    barrier = threading.Barrier(threads_n)
    allowed = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        for _ in range(3):
            try:
                limiters.rate.hit("hot", "create", 1e-6, burst)
            except RateLimited:
                continue
            with lock:
                allowed.append(1)

    threads = [threading.Thread(target=worker) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(allowed) == burst


# --- in-process: time with a fake clock -----------------------------------------------------


def test_bucket_refills_at_its_rate_and_caps_at_burst():
    clock = FakeClock()
    rate = InProcessRateLimiter(clock)
    for _ in range(3):
        rate.hit("k", "create", 2.0, 3)
    with pytest.raises(RateLimited) as err:
        rate.hit("k", "create", 2.0, 3)
    assert err.value.details["retry_after_s"] == 1  # 0.5 s, rounded up to a whole second
    assert "in 0.50 s" in err.value.message
    clock.advance(0.25)
    with pytest.raises(RateLimited, match="in 0.25 s"):
        rate.hit("k", "create", 2.0, 3)
    clock.advance(0.25)
    assert rate.hit("k", "create", 2.0, 3) == pytest.approx(0.0)
    clock.advance(3600)  # a long quiet spell fills the bucket to `burst`, not beyond
    assert [rate.hit("k", "create", 2.0, 3) for _ in range(3)] == pytest.approx([2, 1, 0])
    with pytest.raises(RateLimited):
        rate.hit("k", "create", 2.0, 3)
    clock.advance(-5)  # a clock going back neither refills nor drains
    with pytest.raises(RateLimited, match="in 0.50 s"):
        rate.hit("k", "create", 2.0, 3)


def test_job_lease_expires_unless_touched():
    clock = FakeClock()
    jobs = InProcessJobLimiter(clock)
    jobs.acquire("k", "crashed", 2, 10)
    jobs.acquire("k", "alive", 2, 10)
    with pytest.raises(ConcurrencyLimited):
        jobs.acquire("k", "new", 2, 10)
    clock.advance(8)
    assert jobs.touch("k", "alive", 10)
    clock.advance(2)  # "crashed" is at its expiry: it stops counting
    assert jobs.active("k") == 1
    assert jobs.touch("k", "crashed", 10) is False
    assert jobs.acquire("k", "new", 2, 10) == 2
    clock.advance(7.9)
    assert jobs.active("k") == 2  # "alive" was renewed to t=18
    clock.advance(0.1)
    assert jobs.active("k") == 1
    assert jobs.release("k", "alive") is False  # expired before the release came


# --- Redis: server time, shared by replicas --------------------------------------------------


def _shift_redis_time(redis_url: str, key: str, seconds: float) -> None:
    """Make `seconds` pass for one bucket or job set by moving its stored times back."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        if client.type(key) == "hash":
            client.hset(key, "ts", repr(float(client.hget(key, "ts")) - seconds))
        else:
            for member, score in client.zrange(key, 0, -1, withscores=True):
                client.zadd(key, {member: score - seconds})
    finally:
        client.close()


def _server_time(redis_url: str) -> float:
    client = redis.Redis.from_url(redis_url)
    try:
        seconds, micros = client.time()
        return seconds + micros / 1e6
    finally:
        client.close()


def test_redis_state_is_stamped_with_server_time(redis_server, prefix):
    limiter = RedisLimiter(redis_server.url, prefix=prefix)
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        limiter.hit("k", "create", 1.0, 2)
        limiter.acquire("k", "j1", 1, 30)
        now = _server_time(redis_server.url)
        assert float(client.hget(f"{prefix}:bucket:create:k", "ts")) == pytest.approx(now, abs=5)
        assert client.zscore(f"{prefix}:jobs:k", "j1") == pytest.approx(now + 30, abs=5)
    finally:
        client.close()
        limiter.close()


def test_redis_bucket_refills_by_server_time(redis_server, prefix):
    limiter = RedisLimiter(redis_server.url, prefix=prefix)
    try:
        for _ in range(2):
            limiter.hit("k", "create", 0.01, 2)
        with pytest.raises(RateLimited) as err:
            limiter.hit("k", "create", 0.01, 2)
        assert err.value.retry_after_s == 100  # just under 100 s, rounded up
        # State stamped in the future (a failover to a Redis whose clock is behind):
        # no refill and no drain, the wait stays what it was.
        _shift_redis_time(redis_server.url, f"{prefix}:bucket:create:k", -50)
        with pytest.raises(RateLimited) as err:
            limiter.hit("k", "create", 0.01, 2)
        assert err.value.retry_after_s == 100
        _shift_redis_time(redis_server.url, f"{prefix}:bucket:create:k", 50)
        _shift_redis_time(redis_server.url, f"{prefix}:bucket:create:k", 100)
        assert limiter.hit("k", "create", 0.01, 2) == pytest.approx(0, abs=0.01)
        # A long quiet spell fills the bucket to `burst`, not beyond.
        _shift_redis_time(redis_server.url, f"{prefix}:bucket:create:k", 10_000)
        assert [limiter.hit("k", "create", 0.01, 2) for _ in range(2)] == pytest.approx([1, 0], abs=0.01)
        with pytest.raises(RateLimited):
            limiter.hit("k", "create", 0.01, 2)
        # The bucket expires once it would be full again (a missing one reads as full).
        client = redis.Redis.from_url(redis_server.url)
        assert 199_000 < client.pttl(f"{prefix}:bucket:create:k") <= 201_000
        client.close()
    finally:
        limiter.close()


def test_redis_job_lease_expires_by_server_time(redis_server, prefix):
    limiter = RedisLimiter(redis_server.url, prefix=prefix)
    try:
        limiter.acquire("k", "crashed", 1, 30)
        with pytest.raises(ConcurrencyLimited):
            limiter.acquire("k", "next", 1, 30)
        _shift_redis_time(redis_server.url, f"{prefix}:jobs:k", 31)
        assert limiter.active("k") == 0
        assert limiter.touch("k", "crashed", 30) is False
        assert limiter.acquire("k", "next", 1, 30) == 1
    finally:
        limiter.close()


def test_limits_hold_across_two_replicas_sharing_redis(redis_server, prefix):
    config = keyed_config(store=redis_server.url, store_prefix=prefix, max_concurrent_jobs=3, burst=5,
                          rate_per_s=0.001)
    replica_a, replica_b = AccessGuard(config, {}), AccessGuard(config, {})
    try:
        ops_a = replica_a.authenticate(f"Bearer {ADMIN}")
        ops_b = replica_b.authenticate(f"Bearer {ADMIN}")
        for _ in range(3):
            replica_a.check_rate(ops_a)
        for _ in range(2):
            replica_b.check_rate(ops_b)
        for guard, principal in ((replica_a, ops_a), (replica_b, ops_b)):
            with pytest.raises(RateLimited):
                guard.check_rate(principal)

        replica_a.acquire_job(ops_a, "j1")
        replica_a.acquire_job(ops_a, "j2")
        replica_b.acquire_job(ops_b, "j3")
        replica_b.acquire_job(ops_b, "j1")  # the same job seen on the other replica: no new slot
        for guard, principal in ((replica_a, ops_a), (replica_b, ops_b)):
            with pytest.raises(ConcurrencyLimited):
                guard.acquire_job(principal, "j4")
        # j1 finishes on replica b; replica a sees the freed slot.
        assert replica_b.release_job("ops", "j1") is True
        replica_a.acquire_job(ops_a, "j4")
        assert replica_b.active_jobs("ops") == 3
    finally:
        replica_a.close()
        replica_b.close()


def test_an_unreachable_redis_is_a_503_and_release_does_not_raise(caplog):
    config = AccessConfig(store=f"redis://127.0.0.1:{_free_port()}/0", api_keys_env="", limit_anonymous=True)
    guard = AccessGuard(config, {})
    try:
        principal = guard.authenticate(None)
        with pytest.raises(ServiceUnavailable) as err:
            guard.check_rate(principal)
        assert err.value.status_code == 503 and "access.store" in err.value.message
        assert err.value.headers() == {"Retry-After": "5"}
        assert guard.release_job("anonymous", "j1") is False
        assert "could not release job slot of j1" in caplog.text
    finally:
        guard.close()


# --- the guard -----------------------------------------------------------------------------


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
    guard = AccessGuard(AccessConfig(burst=1, read_burst=2, read_rate_per_s=0.001, limit_anonymous=True), {},
                        clock=FakeClock())
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
