"""Gateways for the progress-stream tests: no Ray, keys for two clients, jobs nothing runs.

A job from `queued_job` is queued and held by a live runner elsewhere, so nothing here
runs it; a test writes each of its events with `write_event`, as the runner writes one
(through its event log, which wakes the job's feed on this replica).
"""

from __future__ import annotations

from pathlib import Path

from serve_app.access.guard import AccessGuard
from serve_app.access.keys import hash_secret
from serve_app.api.gateway_app import GatewayApp
from serve_app.config import ServiceArgs
from serve_app.settings.access import AccessConfig
from tests.helpers.access import bearer as bearer
from tests.helpers.fakes import FakeGenerator
from tests.helpers.jobs import make_job
from tests.helpers.service import TEST_TIMINGS, gateway_over

ALICE = "wan_alice-secret-0123456789abcdef"
BOB = "wan_bob-secret-0123456789abcdef00"
# Between two polls of a job's feed unless a test says otherwise: the store is then read
# only when the feed is woken, so every read is one the test caused and can count.
HOUR = 3600.0


def two_keys() -> AccessGuard:
    """Auth on, with the keys 'alice' (ALICE) and 'bob' (BOB) and the default limits."""
    keys = [{"id": "alice", "sha256": hash_secret(ALICE)}, {"id": "bob", "sha256": hash_secret(BOB)}]
    return AccessGuard(AccessConfig(api_keys=keys, api_keys_env=""), {})


def stream_gateway(data_dir: Path, access: AccessGuard | None = None, **streams) -> GatewayApp:
    """A gateway over a fake graph with `args.streams` = `streams` (poll interval an hour unless given)."""
    args = ServiceArgs(data_dir=str(data_dir), streams={"poll_interval_s": HOUR, **streams}, **TEST_TIMINGS)
    return gateway_over(data_dir, FakeGenerator(), args=args, access=access)


def queued_job(gateway: GatewayApp, n: int = 1, key_id: str | None = None) -> str:
    """A queued job that nothing here runs, with its `queued` event (seq 1)."""
    job = make_job(n, owner="elsewhere", heartbeat_at=9e18, key_id=key_id)
    gateway.stores.jobs.create(job)
    gateway.stores.jobs.append_event(job.id, {"type": "queued", "status": "queued"})
    return job.id


def write_event(gateway: GatewayApp, video_id: str, event: dict) -> None:
    """Write one of the job's events as its runner does: to the store, then wake the readers here."""
    events = gateway.runner._events
    events.write(video_id, event)  # the store's half of `append`, here on the caller's thread
    events.notify(video_id)
