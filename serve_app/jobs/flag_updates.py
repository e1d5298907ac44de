"""The flag updates every job store offers, on top of its own atomic `_modify`.

A cancel, a delete, an attach and a hang-up each change one flag of the record
as stored, in one atomic step (SQLite: a write transaction; Redis: a
compare-and-set retried on conflict), never a whole record saved from a copy
(serve_app/jobs/model.py has the changes themselves and why).
"""

from __future__ import annotations

from collections.abc import Callable

from serve_app.errors import NotFound
from serve_app.jobs.model import JobRecord, joinable, mark_abandoned, mark_attached, mark_cancel, mark_delete


class FlagUpdates:
    """Mixed into SQLiteJobStore and RedisJobStore, which provide `_modify`."""

    def _modify(self, job_id: str, change: Callable[[JobRecord], bool]) -> tuple[JobRecord, bool]:
        """Run `change` on the stored record and write it if it returns True, as one step;
        (the record as stored after, whether it was written). NotFound if there is none."""
        raise NotImplementedError

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
