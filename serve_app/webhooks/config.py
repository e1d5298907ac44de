"""`WebhookConfig`: where webhooks may go, how they are signed, and how hard delivery tries."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from serve_app.settings.base import StrictModel
from serve_app.webhooks.allowlist import parse_host_entry
from serve_app.webhooks.signing import SECRET_PREFIX, secret_bytes


class WebhookConfig(StrictModel):
    """Where webhooks may go, how they are signed, and how hard delivery tries."""

    enabled: bool = Field(True, description="Accept webhook URLs at all. When false, every webhook URL is rejected.")
    # repr=False: configs get logged; the secret must not be.
    secret: str = Field(
        "",
        repr=False,
        description="Signing secret. 'whsec_<base64>' uses the decoded bytes (Standard Webhooks); "
        "any other string its UTF-8 bytes. Required (non-empty) when `enabled`.",
    )
    allowed_hosts: tuple[str, ...] = Field(
        (),
        description="Destinations webhooks may reach: exact host names ('hooks.example.com'), "
        "suffix patterns ('*.example.com' matches any subdomain, not 'example.com' itself), or "
        "IP addresses / CIDRs ('127.0.0.1', '10.0.0.0/8', 'fd00::/8'). IP entries also permit "
        "names that resolve to those non-public addresses. Empty: no destination is allowed.",
    )
    max_attempts: int = Field(5, ge=1, le=100, description="Delivery attempts per webhook, first one included.")
    backoff_initial_s: float = Field(1.0, ge=0, description="Delay before the 2nd attempt; doubles after each failure.")
    backoff_max_s: float = Field(60.0, ge=0, description="Cap on the delay between two attempts.")
    timeout_s: float = Field(
        10.0, gt=0, description="Wall-clock limit of one attempt (connect, send, response headers)."
    )
    allow_http: bool = Field(
        False, description="Also allow plain http:// URLs (tests, trusted networks); https only when false."
    )

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _normalise_hosts(cls, v: Any) -> Any:
        if isinstance(v, str):
            raise ValueError(f"allowed_hosts={v!r} must be a list of host entries, not one string")
        return v

    @field_validator("allowed_hosts")
    @classmethod
    def _check_hosts(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for entry in v:
            parse_host_entry(entry)  # raises ValueError quoting the entry
        return v

    @field_validator("secret")
    @classmethod
    def _check_secret(cls, v: str) -> str:
        if v.startswith(SECRET_PREFIX):
            try:
                secret_bytes(v)
            except ValueError:
                # Never quote the secret itself in an error message.
                raise ValueError(f"secret starts with {SECRET_PREFIX!r} but the rest is not valid base64") from None
        return v

    @model_validator(mode="after")
    def _check_consistency(self) -> WebhookConfig:
        if self.enabled and not self.secret:
            raise ValueError("secret must be non-empty when enabled=True (unsigned webhooks are not sent)")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError(
                f"backoff_max_s={self.backoff_max_s} must be >= backoff_initial_s={self.backoff_initial_s}"
            )
        return self
