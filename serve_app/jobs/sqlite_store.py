"""The job store in one SQLite file: the default for a single gateway node.

Several gateway replicas (threads of one process, or processes on one host)
share the file. WAL lets readers run beside the one writer; every write that
decides something on what it read (create with an idempotency key, claim,
heartbeat, append_event) runs in a `BEGIN IMMEDIATE` transaction, which takes
the file's write lock before the read, so two processes cannot both see a job
as free and both claim it. Inside one process the connection is shared and
guarded by a lock, since a sqlite3 connection must not run two statements at
once.

Flag updates (request_cancel, request_delete, attach, cancel_abandoned) and
compare_and_save read and write in one `BEGIN IMMEDIATE` transaction too: the
write lock held from the read on makes each one step for every process, which
is all one UPDATE would give (and keeps pydantic the only JSON encoder).

The whole `JobRecord` is stored as JSON; `created_at`, `status`, `owner`,
`heartbeat_at` and `idempotency_key` are copied into columns only so that
queries can filter and order on them, and every write rewrites them from the
record so they cannot drift.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from serve_app.errors import NotFound
from serve_app.jobs.model import (
    TERMINAL,
    JobRecord,
    check_list_args,
    claimable_by_anyone,
    joinable,
    mark_abandoned,
    mark_attached,
    mark_cancel,
    mark_delete,
    refuse_reopening,
)

# How long a statement waits for another process's write lock before it
# fails with "database is locked". Writes are single-row and quick, so a
# wait this long means something is wrong rather than merely busy.
BUSY_TIMEOUT_S = 10.0

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS jobs (
        id TEXT PRIMARY KEY,
        created_at REAL NOT NULL,
        status TEXT NOT NULL,
        owner TEXT,
        heartbeat_at REAL,
        idempotency_key TEXT UNIQUE,
        record TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at, id)",
    # (status, created_at, id) rather than (status): claimable and
    # queue_position filter on status and then walk or count in queue order.
    "CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, created_at, id)",
    """CREATE TABLE IF NOT EXISTS events (
        job_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        payload TEXT NOT NULL,
        PRIMARY KEY (job_id, seq)
    )""",
)

_TERMINAL_SQL = ", ".join(f"'{status}'" for status in TERMINAL)


def _not_found(job_id: str) -> NotFound:
    return NotFound(f"no video with id {job_id!r}", param="video_id")


def _row(job: JobRecord) -> tuple:
    return (job.created_at, job.status, job.owner, job.heartbeat_at, job.idempotency_key, job.model_dump_json())


class SQLiteJobStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # isolation_level=None: the sqlite3 module must not open transactions
        # behind our back; we issue BEGIN IMMEDIATE / COMMIT ourselves.
        self._conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        with self._lock:
            self._conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            self._conn.execute("PRAGMA journal_mode = WAL")
            # NORMAL under WAL: a power cut may lose the last commits, never
            # corrupt the file; FULL would fsync on every heartbeat.
            self._conn.execute("PRAGMA synchronous = NORMAL")
            with self._write() as conn:
                for statement in SCHEMA:
                    conn.execute(statement)

    # Callers hold self._lock.
    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        # A deferred transaction: several SELECTs see one snapshot.
        self._conn.execute("BEGIN")
        try:
            yield self._conn
        finally:
            self._conn.execute("COMMIT")

    def _load(self, conn: sqlite3.Connection, job_id: str) -> JobRecord | None:
        row = conn.execute("SELECT record FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else JobRecord.model_validate_json(row[0])

    def _update(self, conn: sqlite3.Connection, job: JobRecord) -> int:
        cursor = conn.execute(
            "UPDATE jobs SET created_at = ?, status = ?, owner = ?, heartbeat_at = ?, idempotency_key = ?,"
            " record = ? WHERE id = ?",
            (*_row(job), job.id),
        )
        return cursor.rowcount

    def _stored(self, conn: sqlite3.Connection, job_id: str) -> tuple[int, str]:
        """(revision, status) of the stored record; NotFound if there is none."""
        row = conn.execute(
            "SELECT COALESCE(json_extract(record, '$.revision'), 0), status FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        if row is None:
            raise _not_found(job_id)
        return row[0], row[1]

    def _write_next_revision(self, conn: sqlite3.Connection, job: JobRecord, stored: tuple[int, str]) -> int:
        revision, status = stored
        refuse_reopening(job, status)
        self._update(conn, job.model_copy(update={"revision": revision + 1}))
        return revision + 1

    def _modify(self, job_id: str, change: Callable[[JobRecord], bool]) -> tuple[JobRecord, bool]:
        """Run `change` on the stored record and write it if it returns True, as one step.
        Returns (the record as stored after, whether it was written)."""
        with self._lock, self._write() as conn:
            job = self._load(conn, job_id)
            if job is None:
                raise _not_found(job_id)
            if not change(job):
                return job, False
            job.revision += 1
            self._update(conn, job)
        return job, True

    def create(self, job: JobRecord) -> tuple[JobRecord, bool]:
        with self._lock, self._write() as conn:
            if job.idempotency_key is not None:
                row = conn.execute(
                    "SELECT record FROM jobs WHERE idempotency_key = ?", (job.idempotency_key,)
                ).fetchone()
                if row is not None:
                    return JobRecord.model_validate_json(row[0]), False
            try:
                conn.execute(
                    "INSERT INTO jobs (id, created_at, status, owner, heartbeat_at, idempotency_key, record)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (job.id, *_row(job)),
                )
            except sqlite3.IntegrityError as exc:
                # Ids are random; a clash is a bug in the caller, not a request to merge.
                raise ValueError(f"job {job.id!r} already exists") from exc
        return job, True

    def get(self, job_id: str) -> JobRecord:
        with self._lock:
            job = self._load(self._conn, job_id)
        if job is None:
            raise _not_found(job_id)
        return job

    def save(self, job: JobRecord) -> None:
        # An UPDATE, not an upsert: a runner finishing a job that was deleted
        # meanwhile must not bring it back.
        with self._lock, self._write() as conn:
            revision = self._write_next_revision(conn, job, self._stored(conn, job.id))
        job.revision = revision

    def compare_and_save(self, job: JobRecord) -> bool:
        with self._lock, self._write() as conn:
            stored = self._stored(conn, job.id)
            if stored[0] != job.revision:
                return False
            revision = self._write_next_revision(conn, job, stored)
        job.revision = revision
        return True

    def request_cancel(self, job_id: str) -> JobRecord:
        return self._modify(job_id, mark_cancel)[0]

    def request_delete(self, job_id: str) -> JobRecord:
        return self._modify(job_id, mark_delete)[0]

    def attach(self, job_id: str) -> JobRecord | None:
        try:
            job, _ = self._modify(job_id, mark_attached)
        except NotFound:
            return None
        return job if joinable(job) else None

    def cancel_abandoned(self, job_id: str) -> bool:
        try:
            return self._modify(job_id, mark_abandoned)[1]
        except NotFound:
            return False

    def delete(self, job_id: str) -> None:
        # The idempotency key lives in the job's row, so it goes with it.
        with self._lock, self._write() as conn:
            conn.execute("DELETE FROM events WHERE job_id = ?", (job_id,))
            conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def list(self, after: str | None, limit: int, order: Literal["asc", "desc"]) -> tuple[list[JobRecord], bool]:
        check_list_args(limit, order)
        cmp, direction = (">", "ASC") if order == "asc" else ("<", "DESC")
        with self._lock, self._read() as conn:
            if after is None:
                where, args = "", ()
            else:
                row = conn.execute("SELECT created_at, id FROM jobs WHERE id = ?", (after,)).fetchone()
                if row is None:
                    raise _not_found(after)
                where, args = f"WHERE (created_at, id) {cmp} (?, ?)", tuple(row)
            rows = conn.execute(
                f"SELECT record FROM jobs {where} ORDER BY created_at {direction}, id {direction} LIMIT ?",
                (*args, limit + 1),
            ).fetchall()
        page = [JobRecord.model_validate_json(r[0]) for r in rows[:limit]]
        return page, len(rows) > limit

    def claim(self, job_id: str, owner: str, now: float, lease_s: float) -> JobRecord | None:
        with self._lock, self._write() as conn:
            job = self._load(conn, job_id)
            if job is None or not claimable_by_anyone(job, now, lease_s):
                return None
            job = job.model_copy(
                update={"owner": owner, "heartbeat_at": now, "attempts": job.attempts + 1, "revision": job.revision + 1}
            )
            self._update(conn, job)
        return job

    def heartbeat(self, job_id: str, owner: str, now: float) -> bool:
        with self._lock, self._write() as conn:
            job = self._load(conn, job_id)
            if job is None or job.owner != owner:
                return False
            self._update(conn, job.model_copy(update={"heartbeat_at": now, "revision": job.revision + 1}))
        return True

    def claimable(self, now: float, lease_s: float, limit: int) -> list[str]:
        with self._lock:
            rows = self._conn.execute(
                f"SELECT id FROM jobs WHERE status NOT IN ({_TERMINAL_SQL})"
                " AND (owner IS NULL OR heartbeat_at IS NULL OR ? - heartbeat_at > ?)"
                " ORDER BY created_at, id LIMIT ?",
                (now, lease_s, limit),
            ).fetchall()
        return [r[0] for r in rows]

    def active(self, limit: int) -> list[JobRecord]:
        with self._lock:
            rows = self._conn.execute(
                f"SELECT record FROM jobs WHERE status NOT IN ({_TERMINAL_SQL}) ORDER BY created_at, id LIMIT ?",
                (limit,),
            ).fetchall()
        return [JobRecord.model_validate_json(r[0]) for r in rows]

    def queue_position(self, job: JobRecord) -> int:
        # Ties in created_at break by id, as in list(), so positions are a
        # strict order even for jobs created in the same clock tick.
        with self._lock:
            (count,) = self._conn.execute(
                "SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND (created_at, id) < (?, ?)",
                (job.created_at, job.id),
            ).fetchone()
        return count

    def append_event(self, job_id: str, event: dict) -> int:
        payload = json.dumps(event)
        with self._lock, self._write() as conn:
            # Events of a deleted job would never be deleted: refuse them.
            if conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
                raise _not_found(job_id)
            (seq,) = conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE job_id = ?", (job_id,)).fetchone()
            conn.execute("INSERT INTO events (job_id, seq, payload) VALUES (?, ?, ?)", (job_id, seq, payload))
        return seq

    def events_after(self, job_id: str, seq: int, limit: int = 1000) -> list[tuple[int, dict]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, payload FROM events WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (job_id, seq, limit),
            ).fetchall()
        return [(s, json.loads(p)) for s, p in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
