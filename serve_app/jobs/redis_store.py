"""The job store in Redis: for gateway replicas spread over several nodes.

Keys (P = prefix):

- `P:job:{id}`       the `JobRecord` as JSON (the only copy of the record)
- `P:jobs`           zset, member id, score created_at: every job, in list order
- `P:queued`         zset like `P:jobs`, only jobs whose status is 'queued'
- `P:active`         zset like `P:jobs`, only non-terminal jobs (claimable() walks it)
- `P:idem:{key}`     idempotency key -> id
- `P:eventseq:{id}`  counter (INCR) of the job's events
- `P:events:{id}`    stream; entry id "0-{seq}", field "e" = the event as JSON
- `P:bykey:{key_id}`, `P:ended`, `P:filesdue`, `P:trim`, `P:schema`: the history
  zsets (lists per API key, retention, the expiry sweep's work): redis_history.py

Ordering: a zset orders members of equal score by their bytes, so score =
created_at and member = id give exactly list()'s (created_at, id) order with
no encoding of the float into the member (an encoded member would need a fixed
width and precision, and breaks for negative or huge values). Scores are
doubles, as created_at is, and go over the wire as repr(), so they round-trip
exactly. Pages are taken by rank (ZRANK of `after`, then ZRANGE from there)
inside one script, so no write can slip between the two.

Atomicity: every write that touches the record and its index zsets is a Lua
script (run by Redis as one step), so the zsets never disagree with the
record. claim() and heartbeat() read the record in Python, decide, and write
through a compare-and-set script that writes only if the stored JSON is still
the one that was read; on a mismatch they read again and re-decide. This is
WATCH/MULTI's optimistic scheme in one round trip, without pinning a pooled
connection for the WATCH, and keeps Python as the only JSON encoder (Lua's
cjson would re-encode floats with 14 digits, losing sub-second created_at).
save(), compare_and_save() and the flag updates (request_cancel, request_delete,
attach, cancel_abandoned) write the same way, so each is one step however many
clients write the job.
register_script re-loads scripts after a Redis restart (NOSCRIPT) by itself.

The scripts also touch keys they build from the prefix rather than receive in
KEYS; that is fine on one Redis (or a Sentinel primary), not on Redis Cluster.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Literal

# Unused here, imported all the same: without the optional client this module fails
# to import, which stores.py turns into an install hint.
import redis  # noqa: F401

from serve_app.errors import NotFound
from serve_app.jobs.flag_updates import FlagUpdates
from serve_app.jobs.model import (
    TERMINAL,
    JobRecord,
    check_list_args,
    claimable_by_anyone,
    ended_at,
    own_files_expire_at,
    refuse_reopening,
)
from serve_app.jobs.redis_history import REINDEX, SCHEMA_VERSION, score
from serve_app.jobs.redis_scripts import APPEND, CREATE, DELETE, LIST, PUT
from serve_app.redis_client import open_redis
from serve_app.redis_errors import unavailable_as_503
from serve_app.settings.redis import RedisClientOptions

# Records read per round trip while claimable() walks the active jobs.
_SCAN_BATCH = 200


def _not_found(job_id: str) -> NotFound:
    return NotFound(f"no video with id {job_id!r}", param="video_id")


@unavailable_as_503("job store")
class RedisJobStore(FlagUpdates):
    def __init__(self, url: str, prefix: str = "wanserve", *, options: RedisClientOptions | None = None) -> None:
        self.prefix = prefix
        # Timeouts (redis_client.py): a blackholed Redis is a 503, not a hung event loop.
        self._redis = open_redis(url, options)
        self._create = self._redis.register_script(CREATE)
        self._put = self._redis.register_script(PUT)
        self._delete = self._redis.register_script(DELETE)
        self._list = self._redis.register_script(LIST)
        self._append = self._redis.register_script(APPEND)
        self._reindex = self._redis.register_script(REINDEX)
        # Checked on first use, not here: opening a store must not need Redis to be up.
        self._history_indexed = False

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def _index_keys(self, job_id: str) -> list[str]:
        return [
            self._key("job", job_id),
            self._key("jobs"),
            self._key("queued"),
            self._key("active"),
            *self._history_keys(),
        ]

    def _history_keys(self) -> list[str]:
        return [self._key("ended"), self._key("filesdue"), self._key("trim")]

    def _bykey(self, key_id: str | None) -> str:
        return "" if key_id is None else self._key("bykey", key_id)

    def _index_args(self, job: JobRecord) -> list[str]:
        return [
            job.model_dump_json(),
            job.id,
            repr(job.created_at),
            "1" if job.status == "queued" else "0",
            "0" if job.status in TERMINAL else "1",
            score(ended_at(job)),
            score(own_files_expire_at(job)),
        ]

    def create(self, job: JobRecord) -> tuple[JobRecord, bool]:
        keys = self._index_keys(job.id)
        if job.idempotency_key is not None:
            keys.append(self._key("idem", job.idempotency_key))
        result = self._create(keys=keys, args=[*self._index_args(job), self.prefix, self._bykey(job.key_id)])
        if result[0] == 0:
            return JobRecord.model_validate_json(result[1]), False
        if result[0] == -1:
            # Ids are random; a clash is a bug in the caller, not a request to merge.
            raise ValueError(f"job {job.id!r} already exists")
        return job, True

    def _read(self, job_id: str) -> tuple[JobRecord, str] | None:
        raw = self._redis.get(self._key("job", job_id))
        return None if raw is None else (JobRecord.model_validate_json(raw), raw)

    def get(self, job_id: str) -> JobRecord:
        found = self._read(job_id)
        if found is None:
            raise _not_found(job_id)
        return found[0]

    def save(self, job: JobRecord) -> None:
        # Written only over an existing record: a runner finishing a job that
        # was deleted meanwhile must not bring it back.
        while True:
            found = self._read(job.id)
            if found is None:
                raise _not_found(job.id)
            stored, raw = found
            refuse_reopening(job, stored.status)
            written = job.model_copy(update={"revision": stored.revision + 1})
            if self._compare_and_set(raw, written):
                job.revision = written.revision
                return

    def compare_and_save(self, job: JobRecord) -> bool:
        found = self._read(job.id)
        if found is None:
            raise _not_found(job.id)
        stored, raw = found
        if stored.revision != job.revision:
            return False
        refuse_reopening(job, stored.status)
        written = job.model_copy(update={"revision": job.revision + 1})
        # Through the one write script every record write takes (its indexes stay whole);
        # it compares the stored JSON with what was just read, so nothing slips in between.
        if not self._compare_and_set(raw, written):
            return False
        job.revision = written.revision
        return True

    def _modify(self, job_id: str, change: Callable[[JobRecord], bool]) -> tuple[JobRecord, bool]:
        """Run `change` on the stored record and write it if it returns True, as one step
        (retried on a concurrent write). Returns (the record as stored after, whether written)."""
        while True:
            found = self._read(job_id)
            if found is None:
                raise _not_found(job_id)
            job, raw = found
            if not change(job):
                return job, False
            job.revision += 1
            if self._compare_and_set(raw, job):
                return job, True

    def _compare_and_set(self, old_raw: str, new: JobRecord) -> bool:
        """Write `new` if the stored record is still `old_raw`; False if it changed or is gone."""
        return self._put(keys=self._index_keys(new.id), args=[*self._index_args(new), old_raw]) == 1

    def delete(self, job_id: str) -> None:
        found = self._read(job_id)
        keys = [*self._index_keys(job_id), self._key("events", job_id), self._key("eventseq", job_id)]
        if found is not None and found[0].idempotency_key is not None:
            keys.append(self._key("idem", found[0].idempotency_key))
        bykey = self._bykey(found[0].key_id) if found is not None else ""
        # Runs for unknown ids too: it sweeps any leftovers and costs one call.
        self._delete(keys=keys, args=[job_id, bykey])

    def list(
        self, after: str | None, limit: int, order: Literal["asc", "desc"], key_id: str | None = None
    ) -> tuple[list[JobRecord], bool]:
        check_list_args(limit, order)
        if key_id is not None:
            self._ensure_history_indexed()
        index = self._key("jobs") if key_id is None else self._bykey(key_id)
        raws = self._list(keys=[index], args=[after or "", limit + 1, order, self.prefix])
        if raws is None:
            raise _not_found(after or "")
        page = [JobRecord.model_validate_json(raw) for raw in raws[:limit] if raw is not None]
        return page, len(raws) > limit

    def claim(self, job_id: str, owner: str, now: float, lease_s: float) -> JobRecord | None:
        while True:
            found = self._read(job_id)
            if found is None:
                return None
            job, raw = found
            if not claimable_by_anyone(job, now, lease_s):
                return None
            claimed = job.model_copy(
                update={"owner": owner, "heartbeat_at": now, "attempts": job.attempts + 1, "revision": job.revision + 1}
            )
            if self._compare_and_set(raw, claimed):
                return claimed
            # Someone wrote the job between our read and our write: decide again on what is there now.

    def heartbeat(self, job_id: str, owner: str, now: float) -> bool:
        while True:
            found = self._read(job_id)
            if found is None or found[0].owner != owner:
                return False
            job, raw = found
            if self._compare_and_set(raw, job.model_copy(update={"heartbeat_at": now, "revision": job.revision + 1})):
                return True

    def claimable(self, now: float, lease_s: float, limit: int) -> list[str]:
        # Ownership lives only in the records, so walk the non-terminal jobs
        # oldest first and test each; this is a hint for runners (claim() is
        # what decides), so reading page by page without a snapshot is fine.
        ids: list[str] = []
        start = 0
        active = self._key("active")
        while len(ids) < limit:
            batch = self._redis.zrange(active, start, start + _SCAN_BATCH - 1)
            if not batch:
                break
            raws = self._redis.mget([self._key("job", job_id) for job_id in batch])
            for raw in raws:
                if raw is None:
                    continue
                job = JobRecord.model_validate_json(raw)
                if claimable_by_anyone(job, now, lease_s):
                    ids.append(job.id)
                    if len(ids) == limit:
                        break
            start += _SCAN_BATCH
        return ids

    def active(self, limit: int) -> list[JobRecord]:
        ids = self._redis.zrange(self._key("active"), 0, limit - 1)
        if not ids:
            return []
        raws = self._redis.mget([self._key("job", job_id) for job_id in ids])
        # A job finished between the two reads is skipped: it is no work ahead.
        jobs = [JobRecord.model_validate_json(raw) for raw in raws if raw is not None]
        return [job for job in jobs if not job.terminal]

    def queue_position(self, job: JobRecord) -> int:
        # Ties in created_at break by id, as in list(). ZRANK would do if the
        # job were always in the queued set, but it is asked for running ones too.
        queued = self._key("queued")
        pipe = self._redis.pipeline(transaction=True)
        pipe.zcount(queued, "-inf", f"({job.created_at!r}")
        pipe.zrangebyscore(queued, job.created_at, job.created_at)
        earlier, ties = pipe.execute()
        return earlier + sum(1 for job_id in ties if job_id < job.id)

    def append_event(self, job_id: str, event: dict) -> int:
        keys = [self._key("job", job_id), self._key("eventseq", job_id), self._key("events", job_id)]
        # Events of a deleted job would never be deleted: the script refuses them.
        seq = self._append(keys=keys, args=[json.dumps(event)])
        if seq == -1:
            raise _not_found(job_id)
        return seq

    def events_after(self, job_id: str, seq: int, limit: int = 1000) -> list[tuple[int, dict]]:
        # Entry ids are "0-{seq}", so the range after seq is a plain XRANGE
        # (from "0-{seq+1}" rather than the exclusive "(0-{seq}" of Redis >= 6.2).
        first = max(seq, 0) + 1
        entries = self._redis.xrange(self._key("events", job_id), min=f"0-{first}", max="+", count=limit)
        return [(int(entry_id.split("-", 1)[1]), json.loads(fields["e"])) for entry_id, fields in entries]

    # --- history (jobs/expiry.py) -------------------------------------------------------

    def _ensure_history_indexed(self) -> None:
        """Put every record of a store written before the history zsets into them, once.
        Replicas that do it at the same time only repeat the same idempotent ZADDs."""
        if self._history_indexed:
            return
        schema = self._key("schema")
        if self._redis.get(schema) != SCHEMA_VERSION:
            start = 0
            while batch := self._redis.zrange(self._key("jobs"), start, start + _SCAN_BATCH - 1):
                self._reindex_batch(batch)
                start += _SCAN_BATCH
            self._redis.set(schema, SCHEMA_VERSION)
        self._history_indexed = True

    def _reindex_batch(self, job_ids: list[str]) -> None:
        raws = self._redis.mget([self._key("job", job_id) for job_id in job_ids])
        pipe = self._redis.pipeline(transaction=False)
        ended_key, files_key, trim_key = self._history_keys()
        for raw in raws:
            if raw is None:
                continue
            job = JobRecord.model_validate_json(raw)
            job_key = self._key("job", job.id)
            keys = [job_key, ended_key, files_key, trim_key, self._bykey(job.key_id) or job_key]
            args = [
                job.id,
                repr(job.created_at),
                score(ended_at(job)),
                score(own_files_expire_at(job)),
                "0" if job.key_id is None else "1",
            ]
            self._reindex(keys=keys, args=args, client=pipe)
        pipe.execute()

    def _due(self, index: str, until: float, limit: int) -> list[str]:
        self._ensure_history_indexed()
        return self._redis.zrangebyscore(self._key(index), "-inf", repr(until), start=0, num=limit)

    def ended_before(self, cutoff: float, limit: int) -> list[JobRecord]:
        ids = self._due("ended", cutoff, limit)
        if not ids:
            return []
        raws = self._redis.mget([self._key("job", job_id) for job_id in ids])
        gone = [job_id for job_id, raw in zip(ids, raws, strict=True) if raw is None]
        if gone:
            # Entries whose record is gone (only a reindex racing a delete leaves them):
            # dropped here, or they would stay at the head of the index for ever.
            pipe = self._redis.pipeline(transaction=False)
            for key in self._history_keys():
                pipe.zrem(key, *gone)
            pipe.execute()
        return [JobRecord.model_validate_json(raw) for raw in raws if raw is not None]

    def files_due(self, now: float, limit: int) -> list[str]:
        return self._due("filesdue", now, limit)

    def forget_files_due(self, job_ids: list[str]) -> None:
        if job_ids:
            self._redis.zrem(self._key("filesdue"), *job_ids)

    def logs_to_trim(self, cutoff: float, limit: int) -> list[str]:
        return self._due("trim", cutoff, limit)

    def trim_events(self, job_ids: list[str]) -> None:
        if not job_ids:
            return
        pipe = self._redis.pipeline(transaction=False)
        for job_id in job_ids:
            # MAXLEN 1: the terminal event is the last one written, and an exact trim
            # (not "~") so that nothing but it is left.
            pipe.xtrim(self._key("events", job_id), maxlen=1, approximate=False)
        pipe.zrem(self._key("trim"), *job_ids)
        pipe.execute()

    def close(self) -> None:
        self._redis.close()
