"""The webhook outbox in SQLite and in real Redis: entries, claims that only one gateway wins,
and release at shutdown (issue 15 item 10)."""

from __future__ import annotations

import threading
import uuid

import pytest

from serve_app.jobs.webhook_outbox import RedisWebhookOutbox, SQLiteWebhookOutbox, open_webhook_outbox

CLAIM_S = 100.0


@pytest.fixture(params=["sqlite", "redis"])
def make_outbox(request, tmp_path):
    """Outboxes over one backend, each with its own connection (one per gateway replica)."""
    made = []
    prefix = f"test-outbox-{uuid.uuid4().hex}"

    def make():
        if request.param == "sqlite":
            outbox = SQLiteWebhookOutbox(tmp_path / "jobs.sqlite3")
        else:
            outbox = RedisWebhookOutbox(request.getfixturevalue("redis_server").url, prefix=prefix)
        made.append(outbox)
        return outbox

    yield make
    for outbox in made:
        outbox.close()


def test_an_entry_held_by_its_writer_is_due_once_its_claim_runs_out(make_outbox):
    outbox = make_outbox()
    outbox.owe("video_a", busy_until=150.0)
    outbox.owe("video_b", busy_until=120.0)
    assert outbox.due(now=100.0, limit=10) == []
    assert not outbox.claim("video_a", now=100.0, busy_until=200.0)  # held by its writer
    assert outbox.due(now=150.0, limit=10) == ["video_b", "video_a"]  # longest free first
    assert outbox.due(now=150.0, limit=1) == ["video_b"]
    assert outbox.claim("video_a", now=150.0, busy_until=250.0)
    assert outbox.due(now=200.0, limit=10) == ["video_b"]  # held again, by the claimer
    assert not outbox.claim("video_missing", now=150.0, busy_until=250.0)


def test_owing_again_takes_the_entry_over(make_outbox):
    # A job run again after its runner died: its new end writes the entry anew.
    outbox = make_outbox()
    outbox.owe("video_a", busy_until=0.0)
    assert outbox.claim("video_a", now=10.0, busy_until=10.0 + CLAIM_S)
    outbox.owe("video_a", busy_until=500.0)
    assert outbox.due(now=200.0, limit=10) == []
    assert outbox.due(now=500.0, limit=10) == ["video_a"]


def test_release_makes_it_due_at_once_and_settle_removes_it(make_outbox):
    outbox = make_outbox()
    outbox.owe("video_a", busy_until=1000.0)
    outbox.release("video_a")
    assert outbox.due(now=1.0, limit=10) == ["video_a"]
    outbox.settle("video_a")
    assert outbox.due(now=1e12, limit=10) == []
    outbox.release("video_a")  # settled meanwhile: nothing comes back
    outbox.settle("video_a")
    assert outbox.due(now=1e12, limit=10) == []


def test_of_gateways_claiming_together_exactly_one_wins(make_outbox):
    outboxes = [make_outbox() for _ in range(4)]
    outboxes[0].owe("video_a", busy_until=50.0)
    threads = 8
    barrier = threading.Barrier(threads)
    won: list[bool] = [False] * threads
    errors: list[BaseException] = []

    def claim(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            won[i] = outboxes[i % len(outboxes)].claim("video_a", now=100.0, busy_until=100.0 + CLAIM_S)
        except BaseException as exc:  # noqa: BLE001 - surfaced below: a thread's exception is otherwise lost
            errors.append(exc)

    workers = [threading.Thread(target=claim, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    assert not errors, errors
    assert won.count(True) == 1


def test_the_outbox_opens_beside_the_job_store(tmp_path, redis_server):
    opened = [
        open_webhook_outbox("", tmp_path),
        open_webhook_outbox("sqlite", tmp_path),
        open_webhook_outbox(f"sqlite://{tmp_path}/other.db", tmp_path),
        open_webhook_outbox(redis_server.url, tmp_path),
    ]
    try:
        assert [type(o).__name__ for o in opened] == ["SQLiteWebhookOutbox"] * 3 + ["RedisWebhookOutbox"]
        assert opened[0].path == opened[1].path == tmp_path / "jobs.sqlite3"
        assert opened[2].path == tmp_path / "other.db"
    finally:
        for outbox in opened:
            outbox.close()
    with pytest.raises(ValueError, match="'postgres'") as refused:
        open_webhook_outbox("postgres://user:secret@db/jobs", tmp_path)
    assert "secret" not in str(refused.value)
