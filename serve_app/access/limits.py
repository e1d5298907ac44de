"""Per-key rate limits (token buckets) and concurrent-job caps, in-process or in Redis.

Two protocols, each with two backends:

- `RateLimiter.hit(key_id, kind, rate_per_s, burst)`: takes one token from the
  key's bucket of that kind ('create', 'read', or 'admin' per client address), or raises `RateLimited` with
  Retry-After = the time until one token is back.
- `JobLimiter.acquire(key_id, job_id, limit, lease_s)` / `touch` / `release`:
  a job holds one of its key's `limit` slots until released or until its lease
  runs out (a job whose gateway died stops counting then). Acquiring a job id
  the key already holds only renews its lease, so a retried request does not
  take a second slot. At the limit: `ConcurrencyLimited`.

The in-process backends (`store: ''`) keep state in this process: with several
gateway replicas each has its own buckets, so a key gets N times its limits,
and a job released on another replica keeps its slot here until its lease
ends. `store: redis://...` shares the state (see redis_limits.py); stores.py picks
the backend.

Limits are passed on every call rather than fixed per limiter, so per-key
overrides and config changes need no limiter state of their own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Literal, Protocol

from serve_app.errors import ConcurrencyLimited, RateLimited

# 'admin': the admin routes' bucket, per client address (AdminAccess in guard.py).
BucketKind = Literal["create", "read", "admin"]
BUCKET_KINDS: tuple[str, ...] = ("create", "read", "admin")
DEFAULT_CONCURRENCY_RETRY_AFTER_S = 5.0


def rate_limited(key_id: str, kind: str, rate_per_s: float, burst: int, wait_s: float) -> RateLimited:
    return RateLimited(
        f"API key {key_id!r} is over its {kind} rate limit ({rate_per_s:g}/s, burst {burst}); "
        f"the next {kind} is allowed in {wait_s:.2f} s",
        retry_after_s=wait_s,
        key_id=key_id,
        limit_kind=kind,
    )


def concurrency_limited(key_id: str, count: int, limit: int, retry_after_s: float) -> ConcurrencyLimited:
    return ConcurrencyLimited(
        f"API key {key_id!r} has {count} unfinished jobs and may have at most {limit}; "
        "retry when one finishes (or cancel one)",
        retry_after_s=retry_after_s,
        key_id=key_id,
        max_concurrent_jobs=limit,
    )


def check_kind(kind: str) -> None:
    if kind not in BUCKET_KINDS:
        raise ValueError(f"bucket kind {kind!r} is not one of {BUCKET_KINDS}")


class RateLimiter(Protocol):
    backend: str

    def hit(self, key_id: str, kind: BucketKind, rate_per_s: float, burst: int) -> float:
        """Take one token; return the tokens left. Raises RateLimited when the bucket is empty."""
        ...

    def close(self) -> None: ...


class JobLimiter(Protocol):
    backend: str

    def acquire(
        self,
        key_id: str,
        job_id: str,
        limit: int,
        lease_s: float,
        retry_after_s: float = DEFAULT_CONCURRENCY_RETRY_AFTER_S,
    ) -> int:
        """Hold a slot for the job (idempotent); return the key's unfinished jobs. Raises ConcurrencyLimited."""
        ...

    def touch(self, key_id: str, job_id: str, lease_s: float) -> bool:
        """Renew the job's lease; False if it holds no slot (released, expired, never acquired)."""
        ...

    def release(self, key_id: str, job_id: str) -> bool:
        """Free the job's slot; False if it held none."""
        ...

    def active(self, key_id: str) -> int:
        """Jobs holding a slot of the key now."""
        ...

    def close(self) -> None: ...


class InProcessRateLimiter:
    """Token buckets in a dict, one lock; `clock` is injectable so tests control time."""

    backend = "in-process"

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        # (kind, key id) -> [tokens, time of the last refill]; a missing bucket is a full one.
        self._buckets: dict[tuple[str, str], list[float]] = {}

    def hit(self, key_id: str, kind: BucketKind, rate_per_s: float, burst: int) -> float:
        check_kind(kind)
        with self._lock:
            now = self._clock()
            state = self._buckets.get((kind, key_id))
            if state is None:
                tokens, last = float(burst), now
            else:
                tokens, last = state
                if now > last:
                    tokens, last = tokens + (now - last) * rate_per_s, now
            # min() also shrinks a bucket whose burst was lowered since it filled.
            tokens = min(tokens, float(burst))
            if tokens >= 1.0:
                tokens -= 1.0
                self._buckets[(kind, key_id)] = [tokens, last]
                return tokens
            self._buckets[(kind, key_id)] = [tokens, last]
            wait = (1.0 - tokens) / rate_per_s
        raise rate_limited(key_id, kind, rate_per_s, burst, wait)

    def close(self) -> None:
        pass


class InProcessJobLimiter:
    """Per key: job id -> lease expiry (on `clock`), pruned on every call."""

    backend = "in-process"

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._slots: dict[str, dict[str, float]] = {}

    def _live(self, key_id: str, now: float) -> dict[str, float]:
        slots = self._slots.get(key_id, {})
        for job_id in [j for j, expiry in slots.items() if expiry <= now]:
            del slots[job_id]
        return slots

    def acquire(
        self,
        key_id: str,
        job_id: str,
        limit: int,
        lease_s: float,
        retry_after_s: float = DEFAULT_CONCURRENCY_RETRY_AFTER_S,
    ) -> int:
        with self._lock:
            now = self._clock()
            slots = self._live(key_id, now)
            if job_id not in slots and len(slots) >= limit:
                count = len(slots)
            else:
                slots[job_id] = now + lease_s
                self._slots[key_id] = slots
                return len(slots)
        raise concurrency_limited(key_id, count, limit, retry_after_s)

    def touch(self, key_id: str, job_id: str, lease_s: float) -> bool:
        with self._lock:
            now = self._clock()
            slots = self._live(key_id, now)
            if job_id not in slots:
                return False
            slots[job_id] = now + lease_s
            return True

    def release(self, key_id: str, job_id: str) -> bool:
        with self._lock:
            slots = self._slots.get(key_id)
            if slots is None or job_id not in slots:
                return False
            expired = slots.pop(job_id) <= self._clock()
            if not slots:
                del self._slots[key_id]
            return not expired

    def active(self, key_id: str) -> int:
        with self._lock:
            return len(self._live(key_id, self._clock()))

    def close(self) -> None:
        pass
