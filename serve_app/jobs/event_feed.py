"""One store poller per watched job, fanned out to every reader of it on this replica.

SSE and WebSocket streams read a job's events from the store's per-job log
(any replica may write them). Before this, every connection ran its own poll
loop: N viewers of a job cost N store reads every poll interval, and every
event written on this replica woke every loop of every job. Now a job watched
by anyone has exactly one `_poll` task here, which reads the log from the
oldest position any of its subscribers needs and hands each subscriber the
events past its own position. It is woken early by an event written here for
that job (`notify(job_id)`, wired to the runner's event log) or by a new
subscriber, and otherwise reads every `poll_interval_s`; it ends when its last
subscriber leaves or every subscriber has reached the job's end. Its store reads
run on the store's thread (store_thread.py), not on the event loop.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any

from serve_app.errors import NotFound, ServiceUnavailable
from serve_app.jobs.model import TERMINAL, JobStore
from serve_app.jobs.store_thread import off_loop

log = logging.getLogger("ray.serve")

# Events read per store call. A full page means more may wait behind it: read again at once.
READ_LIMIT = 1000

Event = tuple[int, dict[str, Any]]
_END = object()  # the job ended (terminal event, terminal record or deleted)


class Subscription:
    """One reader's view of a job's events, from after `seq` on. Not thread-safe (one event loop)."""

    def __init__(self, feeds: JobEventFeeds, job_id: str, after_seq: int) -> None:
        self._feeds = feeds
        self.job_id = job_id
        self.seq = after_seq  # the last event handed to this subscriber
        self.ended = False  # nothing more will come (its end, or an error, is queued)
        self.closed = False
        self._items: collections.deque[object] = collections.deque()
        self._ready = asyncio.Event()

    async def next(self, timeout: float | None = None) -> Event | None:
        """The next event, or None once the job has ended; `TimeoutError` if none comes within
        `timeout` seconds (None: wait as long as it takes). A store error of the poller is raised here."""
        # One deadline for the whole wait, however often the subscriber is woken meanwhile.
        async with asyncio.timeout(timeout):
            while not self._items:
                self._ready.clear()
                await self._ready.wait()
        item = self._items[0]
        if item is _END:
            return None  # left queued: every later call says the same
        self._items.popleft()
        if isinstance(item, BaseException):
            self._items.appendleft(_END)
            raise item
        return item  # type: ignore[return-value]

    def close(self) -> None:
        """Stop reading (idempotent); the job's poller stops with its last subscriber."""
        if not self.closed:
            self.closed = True
            self._feeds._unsubscribe(self)

    # --- called by the poller ---------------------------------------------------------

    def _offer(self, batch: list[Event]) -> None:
        for seq, event in batch:
            if seq <= self.seq:
                continue  # another subscriber needed it; this one has it
            self.seq = seq
            self._items.append((seq, event))
            if event.get("type") in TERMINAL:
                self._end()
                return
        if self._items:
            self._ready.set()  # only when there is something: a reader is not woken for nothing

    def _end(self, error: BaseException | None = None) -> None:
        if not self.ended:
            self.ended = True
            self._items.append(_END if error is None else error)
        self._ready.set()


class _Feed:
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.subscribers: list[Subscription] = []
        # Level-triggered, cleared before each read: a wake-up that comes while the
        # store is being read is kept for the next round, never lost.
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class JobEventFeeds:
    """The event feeds of the jobs watched on this replica."""

    def __init__(self, store: JobStore, poll_interval_s: float) -> None:
        self.store = store
        self.jobs = off_loop(store)
        self.poll_interval_s = poll_interval_s
        self._feeds: dict[str, _Feed] = {}

    def subscribe(self, job_id: str, after_seq: int = 0) -> Subscription:
        """Events of `job_id` with sequence numbers above `after_seq`, live, up to its end."""
        feed = self._feeds.get(job_id)
        if feed is None:
            feed = self._feeds[job_id] = _Feed(job_id)
        subscription = Subscription(self, job_id, after_seq)
        feed.subscribers.append(subscription)
        feed.wake.set()  # its first events now, not at the next poll
        if feed.task is None or feed.task.done():
            feed.task = asyncio.get_running_loop().create_task(self._poll(feed), name=f"event-feed-{job_id}")
        return subscription

    def notify(self, job_id: str | None) -> None:
        """An event of `job_id` was written on this replica (None: of any job). Never raises:
        the runner calls it while writing the event."""
        if job_id is None:
            woken = list(self._feeds.values())
        else:
            one = self._feeds.get(job_id)
            woken = [] if one is None else [one]
        for feed in woken:
            feed.wake.set()

    def watching(self) -> dict[str, int]:
        """Subscribers per watched job (for /healthz-style reports and tests)."""
        return {job_id: len(feed.subscribers) for job_id, feed in self._feeds.items()}

    def close(self) -> None:
        """Stop every poller (shutdown). Their subscribers get a 503 `service_unavailable`, which
        ends their streams with `reconnect`: to another replica, or to this one once back."""
        for feed in self._feeds.values():
            if feed.task is not None:
                feed.task.cancel()
            for subscription in feed.subscribers:
                subscription._end(ServiceUnavailable("this gateway replica is shutting down", retry_after_s=1))
        self._feeds.clear()

    def _unsubscribe(self, subscription: Subscription) -> None:
        feed = self._feeds.get(subscription.job_id)
        if feed is None or subscription not in feed.subscribers:
            return
        feed.subscribers.remove(subscription)
        if not feed.subscribers:
            if feed.task is not None:
                feed.task.cancel()
            del self._feeds[feed.job_id]

    async def _poll(self, feed: _Feed) -> None:
        try:
            while True:
                # Who is served this round is fixed before the read: one who subscribes
                # during it may need older events than it returns, and is served next round.
                readers = [s for s in feed.subscribers if not s.ended]
                if not readers:
                    return
                feed.wake.clear()
                low = min(s.seq for s in readers)
                batch = await self.jobs.events_after(feed.job_id, low, READ_LIMIT)
                for reader in readers:
                    reader._offer(batch)
                if len(batch) >= READ_LIMIT or any(s.ended for s in readers):
                    continue  # a full page, or someone is done: look again before waiting
                if not batch and await self.jobs.call(self._over, feed.job_id, low):
                    for reader in readers:
                        reader._end()
                    continue
                await self._pause(feed)
        except Exception as exc:  # noqa: BLE001 - handed to the readers, whose streams end with it
            log.warning("event feed of %s stopped: %s", feed.job_id, exc, extra={"job_id": feed.job_id})
            # Everyone still waiting, not only this round's readers: this task is ending, and a
            # subscriber left waiting on it would wait forever.
            for subscription in feed.subscribers:
                subscription._end(exc)

    def _over(self, job_id: str, seq: int) -> bool:
        """Nothing more will come after `seq`: the job is gone, or finished with no event left to read
        (a terminal record whose terminal event is not in the log). Blocking: two reads, in one call."""
        try:
            job = self.store.get(job_id)
        except NotFound:
            return True  # deleted while watched
        # Read again: its terminal event may have been written between the two reads.
        return job.terminal and not self.store.events_after(job_id, seq, 1)

    async def _pause(self, feed: _Feed) -> None:
        try:
            async with asyncio.timeout(self.poll_interval_s):
                await feed.wake.wait()
        except TimeoutError:
            pass
