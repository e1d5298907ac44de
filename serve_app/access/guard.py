"""`AccessGuard`: the one object the gateway asks "may this request go on?".

Order on a create (POST /v1/videos):

    principal = guard.authenticate(request.headers.get("authorization"))   # 401
    guard.check_rate(principal, "create")                                     # 429 rate_limited
    ... validate, cache lookup (a cache hit needs no job slot) ...
    guard.acquire_job(principal, job_id)                                      # 429 too_many_concurrent_jobs
    ... create the job, storing principal.id on it; if that fails: release_job ...

(the body's size, 413, is checked where the body is read: serve_app/api/body.py,
against `access.max_body_bytes`); every other route: `authenticate` then `check_rate(principal, "read")`; admin
routes go through `AdminAccess` instead, which also takes the operator's own key
(401/403). When a job reaches a terminal
state, on whichever gateway replica that happens, `release_job(job.key_id,
job.id)`; while it is unfinished, `touch_job` renews its slot's lease (the
lease only matters if a release is lost, so touching is optional when
`job_slot_lease_s` exceeds the longest a job can take).

A rate token is spent before validation on purpose: malformed requests cost
the same as good ones, or a client could probe without limit.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from serve_app.access.keys import HEADER, ApiKeys, Principal, bearer_token, check_admin_key, require_admin
from serve_app.access.limits import BucketKind, InProcessRateLimiter
from serve_app.access.stores import Limiters, open_limits
from serve_app.errors import Forbidden, RateLimited, ServiceUnavailable, Unauthorized
from serve_app.settings.access import AccessConfig
from serve_app.settings.redis import RedisClientOptions

log = logging.getLogger("ray.serve")


class AccessGuard:
    def __init__(
        self,
        config: AccessConfig,
        env: Mapping[str, str] | None = None,
        *,
        limiters: Limiters | None = None,
        clock: Callable[[], float] = time.monotonic,
        redis: RedisClientOptions | None = None,
    ) -> None:
        """`env` None reads os.environ; `clock` drives the in-process backend (tests pass a fake one);
        `redis`: the timeouts of a Redis limiter store (args.redis)."""
        self.config = config
        self._env = env  # read again when the keys change on a running gateway (`retune`)
        self.keys = ApiKeys(config, env)
        self.limiters = limiters or open_limits(config.store, prefix=config.store_prefix, clock=clock, redis=redis)

    def retune(self, config: AccessConfig) -> None:
        """New keys and limits on a running gateway (its user_config, serve_app/live.py); the
        limiter store and its state stay (buckets shrink to a lowered burst at their next hit).

        Raises ValueError, changing nothing, for bad keys or a change that turns auth on or
        off: which Host values the gateway answers follows auth, and is fixed at start."""
        keys = ApiKeys(config, self._env)
        if keys.enabled != self.keys.enabled:
            now = "on (the first key)" if keys.enabled else "off (no key left)"
            raise ValueError(f"the new api_keys turn auth {now}; that takes a redeploy with new args, not a retune")
        self.config, self.keys = config, keys

    @property
    def auth_enabled(self) -> bool:
        return self.keys.enabled

    def authenticate(self, authorization_header: str | None) -> Principal:
        """The caller (401 if auth is on and the key is missing, malformed or unknown)."""
        return self.keys.authenticate(authorization_header)

    @staticmethod
    def require_admin(principal: Principal) -> None:
        """403 unless the principal's key is an admin key."""
        require_admin(principal)

    def check_rate(self, principal: Principal, kind: BucketKind = "create") -> None:
        """Spend one token of the principal's `kind` bucket (429 rate_limited with Retry-After if empty)."""
        if not principal.limited:
            return
        limits = principal.limits
        if kind == "read":
            if limits.read_rate_per_s == 0:
                return
            self.limiters.rate.hit(principal.id, "read", limits.read_rate_per_s, limits.read_burst)
        else:
            self.limiters.rate.hit(principal.id, kind, limits.rate_per_s, limits.burst)

    def acquire_job(self, principal: Principal, job_id: str, retry_after_s: float | None = None) -> None:
        """Hold one of the principal's job slots for `job_id` (idempotent).

        429 too_many_concurrent_jobs at the cap; Retry-After is `retry_after_s`
        (e.g. the estimated finish of the key's earliest job) or the configured default.
        """
        if not principal.limited:
            return
        self.limiters.jobs.acquire(
            principal.id,
            job_id,
            principal.limits.max_concurrent_jobs,
            self.config.job_slot_lease_s,
            self.config.concurrency_retry_after_s if retry_after_s is None else retry_after_s,
        )

    def touch_job(self, principal_id: str, job_id: str) -> bool:
        """Renew the job's slot lease; False if it holds none (released, expired, or unlimited)."""
        return self.limiters.jobs.touch(principal_id, job_id, self.config.job_slot_lease_s)

    def release_job(self, principal_id: str, job_id: str) -> bool:
        """Free the job's slot, by key id and job id alone (any replica may call it). Never raises
        for an unreachable store: the slot's lease frees it later, and a finished job must not fail
        because of its bookkeeping."""
        try:
            return self.limiters.jobs.release(principal_id, job_id)
        except ServiceUnavailable as exc:
            log.warning(
                "could not release job slot of %s for key %r: %s; it frees after %.0f s",
                job_id,
                principal_id,
                exc.message,
                self.config.job_slot_lease_s,
            )
            return False

    def active_jobs(self, principal_id: str) -> int:
        return self.limiters.jobs.active(principal_id)

    def describe(self) -> dict[str, Any]:
        """For /healthz: no secrets, no digests, no store URL (it may hold a password)."""
        c = self.config
        return {
            "auth": "on" if self.auth_enabled else "off",
            "keys": len(self.keys),
            "keys_from_config": self.keys.from_config,
            "keys_from_env": self.keys.from_env,
            "admin_keys": self.keys.admin_count,
            "limits_backend": self.limiters.backend,
            "anonymous_limited": (not self.auth_enabled) and c.limit_anonymous,
            "defaults": {
                "rate_per_s": c.rate_per_s,
                "burst": c.burst,
                "read_rate_per_s": c.read_rate_per_s,
                "read_burst": c.read_burst,
                "max_concurrent_jobs": c.max_concurrent_jobs,
                "max_body_bytes": c.max_body_bytes,
            },
        }

    def close(self) -> None:
        self.limiters.close()


class AdminAccess:
    """Who may call the admin routes (the result cache's stats, delete and purge): the
    operator, with the key in ${admin_key_env}, or, with API keys on, a key marked
    `admin: true`. Works without a guard too (a gateway with access control off).

    Every admin request first spends a token of its client address's 'admin' bucket
    (`access.admin_rate_per_s`, `admin_burst`), before its key is looked at: guessing
    the key then costs as many tokens as calling with it. The bucket lives in the
    guard's limiter store (shared through Redis when `access.store` says so), or in
    this process without a guard."""

    def __init__(
        self,
        operator_key: str,
        key_env: str,
        guard: AccessGuard | None = None,
        *,
        config: AccessConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        check_admin_key(operator_key, key_env)
        self.operator_key = operator_key
        self.key_env = key_env  # named in the error when no admin key exists at all
        self.guard = guard
        self.config = config or (guard.config if guard is not None else AccessConfig())
        self.rate = guard.limiters.rate if guard is not None else InProcessRateLimiter(clock)

    def check(self, authorization_header: str | None, client: str | None = None) -> None:
        """Return when the caller is an admin; 429, 401 or 403 otherwise. `client`: the
        caller's address, whose bucket pays for the attempt."""
        self._spend(client or "unknown")
        token = bearer_token(authorization_header)
        if self.operator_key and token is not None and hmac.compare_digest(token.encode(), self.operator_key.encode()):
            return
        if self.guard is not None and self.guard.auth_enabled:
            self.guard.require_admin(self.guard.authenticate(authorization_header))
            return
        if not self.operator_key:
            raise Forbidden(f"admin routes are off: set ${self.key_env} or configure an admin API key")
        raise Unauthorized(f"admin routes need '{HEADER}: Bearer <admin key>'", param=HEADER)

    def _spend(self, client: str) -> None:
        rate, burst = self.config.admin_rate_per_s, self.config.admin_burst
        try:
            self.rate.hit(client, "admin", rate, burst)
        except RateLimited as exc:
            # The limiter's message speaks of an API key; here the bucket is an address's.
            raise RateLimited(
                f"admin requests from {client!r} are over their rate limit ({rate:g}/s, burst {burst}); "
                f"the next is allowed in {exc.retry_after_s} s",
                retry_after_s=exc.retry_after_s,
                limit_kind="admin",
            ) from None
