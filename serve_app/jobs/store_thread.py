"""Where code on a gateway's event loop does its job-store work: on one thread per store.

Every `JobStore` call blocks. SQLite waits up to BUSY_TIMEOUT_S for the file's write
lock while another process (another gateway replica on the host) holds it, and for its
connection's lock while this process's expiry sweep writes; Redis waits a round trip, or
its socket timeout when the server does not answer. Made on the event loop, each call
held every request, stream, heartbeat and webhook of the replica for that long. Code on
the loop now hands the call to `off_loop(store)` and awaits it.

Why a dedicated single-thread executor per store, not `asyncio.to_thread`'s shared pool:

- Order. On the loop, store calls ran one at a time in the order coroutines reached
  them, and the service relies on that: a job's step writes land in step order, and a
  create's admission, reading the queue, sees every job another create of this replica
  stored before it let go of its reservation (api/create.py). One worker runs the calls
  first in, first out, and their callers resume in the order the calls finished, so
  the interleaving the loop gave is kept; only the waiting moved off the loop.
- SQLite gains nothing from more threads: a store has one connection behind a lock, so
  extra threads would queue on that lock (each one a pool worker that S3 uploads and
  DNS lookups in `asyncio.to_thread` then wait for), and a connection per thread would
  let reads pass a write that waits for the file's lock, at the cost of that order. The
  cost of one thread: while a write waits for another process's lock, this replica's
  other store calls wait behind it (as they did on the loop), but the loop does not.
- Composite work (read, decide, compare-and-save, read again: jobs/writes.py) goes as
  one sync function through `call`: one hop, and no other store call of this replica
  in between, as when it ran on the loop.

What touches asyncio objects (events, tasks, the load monitor's reservations) stays on
the loop: a composite returns what the loop then acts on.

A caller cancelled while it awaits (a client hanging up) does not stop a call that has
started: every store call is one atomic step, done or not, never half done; one still
queued behind others is dropped. The expiry sweep keeps its own worker thread
(jobs/runner.py): it runs for long, and the store's own lock orders it against this one.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar

if TYPE_CHECKING:
    from serve_app.jobs.model import JobRecord, JobStore

P = ParamSpec("P")
T = TypeVar("T")


class StoreThread:
    """A job store's calls, as coroutines that run them on the store's own thread."""

    def __init__(self, store: JobStore) -> None:
        # Weak: the registry below maps the store to this, and must not keep it alive.
        self._store = weakref.ref(store)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="job-store")

    @property
    def store(self) -> JobStore:
        store = self._store()
        if store is None:
            raise RuntimeError("the job store was garbage-collected")
        return store

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(*args, **kwargs)` on the store's thread: a store method, or a sync function that
        makes several store calls as one piece of work."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        """Run what is queued, then stop the thread (before the store closes)."""
        self._executor.shutdown(wait=True)

    # The JobStore calls made on the event loop one at a time (model.py says what each does).

    async def get(self, job_id: str) -> JobRecord:
        return await self.call(self.store.get, job_id)

    async def create(self, job: JobRecord) -> tuple[JobRecord, bool]:
        return await self.call(self.store.create, job)

    async def delete(self, job_id: str) -> None:
        await self.call(self.store.delete, job_id)

    async def request_cancel(self, job_id: str) -> JobRecord:
        return await self.call(self.store.request_cancel, job_id)

    async def request_delete(self, job_id: str) -> JobRecord:
        return await self.call(self.store.request_delete, job_id)

    async def attach(self, job_id: str) -> JobRecord | None:
        return await self.call(self.store.attach, job_id)

    async def cancel_abandoned(self, job_id: str) -> bool:
        return await self.call(self.store.cancel_abandoned, job_id)

    async def claim(self, job_id: str, owner: str, now: float, lease_s: float) -> JobRecord | None:
        return await self.call(self.store.claim, job_id, owner, now, lease_s)

    async def claimable(self, now: float, lease_s: float, limit: int) -> list[str]:
        return await self.call(self.store.claimable, now, lease_s, limit)

    async def queue_position(self, job: JobRecord) -> int:
        return await self.call(self.store.queue_position, job)

    async def events_after(self, job_id: str, seq: int, limit: int = 1000) -> list[tuple[int, dict[str, Any]]]:
        return await self.call(self.store.events_after, job_id, seq, limit)

    # Last: inside the class, `list` names this method from here on.
    async def list(
        self, after: str | None, limit: int, order: Literal["asc", "desc"], key_id: str | None = None
    ) -> tuple[list[JobRecord], bool]:
        return await self.call(self.store.list, after, limit, order, key_id)


# One StoreThread per store object, whoever asks (runner, views, creator, feeds, webhooks):
# the order above holds across all of them only if they share the one thread.
_threads: weakref.WeakKeyDictionary[Any, StoreThread] = weakref.WeakKeyDictionary()
_threads_lock = threading.Lock()


def off_loop(store: JobStore) -> StoreThread:
    """The store's thread: made on first use, shared by every caller of this store object,
    gone with the store (its idle worker thread exits once nothing refers to it)."""
    with _threads_lock:
        thread = _threads.get(store)
        if thread is None:
            thread = _threads[store] = StoreThread(store)
        return thread


def close_off_loop(store: JobStore) -> None:
    """Finish the store's queued calls and stop its thread, if it has one: before `store.close()`."""
    with _threads_lock:
        thread = _threads.pop(store, None)
    if thread is not None:
        thread.close()
