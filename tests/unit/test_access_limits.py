"""Token buckets and job caps on both backends (in-process, a real Redis); in-process time with a fake clock."""

from __future__ import annotations

import threading
import uuid

import pytest

from serve_app.access.limits import InProcessJobLimiter, InProcessRateLimiter
from serve_app.access.stores import open_limits
from serve_app.errors import ConcurrencyLimited, RateLimited
from tests.helpers.access import FakeClock, unique_prefix


@pytest.fixture
def prefix():
    return unique_prefix()


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
