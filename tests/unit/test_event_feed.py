"""The job event feeds alone: one store poller per job, fanned out to every subscriber.

The poll interval is an hour in most tests: the poller then reads only when woken
(a new subscriber, or `notify` as the runner calls it for an event written here),
so every store read is one the test caused and can count.
"""

from __future__ import annotations

import asyncio

import pytest

from serve_app.errors import ServiceUnavailable
from serve_app.jobs.event_feed import JobEventFeeds
from serve_app.jobs.events import EventLog
from serve_app.jobs.sqlite_store import SQLiteJobStore
from tests.helpers.jobs import make_job

HOUR = 3600.0
WAIT_S = 5.0  # a bound on every wait below: a broken feed fails the test, never hangs it


class CountingStore:
    """The real store, counting the calls a feed makes; `fail_reads` makes the next reads raise."""

    def __init__(self, store: SQLiteJobStore) -> None:
        self.store = store
        self.reads = 0
        self.gets = 0
        self.fail_reads: Exception | None = None

    def events_after(self, job_id: str, seq: int, limit: int = 1000) -> list[tuple[int, dict]]:
        self.reads += 1
        if self.fail_reads is not None:
            raise self.fail_reads
        return self.store.events_after(job_id, seq, limit)

    def get(self, job_id: str):
        self.gets += 1
        return self.store.get(job_id)


@pytest.fixture
def store(tmp_path):
    store = SQLiteJobStore(tmp_path / "jobs.db")
    yield store
    store.close()


@pytest.fixture
def job(store):
    job = make_job(1, owner="elsewhere", heartbeat_at=9e18)
    store.create(job)
    store.append_event(job.id, {"type": "queued"})
    return job


async def next_of(subscription, timeout: float = WAIT_S):
    return await subscription.next(timeout=timeout)


def test_one_store_read_per_event_whatever_the_number_of_subscribers(store):
    counting = CountingStore(store)

    async def scenario(n: int, subscribers: int) -> tuple[int, int]:
        job = make_job(n, owner="elsewhere", heartbeat_at=9e18)
        store.create(job)
        store.append_event(job.id, {"type": "queued"})
        feeds = JobEventFeeds(counting, poll_interval_s=HOUR)  # type: ignore[arg-type]
        counting.reads = counting.gets = 0
        subs = [feeds.subscribe(job.id) for _ in range(subscribers)]
        for sub in subs:
            assert await next_of(sub) == (1, {"type": "queued"})
        for step in (1, 2, 3):
            seq = store.append_event(job.id, {"type": "progress", "step": step})
            feeds.notify(job.id)  # as the runner does when it writes the event
            for sub in subs:
                assert await next_of(sub) == (seq, {"type": "progress", "step": step})
        reads = counting.reads
        for sub in subs:
            sub.close()
        return reads, counting.gets

    # One read for the backlog, one per event: the same for 1 subscriber and for 25.
    assert asyncio.run(scenario(1, subscribers=1)) == (4, 0)
    assert asyncio.run(scenario(2, subscribers=25)) == (4, 0)


def test_a_late_subscriber_gets_the_backlog_then_the_live_events_and_nobody_gets_one_twice(store, job):
    async def scenario():
        feeds = JobEventFeeds(store, poll_interval_s=HOUR)
        early = feeds.subscribe(job.id)
        assert (await next_of(early))[0] == 1
        store.append_event(job.id, {"type": "progress", "step": 1})
        feeds.notify(job.id)
        assert (await next_of(early))[0] == 2
        late = feeds.subscribe(job.id)
        resumed = feeds.subscribe(job.id, after_seq=1)  # Last-Event-ID: 1
        assert [(await next_of(late))[0], (await next_of(late))[0]] == [1, 2]
        assert (await next_of(resumed))[0] == 2
        store.append_event(job.id, {"type": "completed"})
        feeds.notify(job.id)
        for sub in (early, late, resumed):
            assert (await next_of(sub)) == (3, {"type": "completed"})
            assert await next_of(sub) is None  # the job's end, and it stays ended
            assert await next_of(sub) is None
        assert feeds.watching() == {job.id: 3}
        for sub in (early, late, resumed):
            sub.close()
        assert feeds.watching() == {}

    asyncio.run(scenario())


def test_the_poller_stops_with_its_last_subscriber(store, job):
    async def scenario():
        feeds = JobEventFeeds(store, poll_interval_s=HOUR)
        first, second = feeds.subscribe(job.id), feeds.subscribe(job.id)
        await next_of(first)
        task = feeds._feeds[job.id].task
        first.close()
        first.close()  # idempotent
        assert feeds.watching() == {job.id: 1} and not task.done()
        second.close()
        assert feeds.watching() == {}
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())


def test_a_subscriber_waiting_times_out_without_losing_what_comes_later(store, job):
    async def scenario():
        feeds = JobEventFeeds(store, poll_interval_s=HOUR)
        sub = feeds.subscribe(job.id, after_seq=1)
        with pytest.raises(TimeoutError):
            await sub.next(timeout=0.01)
        seq = store.append_event(job.id, {"type": "progress", "step": 1})
        feeds.notify(None)  # "some job changed": every feed looks
        assert await next_of(sub) == (seq, {"type": "progress", "step": 1})
        sub.close()

    asyncio.run(scenario())


def test_a_wait_times_out_on_time_while_the_poller_keeps_reading(store, job):
    """Polls that find nothing new must not wake the subscriber: each wake-up used to restart
    its wait, so with a poll every few ms a keep-alive or lifetime timeout never came."""
    counting = CountingStore(store)

    async def scenario():
        feeds = JobEventFeeds(counting, poll_interval_s=0.001)  # type: ignore[arg-type]
        sub = feeds.subscribe(job.id, after_seq=1)  # caught up: only polls finding nothing
        async with asyncio.timeout(WAIT_S):  # broken, it waits forever: fail, do not hang
            with pytest.raises(TimeoutError):
                await sub.next(timeout=0.05)
        assert counting.reads > 2  # the poller read (and found nothing) meanwhile
        sub.close()

    asyncio.run(scenario())


def test_events_written_by_another_replica_arrive_by_polling(store, job):
    async def scenario():
        feeds = JobEventFeeds(store, poll_interval_s=0.01)
        sub = feeds.subscribe(job.id)
        await next_of(sub)
        seq = store.append_event(job.id, {"type": "progress", "step": 1})  # no notify: another replica
        assert await next_of(sub) == (seq, {"type": "progress", "step": 1})
        sub.close()

    asyncio.run(scenario())


def test_a_deleted_job_or_a_terminal_record_without_its_event_ends_the_feed(store, job):
    other = make_job(2, status="failed")
    store.create(other)  # terminal, with no terminal event in its log

    async def scenario():
        feeds = JobEventFeeds(store, poll_interval_s=HOUR)
        sub = feeds.subscribe(job.id)
        await next_of(sub)
        store.delete(job.id)
        feeds.notify(job.id)
        assert await next_of(sub) is None
        done = feeds.subscribe(other.id)
        assert await next_of(done) is None
        sub.close()
        done.close()

    asyncio.run(scenario())


def test_a_store_error_reaches_every_subscriber_and_a_new_subscriber_starts_afresh(store, job):
    counting = CountingStore(store)

    async def scenario():
        feeds = JobEventFeeds(counting, poll_interval_s=HOUR)  # type: ignore[arg-type]
        subs = [feeds.subscribe(job.id) for _ in range(3)]
        for sub in subs:
            await next_of(sub)
        counting.fail_reads = ServiceUnavailable("job store unreachable", retry_after_s=1)
        feeds.notify(job.id)
        for sub in subs:
            with pytest.raises(ServiceUnavailable):
                await next_of(sub)
        counting.fail_reads = None
        fresh = feeds.subscribe(job.id)
        assert (await next_of(fresh))[0] == 1
        for sub in (*subs, fresh):
            sub.close()

    asyncio.run(scenario())


def test_the_event_log_tells_its_listeners_which_job_changed(store, job):
    async def scenario():
        log = EventLog(store)
        seen: list[str | None] = []
        log.listeners.append(seen.append)
        await log.append(job.id, {"type": "progress", "step": 1})
        log.notify()
        assert seen == [job.id, None]

    asyncio.run(scenario())


def test_closing_the_feeds_ends_every_subscriber_with_a_retryable_error(store, job):
    async def scenario():
        feeds = JobEventFeeds(store, poll_interval_s=HOUR)
        sub = feeds.subscribe(job.id)
        await next_of(sub)
        feeds.close()  # the gateway shutting down
        with pytest.raises(ServiceUnavailable):
            await next_of(sub)
        assert feeds.watching() == {}
        sub.close()  # after the feeds are gone: nothing to do, no error

    asyncio.run(scenario())
