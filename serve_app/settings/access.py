"""`AccessConfig`: API keys, per-key rate limits and job caps, request size.

It becomes `ServiceArgs.access` (the `access:` block of serve_config.yaml);
the `serve_app.access` package enforces it. Prompt length is not here:
`GenerationLimits.max_prompt_chars` (configs/presets.yaml) already bounds it,
and one knob for one limit is enough.

Auth is off when no key is configured (neither `api_keys` nor the environment
variable named by `api_keys_env`), which is the local `make run`; it is on as
soon as any key exists.
"""

from __future__ import annotations

import re

from pydantic import ConfigDict, Field, field_validator, model_validator

from serve_app.settings.base import StrictModel

# Key ids end up in Redis key names, log lines and metric labels: keep them to
# characters that need no quoting anywhere.
KEY_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
KEY_ID_RE = re.compile(KEY_ID_PATTERN)
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# The principal of keyless requests; no configured key may take its name.
ANONYMOUS_ID = "anonymous"
DEFAULT_KEYS_ENV = "WAN_SERVE_API_KEYS"
# The Host values a keyless gateway answers unless `allowed_hosts` says otherwise: loopback
# names (`make run`), and 'testserver', the host Starlette's TestClient and schemathesis send.
# A web page can only send these when the browser itself resolves them to this machine.
LOCAL_HOSTS = ("localhost", "*.localhost", "127.0.0.1", "[::1]", "testserver")
ORIGIN_RE = re.compile(r"^https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$")


class _Strict(StrictModel):
    # Validation errors must not print inputs: a secret pasted where its sha256 belongs, or a
    # store URL with a password, would land in the gateway's start-up log. (pydantic merges
    # this with StrictModel's extra="forbid", frozen=True.)
    model_config = ConfigDict(hide_input_in_errors=True)


class ApiKeyEntry(_Strict):
    """One API key: its public id and the SHA-256 of its secret, never the secret."""

    id: str = Field(
        description="Name of the key in logs, metrics and error messages (letters, digits, '_.-', at most 64; "
        f"not {ANONYMOUS_ID!r}). Never the secret."
    )
    sha256: str = Field(description="Hex SHA-256 of the secret (`python -m serve_app.access.keys hash -` prints it).")
    admin: bool = Field(False, description="The key may call admin routes (e.g. cache purge).")
    rate_per_s: float | None = Field(
        None, gt=0, description="This key's `rate_per_s` (creates); unset takes `access.rate_per_s`."
    )
    burst: int | None = Field(None, ge=1, description="This key's `burst` (creates); unset takes `access.burst`.")
    read_rate_per_s: float | None = Field(
        None,
        ge=0,
        description="This key's `read_rate_per_s` (0: reads unlimited); unset takes `access.read_rate_per_s`.",
    )
    read_burst: int | None = Field(None, ge=1, description="This key's `read_burst`; unset takes `access.read_burst`.")
    max_concurrent_jobs: int | None = Field(
        None, ge=1, description="This key's `max_concurrent_jobs`; unset takes `access.max_concurrent_jobs`."
    )

    @field_validator("id")
    @classmethod
    def _id_form(cls, v: str) -> str:
        check_key_id(v, "api_keys[].id")
        return v

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, v: str) -> str:
        digest = v.strip().lower()
        if not SHA256_RE.match(digest):
            # Someone may have pasted the secret itself here: say so without echoing it.
            raise ValueError(
                f"sha256 must be 64 hex characters (got {len(v)} characters); paste the output of "
                "`python -m serve_app.access.keys hash -`, not the secret"
            )
        return digest


def check_key_id(key_id: str, where: str) -> None:
    if not KEY_ID_RE.match(key_id):
        raise ValueError(f"{where}={key_id!r} must match {KEY_ID_PATTERN} (it is used in logs and Redis keys)")
    if key_id == ANONYMOUS_ID:
        raise ValueError(f"{where}={key_id!r} is reserved for keyless requests when auth is off")


class AccessConfig(_Strict):
    """Who may call the gateway and how much: API keys, rate limits, job caps, body size."""

    api_keys: list[ApiKeyEntry] = Field(
        default_factory=list,
        description="API keys (id + sha256 of the secret, optional per-key limits, admin). "
        "Any key here or in `api_keys_env` turns auth on; with none, auth is off.",
    )
    api_keys_env: str = Field(
        DEFAULT_KEYS_ENV,
        description="Environment variable with more keys as 'id:secret,id2:secret2' "
        "(append ':admin' to an entry for an admin key); hashed at start, the secrets are not kept. '' reads none.",
    )
    rate_per_s: float = Field(
        1.0, gt=0, description="Token bucket per key for creates (POST /v1/videos): tokens added per second."
    )
    burst: int = Field(
        10, ge=1, description="Token bucket per key for creates: size (creates allowed at once after a quiet spell)."
    )
    read_rate_per_s: float = Field(
        10.0,
        ge=0,
        description="A separate, lighter bucket per key for every other route (polls, lists, "
        "downloads, cancels): tokens per second; 0 leaves reads unlimited.",
    )
    read_burst: int = Field(50, ge=1, description="Size of the per-key read bucket.")
    max_concurrent_jobs: int = Field(
        4, ge=1, description="Unfinished (queued or running) jobs one key may have; one more gets a 429."
    )
    concurrency_retry_after_s: float = Field(
        5.0,
        gt=0,
        description="Retry-After of a 429 for too many concurrent jobs when the caller has no "
        "better estimate of when a job of that key finishes.",
    )
    job_slot_lease_s: float = Field(
        1800.0,
        gt=0,
        description="A job counts against its key's cap for this long after its last acquire "
        "or touch, unless released first. A backstop for releases that never came (a lost gateway); jobs "
        "normally release when they finish, on whichever gateway that is.",
    )
    limit_anonymous: bool = Field(
        False,
        description="With auth off, apply the limits above to keyless traffic: all callers together "
        "are one client, 'anonymous'. Off by default: a keyless service (local runs, the web page, "
        "benchmarks) is protected by admission control, not by a per-client cap it cannot attribute.",
    )
    store: str = Field(
        "",
        description="Where limiter state lives: '' (in each gateway process: limits are per replica) or "
        "'redis://host:port/db' / 'rediss://...' (shared by all gateway replicas, so limits hold across them).",
    )
    store_prefix: str = Field("wanserve:access", min_length=1, description="Prefix of the limiter's Redis keys.")
    max_body_bytes: int = Field(
        64 * 1024,
        ge=1024,
        description="Largest request body, bytes (larger: 413), besides an `input_reference` image, which "
        "has its own limit (`image_input.max_bytes`). Prompt length is `limits.max_prompt_chars` of the presets file.",
    )

    admin_rate_per_s: float = Field(
        1.0,
        gt=0,
        description="Token bucket for the admin routes (/v1/cache...), per client address and spent before the "
        "admin key is checked, so guessing the key is as slow as using it: tokens per second.",
    )
    admin_burst: int = Field(10, ge=1, description="Size of the per-address admin bucket.")
    allowed_hosts: list[str] | None = Field(
        None,
        description="Host header values the gateway answers (Starlette's TrustedHostMiddleware patterns: "
        "'video.example.com', '*.example.com', '*' for any); others get 400 untrusted_host. This stops DNS "
        "rebinding, where a web page whose name now points at this service reads its answers. Unset: with "
        f"auth off only {list(LOCAL_HOSTS)}; with auth on any host (a page cannot present a key).",
    )
    trusted_origins: list[str] = Field(
        default_factory=list,
        description="Origins ('https://app.example.com') whose web pages may send POST/DELETE requests and open "
        "WebSockets here besides the gateway's own origin. A browser request from any other origin is refused "
        "(403 cross_origin_refused): with auth off a cross-site form could otherwise start jobs. Clients "
        "that send no Origin header (SDKs, curl) are not affected.",
    )

    @field_validator("allowed_hosts")
    @classmethod
    def _host_patterns(cls, v: list[str] | None) -> list[str] | None:
        for pattern in v or []:
            # TrustedHostMiddleware's own rule, checked here so a bad pattern fails at start, quoted.
            if (
                not pattern
                or "*" in pattern[1:]
                or (pattern.startswith("*") and pattern != "*" and pattern[:2] != "*.")
            ):
                raise ValueError(
                    f"allowed_hosts entry {pattern!r} must be a host name, '*.suffix' or '*' (no ports, no other "
                    "wildcards)"
                )
            if ":" in pattern.strip("[]") and not pattern.startswith("["):
                raise ValueError(f"allowed_hosts entry {pattern!r}: write IPv6 addresses in brackets, '[::1]'")
        return v

    @field_validator("trusted_origins")
    @classmethod
    def _origin_form(cls, v: list[str]) -> list[str]:
        for origin in v:
            if not ORIGIN_RE.match(origin):
                raise ValueError(
                    f"trusted_origins entry {origin!r} must be scheme://host[:port] with no path, like a browser's "
                    "Origin header ('https://app.example.com')"
                )
        return v

    @model_validator(mode="after")
    def _unique_keys(self) -> AccessConfig:
        seen_ids: set[str] = set()
        seen_digests: dict[str, str] = {}
        for entry in self.api_keys:
            if entry.id in seen_ids:
                raise ValueError(f"api_keys: id {entry.id!r} appears twice")
            seen_ids.add(entry.id)
            if entry.sha256 in seen_digests:
                # One secret for two ids would make the principal depend on list order.
                raise ValueError(
                    f"api_keys: {entry.id!r} and {seen_digests[entry.sha256]!r} have the same sha256 (same secret)"
                )
            seen_digests[entry.sha256] = entry.id
        return self

    @field_validator("store")
    @classmethod
    def _store_form(cls, v: str) -> str:
        if v and not v.startswith(("redis://", "rediss://")):
            # Only the scheme: the rest of a URL may hold a password.
            scheme = v.split("://", 1)[0] if "://" in v else "(none)"
            raise ValueError(f"store scheme {scheme!r} is unknown; use '' (in-process) or 'redis://host:port/db'")
        return v

    @field_validator("api_keys_env")
    @classmethod
    def _env_name(cls, v: str) -> str:
        if v and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", v):
            raise ValueError(f"api_keys_env={v!r} is not an environment variable name")
        return v
