"""`StreamOptions`: bounds on the progress streams (SSE `/events` and WebSocket `/ws`).

It becomes `ServiceArgs.streams` (the `streams:` block of serve_config.yaml);
serve_app/api/streams.py enforces it. A stream is a long-lived connection that
holds a socket, a task and a share of the job's store poller on one gateway
replica, so each is capped in number and in lifetime; a client resumes where it
left off (`Last-Event-ID`), so ending a stream loses nothing.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from serve_app.settings.base import StrictModel


class StreamOptions(StrictModel):
    """How many progress streams may be open, for how long, and how they are kept alive and fed."""

    max_per_key: int = Field(
        8,
        ge=1,
        description="Progress streams (SSE and WebSocket together) one API key may hold open on one gateway "
        "replica; one more gets a 429 `too_many_streams`. Keyless traffic counts as one client, 'anonymous', "
        "only with `access.limit_anonymous`; otherwise only `max_per_replica` bounds it.",
    )
    max_per_replica: int = Field(
        1000,
        ge=1,
        description="Progress streams one gateway replica holds open in all, whoever asks (429 `too_many_streams` "
        "beyond it): the bound that also holds with auth off.",
    )
    max_lifetime_s: float = Field(
        600.0,
        gt=0,
        description="A stream open this long ends cleanly: SSE sends a final `reconnect` event (with `retry:`), "
        "WebSocket a `reconnect` message and close code 4000. The client reconnects (SSE with `Last-Event-ID`, "
        "WebSocket with `?last_event_id=`) and loses nothing; a client gone silent holds its slot no longer.",
    )
    keepalive_s: float = Field(
        15.0,
        gt=0,
        description="An SSE stream with no event for this long gets a comment line (`: keep-alive`), so proxies "
        "and load balancers with idle timeouts (nginx: 60 s) keep it open, and a vanished client is noticed at "
        "the next write.",
    )
    poll_interval_s: float = Field(
        0.25,
        gt=0,
        description="How often a job's one store poller (shared by all its streams on a replica) reads the store "
        "for events written by other replicas; events written on this replica wake it at once.",
    )
    retry_after_s: float = Field(
        5.0, gt=0, description="Retry-After (seconds) of a stream refused with 429 `too_many_streams`."
    )

    @model_validator(mode="after")
    def _per_key_within_replica(self) -> StreamOptions:
        if self.max_per_key > self.max_per_replica:
            raise ValueError(
                f"max_per_key={self.max_per_key} > max_per_replica={self.max_per_replica}: "
                "one key could never reach its cap"
            )
        return self
