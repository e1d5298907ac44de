"""Access-control test inputs: three API key secrets, a config that knows two of them, a clock to set."""

from __future__ import annotations

import uuid

from serve_app.access.config import AccessConfig
from serve_app.access.keys import hash_secret

ALICE = "wan_alice-secret-0123456789abcdef"
BOB = "wan_bob-secret-0123456789abcdef00"
ADMIN = "wan_admin-secret-0123456789abcdef"


def bearer(secret: str) -> dict[str, str]:
    """The Authorization header of a request made with API key `secret`."""
    return {"Authorization": f"Bearer {secret}"}


class FakeClock:
    """The in-process limiters' clock, moved by hand: refills and lease expiry without waiting."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def keyed_config(**overrides) -> AccessConfig:
    """Keys for alice (burst 2, one job at a time) and ops (admin); none from the environment."""
    data = {
        "api_keys": [
            {"id": "alice", "sha256": hash_secret(ALICE), "burst": 2, "max_concurrent_jobs": 1},
            {"id": "ops", "sha256": hash_secret(ADMIN), "admin": True},
        ],
        "api_keys_env": "",
    }
    data.update(overrides)
    return AccessConfig.model_validate(data)


def unique_prefix() -> str:
    """A Redis key prefix of one test's own: tests share the session's redis_server."""
    return f"test-access:{uuid.uuid4().hex}"
