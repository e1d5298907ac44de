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
`heartbeat_at`, `idempotency_key` and the history columns are copied into
columns only so that queries can filter and order on them, and every write
rewrites them from the record so they cannot drift.

History columns (model.py's `ended_at`, `own_files_expire_at`): `key_id` (lists
per API key), `ended_at` (retention), `files_due` and `trim_due` (the expiry
sweep's work lists: the sweep sets them NULL once done). Each has an index, so
a sweep reads what is due, not every job. A file made before they existed gets
them on open (`_add_history_columns`).
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

# How long a statement waits for another process's write lock before it
# fails with "database is locked". Writes are single-row and quick, so a
# wait this long means something is wrong rather than merely busy.
BUSY_TIMEOUT_S = 10.0

# Reads go through a memory map of the file up to this size instead of copying each
# page into SQLite's own 2 MB cache: with a long history (100k finished jobs is
# ~150 MB) a random record or a sweep's index page is then a memory read, not a
# syscall, and what polls and sweeps read does not evict what lists read
# (bench/bench_history.py). Address space only; the pages are the OS's file cache.
MMAP_BYTES = 1 << 30

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS jobs (
        id TEXT PRIMARY KEY,
        created_at REAL NOT NULL,
        status TEXT NOT NULL,
        owner TEXT,
        heartbeat_at REAL,
        idempotency_key TEXT UNIQUE,
        record TEXT NOT NULL,
        key_id TEXT,
        ended_at REAL,
        files_due REAL,
        trim_due REAL
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

# After SCHEMA and `_add_history_columns`. Partial indexes: only the rows a sweep may
# want are in them (a query's `col <= ?` implies `col IS NOT NULL`, so SQLite uses them).
HISTORY_INDEXES = (
    "CREATE INDEX IF NOT EXISTS jobs_key ON jobs (key_id, created_at, id) WHERE key_id IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS jobs_ended ON jobs (ended_at) WHERE ended_at IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS jobs_files_due ON jobs (files_due) WHERE files_due IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS jobs_trim_due ON jobs (trim_due) WHERE trim_due IS NOT NULL",
)
HISTORY_COLUMNS = ("key_id TEXT", "ended_at REAL", "files_due REAL", "trim_due REAL")
# `PRAGMA user_version` once the history columns are filled from the records.
HISTORY_SCHEMA_VERSION = 2

_TERMINAL_SQL = ", ".join(f"'{status}'" for status in TERMINAL)

# The history columns of rows written before they existed, from the record in SQL:
# the same values as `_row` computes (ended_at, own_files_expire_at in model.py).
_BACKFILL_HISTORY = f"""UPDATE jobs SET
    key_id = json_extract(record, '$.key_id'),
    ended_at = CASE WHEN status IN ({_TERMINAL_SQL})
        THEN COALESCE(json_extract(record, '$.video.completed_at'), created_at) END,
    files_due = CASE WHEN status = 'completed' AND json_extract(record, '$.artifact_id') IS NULL
        THEN json_extract(record, '$.video.expires_at') END,
    trim_due = CASE WHEN status IN ({_TERMINAL_SQL})
        THEN COALESCE(json_extract(record, '$.video.completed_at'), created_at) END"""


def _not_found(job_id: str) -> NotFound:
    return NotFound(f"no video with id {job_id!r}", param="video_id")


def _row(job: JobRecord) -> tuple:
    ended = ended_at(job)
    return (
        job.created_at,
        job.status,
        job.owner,
        job.heartbeat_at,
        job.idempotency_key,
        job.model_dump_json(),
        job.key_id,
        ended,
        own_files_expire_at(job),
        ended,  # trim_due: the log is trimmed some time after the end (jobs/expiry.py)
    )


_COLUMNS = "created_at, status, owner, heartbeat_at, idempotency_key, record, key_id, ended_at, files_due, trim_due"


def open_sqlite(path: Path) -> sqlite3.Connection:
    """A connection to the store's file as every user of it opens one: write-ahead log (readers
    never wait for a writer), waits up to BUSY_TIMEOUT_S for another process's write lock, and
    isolation_level=None, so the sqlite3 module never opens transactions behind our back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    conn.execute("PRAGMA journal_mode = WAL")
    return conn


def _placeholders(n: int) -> str:
    return ", ".join("?" * n)


class SQLiteJobStore(FlagUpdates):
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        # We issue BEGIN IMMEDIATE / COMMIT ourselves (open_sqlite says why).
        self._conn = open_sqlite(self.path)
        with self._lock:
            # NORMAL under WAL: a power cut may lose the last commits, never
            # corrupt the file; FULL would fsync on every heartbeat.
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._conn.execute(f"PRAGMA mmap_size = {MMAP_BYTES}")
            with self._write() as conn:
                for statement in SCHEMA:
                    conn.execute(statement)
                self._add_history_columns(conn)
                for statement in HISTORY_INDEXES:
                    conn.execute(statement)

    @staticmethod
    def _add_history_columns(conn: sqlite3.Connection) -> None:
        """A jobs table from before retention gets its history columns, filled from the
        records, once: until `PRAGMA user_version` says it was done (inside the write
        transaction, so two processes do not both do it). Setting user_version back to 0
        fills them again, for rows a gateway of the previous version wrote meanwhile."""
        if conn.execute("PRAGMA user_version").fetchone()[0] >= HISTORY_SCHEMA_VERSION:
            return
        have = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
        for column in HISTORY_COLUMNS:
            if column.split()[0] not in have:
                conn.execute(f"ALTER TABLE jobs ADD COLUMN {column}")
        conn.execute(_BACKFILL_HISTORY)
        conn.execute(f"PRAGMA user_version = {HISTORY_SCHEMA_VERSION}")

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
        assignments = ", ".join(f"{column} = ?" for column in _COLUMNS.split(", "))
        cursor = conn.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*_row(job), job.id))
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
                row = _row(job)
                conn.execute(
                    f"INSERT INTO jobs (id, {_COLUMNS}) VALUES ({_placeholders(len(row) + 1)})", (job.id, *row)
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

    def delete(self, job_id: str) -> None:
        # The idempotency key lives in the job's row, so it goes with it.
        with self._lock, self._write() as conn:
            conn.execute("DELETE FROM events WHERE job_id = ?", (job_id,))
            conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def list(
        self, after: str | None, limit: int, order: Literal["asc", "desc"], key_id: str | None = None
    ) -> tuple[list[JobRecord], bool]:
        check_list_args(limit, order)
        cmp, direction = (">", "ASC") if order == "asc" else ("<", "DESC")
        # With a key: (key_id, created_at, id) is one index, so the page is read off it.
        conditions, args = (["key_id = ?"], [key_id]) if key_id is not None else ([], [])
        with self._lock, self._read() as conn:
            if after is not None:
                row = conn.execute(
                    "SELECT created_at, id FROM jobs WHERE " + " AND ".join(["id = ?", *conditions]),
                    (after, *args),
                ).fetchone()
                if row is None:
                    raise _not_found(after)
                conditions.append(f"(created_at, id) {cmp} (?, ?)")
                args.extend(row)
            where = "WHERE " + " AND ".join(conditions) if conditions else ""
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

    # --- history (jobs/expiry.py) -------------------------------------------------------

    def ended_before(self, cutoff: float, limit: int) -> list[JobRecord]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT record FROM jobs WHERE ended_at <= ? ORDER BY ended_at LIMIT ?", (cutoff, limit)
            ).fetchall()
        return [JobRecord.model_validate_json(r[0]) for r in rows]

    def files_due(self, now: float, limit: int) -> list[str]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT id FROM jobs WHERE files_due <= ? ORDER BY files_due LIMIT ?", (now, limit)
            ).fetchall()
        return [r[0] for r in rows]

    def forget_files_due(self, job_ids: list[str]) -> None:
        with self._lock, self._write() as conn:
            conn.executemany("UPDATE jobs SET files_due = NULL WHERE id = ?", [(job_id,) for job_id in job_ids])

    def logs_to_trim(self, cutoff: float, limit: int) -> list[str]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT id FROM jobs WHERE trim_due <= ? ORDER BY trim_due LIMIT ?", (cutoff, limit)
            ).fetchall()
        return [r[0] for r in rows]

    def trim_events(self, job_ids: list[str]) -> None:
        with self._lock, self._write() as conn:
            for job_id in job_ids:
                conn.execute(
                    "DELETE FROM events WHERE job_id = ? AND seq < (SELECT MAX(seq) FROM events WHERE job_id = ?)",
                    (job_id, job_id),
                )
                conn.execute("UPDATE jobs SET trim_due = NULL WHERE id = ?", (job_id,))

    def close(self) -> None:
        with self._lock:
            self._conn.close()
