"""A job: the public video object plus what the service needs to run it again.

The store keeps whole `JobRecord`s. Anything a client sees lives in `video`
(the OpenAI-style object); the rest is bookkeeping for runners: who holds the
job (`owner`) and since when it last proved alive (`heartbeat_at`), so that a
job whose runner died is picked up by another.

Several writers share each record: the runner holding the job, any gateway
replica a client cancels or deletes on, a replica taking over after a stale
lease. So no write replaces a record from a stale copy: a client's cancel or
delete sets its flag in one atomic store step (`request_cancel`,
`request_delete`); a runner writes with `compare_and_save`, which refuses a
record written since it was read (`revision` tells), then reads and decides
again (serve_app/jobs/writes.py); and no store lets a non-terminal write
replace a terminal record (`refuse_reopening`).

The settings a job runs are held once, in its video object (the answer shows
what ran, so they are public anyway): `JobRecord.params` reads them from there
as the `GenerationParams` the stages take, and assigning it writes them back
(`video_settings` is the one mapping between the two; `params` is not a field,
so `model_copy(update={"params": ...})` would not reach it: assign it). Records
of the earlier layout also stored a `params` copy; it is ignored when they
load, as it always equalled the video's settings.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from serve_app.api.protocol import VideoObject
from serve_app.errors import Conflict
from serve_app.params import GenerationParams
from serve_app.policy.tiers import changes

WebhookState = Literal["none", "pending", "delivered", "failed"]
TERMINAL = ("completed", "failed")


def video_settings(params: GenerationParams) -> dict[str, Any]:
    """The fields of a video object that say which settings it was (or will be) made with."""
    return dict(
        size=params.size,
        seconds=f"{params.seconds:.2f}",
        preset=params.preset,
        prompt=params.prompt,
        negative_prompt=params.negative_prompt,
        width=params.width,
        height=params.height,
        num_frames=params.num_frames,
        fps=params.fps,
        num_inference_steps=params.num_inference_steps,
        guidance_scale=params.guidance_scale,
        seed=params.seed,
        fast=params.fast,
        input_reference_sha256=params.input_reference_sha256,
    )


class JobRecord(BaseModel):
    # Unknown keys are ignored: records of the earlier layout carry `params` too.
    # cache_strings="none": pydantic-core keeps a process-wide cache of the short strings
    # it parses (16k entries), so that repeated values are not allocated again. A record's
    # values are its job's own (its id, its key's id, its prompt), rarely repeated across a
    # store's many jobs: looking each up and evicting others cost more than allocating
    # them, and a read of an old job cost more than one of a recent job whose strings were
    # still cached (bench/bench_history.py's cold `get`; docs/performance.md).
    model_config = ConfigDict(extra="ignore", cache_strings="none")

    video: VideoObject = Field(description="The public object; its settings fields are what the job runs.")
    deadline_s: float = Field(description="Seconds a run of this job may take (a new deadline per attempt).")
    created_at: float = Field(description="Epoch seconds, with sub-second precision (orders the queue).")
    owner: str | None = Field(None, description="Runner (gateway replica) holding the job, or None.")
    heartbeat_at: float | None = Field(None, description="Last time the owner proved alive (epoch s).")
    attempts: int = Field(0, description="How many runs have started.")
    cancel_requested: bool = False
    delete_requested: bool = False
    idempotency_key: str | None = None
    webhook_url: str | None = None
    webhook_state: WebhookState = "none"
    webhook_attempts: int = 0
    artifact_id: str | None = Field(None, description="Files live under this id (a cache entry's), not the job's.")
    cache_key: str | None = Field(None, description="Fill this cache entry on completion.")
    oom_retries: int = Field(
        0, description="Runs started again at a lower tier after the denoiser ran out of GPU memory."
    )
    key_id: str | None = Field(
        None, description="API key that created the job: its concurrent-job slot is freed when the job ends."
    )
    error_body: dict | None = Field(None, description="The failing ServiceError's JSON, for synchronous answers.")
    error_status: int | None = Field(None, description="Its HTTP status.")
    revision: int = Field(
        0, description="Bumped by the store on every write: compare_and_save refuses a copy read before another write."
    )
    attached: bool = Field(
        False, description="Another request was answered with this job (single flight): not only its creator knows it."
    )

    @classmethod
    def new(
        cls, job_id: str, model: str, params: GenerationParams, created_at: float, deadline_s: float, **bookkeeping
    ) -> JobRecord:
        """A queued job that runs `params`; `bookkeeping`: the other fields (owner key, webhook, ...)."""
        video = VideoObject(
            id=job_id, status="queued", model=model, created_at=int(created_at), **video_settings(params)
        )
        return cls(video=video, deadline_s=deadline_s, created_at=created_at, **bookkeeping)

    @property
    def params(self) -> GenerationParams:
        """The settings the job runs, read from its video object (a new object per read)."""
        return GenerationParams.model_validate(self.video, from_attributes=True)

    @params.setter
    def params(self, params: GenerationParams) -> None:
        settings = video_settings(params)
        if (params.num_frames, params.fps) == (self.video.num_frames, self.video.fps):
            # Same length: `seconds` stays as the client sent it (OpenAI echoes it), not our
            # derived spelling of it; a tier that shortens the video says what it made.
            del settings["seconds"]
        for field, value in settings.items():
            setattr(self.video, field, value)

    def run_at_tier(self, tier: str, params: GenerationParams) -> None:
        """Run `params`, the settings of quality tier `tier`, instead of the current ones. The
        video object then describes what it gets: those settings, the tier, and the values
        asked for of what the tier lowered (on a second lowering the first request's win)."""
        lowered = {field: values["requested"] for field, values in changes(self.params, params).items()}
        requested = {**lowered, **(self.video.requested or {})}
        if requested:
            self.video.requested = requested
        self.video.tier = tier
        self.params = params

    @property
    def id(self) -> str:
        return self.video.id

    @property
    def status(self) -> str:
        return self.video.status

    @property
    def terminal(self) -> bool:
        return self.video.status in TERMINAL


def lease_expired(heartbeat_at: float | None, now: float, lease_s: float) -> bool:
    """One definition of "stale" for claim and claimable in every store (SQLite's
    SQL computes the same `now - heartbeat_at > lease_s` in doubles)."""
    return heartbeat_at is None or now - heartbeat_at > lease_s


def claimable_by_anyone(job: JobRecord, now: float, lease_s: float) -> bool:
    return not job.terminal and (job.owner is None or lease_expired(job.heartbeat_at, now, lease_s))


class RecordFinished(Conflict):
    """A write would turn a terminal record back into a running one (a stale copy: the job
    would run again, or a client would see its finished video go back to in_progress)."""


def refuse_reopening(job: JobRecord, stored_status: str) -> None:
    """Every store's writes call this with the stored record's status."""
    if stored_status in TERMINAL and not job.terminal:
        raise RecordFinished(
            f"video {job.id!r} is already {stored_status}; a write of status {job.status!r} was refused",
            param="video_id",
        )


# The atomic flag updates. Each store runs one of these on the record as stored, inside
# one atomic step, and writes the record only when it returns True (see JobStore below).


def mark_cancel(job: JobRecord) -> bool:
    if job.terminal or job.cancel_requested:
        return False
    job.cancel_requested = True
    return True


def mark_delete(job: JobRecord) -> bool:
    if job.terminal or job.delete_requested:
        return False
    job.cancel_requested = job.delete_requested = True
    return True


def joinable(job: JobRecord) -> bool:
    """Whether another request may be answered with this job: it is on its way to a video."""
    return not (job.terminal or job.cancel_requested or job.delete_requested)


def mark_attached(job: JobRecord) -> bool:
    if not joinable(job) or job.attached:
        return False
    job.attached = True
    return True


def mark_abandoned(job: JobRecord) -> bool:
    """Cancel a job whose creator hung up, unless someone else may still want it: a retry
    with its idempotency key would find it, or other requests were answered with it."""
    if job.idempotency_key is not None or job.attached:
        return False
    return mark_cancel(job)


def ended_at(job: JobRecord) -> float | None:
    """When a terminal job ended (epoch s; what its retention counts from), None while it runs.
    `completed_at` is set on every path that ends a job; `created_at` stands in for one without."""
    if not job.terminal:
        return None
    return float(job.video.completed_at) if job.video.completed_at is not None else job.created_at


def own_files_expire_at(job: JobRecord) -> float | None:
    """When the files of a completed job that owns them (not the cache's) expire; else None.
    Both stores index this, so the expiry sweep finds due files without reading every job."""
    if job.video.status != "completed" or job.artifact_id is not None or job.video.expires_at is None:
        return None
    return float(job.video.expires_at)


def check_list_args(limit: int, order: str) -> None:
    """What both stores refuse in `list` (the API checks the range for clients first)."""
    if order not in ("asc", "desc"):
        raise ValueError(f"order={order!r} is not one of ['asc', 'desc']")
    if limit < 0:
        # Redis's ZRANGE 0 -1 is "everything": a negative count must not get there.
        raise ValueError(f"limit={limit} is negative")


class JobStore(Protocol):
    """Durable job records and per-job event logs. Implementations: SQLite, Redis.

    Every method is synchronous and thread-safe, and may block: for seconds while another
    process holds SQLite's write lock, or a Redis does not answer. Code on an event loop
    never calls them directly: it awaits them on the store's own thread (store_thread.py).

    Every write stores the record with `revision` one above the stored one (and sets
    it on the caller's `job` too), and refuses (RecordFinished) to replace a terminal
    record with a non-terminal one.
    """

    def create(self, job: JobRecord) -> tuple[JobRecord, bool]:
        """Insert `job`. If `job.idempotency_key` is set and a job with that key
        exists, return (that job, False) and insert nothing; else (job, True)."""

    def get(self, job_id: str) -> JobRecord:
        """The job, or raise serve_app.errors.NotFound."""

    def save(self, job: JobRecord) -> None:
        """Overwrite the stored job (last writer wins), unless that would make a terminal
        record non-terminal. Only for writers no other writer races (tests, a terminal
        record's webhook state): runners use `compare_and_save`, clients' routes the flags."""

    def delete(self, job_id: str) -> None:
        """Remove the job, its idempotency key and its events; unknown ids are ignored."""

    def compare_and_save(self, job: JobRecord) -> bool:
        """Write `job` only if the stored record's revision is still `job.revision`: nothing
        wrote it since `job` was read. False if something did (read again, decide again);
        NotFound if it is gone; RecordFinished as in `save`."""

    def request_cancel(self, job_id: str) -> JobRecord:
        """Set `cancel_requested` on a non-terminal job, in one atomic step that changes
        nothing else. Returns the record as stored after; NotFound if there is none."""

    def request_delete(self, job_id: str) -> JobRecord:
        """Set `cancel_requested` and `delete_requested` on a non-terminal job (its runner
        deletes it when its loop stops), atomically as `request_cancel`. A terminal record
        is returned unchanged: the caller deletes it."""

    def attach(self, job_id: str) -> JobRecord | None:
        """Mark the job `attached` (another request answered with it) if it is `joinable`,
        atomically; the record, or None if it is not joinable or gone."""

    def cancel_abandoned(self, job_id: str) -> bool:
        """Set `cancel_requested` if nobody but its hung-up creator knows the job (no
        idempotency key, not attached) and it is not terminal; True if this call set it.
        Atomic with `attach`: a job is either joined or cancelled, never both."""

    def list(
        self, after: str | None, limit: int, order: Literal["asc", "desc"], key_id: str | None = None
    ) -> tuple[list[JobRecord], bool]:
        """Jobs ordered by (created_at, id); `after` is an id from the previous
        page (NotFound if unknown). Returns (page, has_more). With `key_id`, only
        that API key's jobs (an index per key, so every page is a full page of
        them, and `after` must be one of them); None lists every job."""

    def claim(self, job_id: str, owner: str, now: float, lease_s: float) -> JobRecord | None:
        """Atomically make `owner` the job's runner if it is not terminal and
        either has no owner or its heartbeat is older than `lease_s`; sets
        owner, heartbeat_at=now, attempts+1. None if someone else holds it."""

    def heartbeat(self, job_id: str, owner: str, now: float) -> bool:
        """Refresh the lease; False if `owner` no longer holds the job."""

    def claimable(self, now: float, lease_s: float, limit: int) -> list[str]:
        """Ids of non-terminal jobs with no owner or a stale heartbeat, oldest first."""

    def active(self, limit: int) -> list[JobRecord]:
        """Non-terminal jobs (queued or running, any owner), oldest first: the work ahead."""

    def queue_position(self, job: JobRecord) -> int:
        """How many non-terminal jobs with status 'queued' were created before it."""

    def append_event(self, job_id: str, event: dict) -> int:
        """Append to the job's event log; returns its sequence number (1, 2, ...)."""

    def events_after(self, job_id: str, seq: int, limit: int = 1000) -> list[tuple[int, dict]]:
        """Events with sequence number > seq, in order."""

    # --- history: retention, expired files, event-log trimming (jobs/expiry.py) ----------
    # Each reads an index ordered by time, so a sweep costs what is due, not every job.

    def ended_before(self, cutoff: float, limit: int) -> list[JobRecord]:
        """Terminal jobs whose `ended_at` <= cutoff, oldest end first (retention is over)."""

    def files_due(self, now: float, limit: int) -> list[str]:
        """Ids of jobs whose own files expired (`own_files_expire_at` <= now) and that
        `forget_files_due` has not yet taken off the index, earliest first."""

    def forget_files_due(self, job_ids: list[str]) -> None:
        """Take the jobs off the expired-files index: their files are gone. A later write of
        the record puts it back (one more delete of absent files, never a loop)."""

    def logs_to_trim(self, cutoff: float, limit: int) -> list[str]:
        """Ids of terminal jobs that ended at or before `cutoff` whose event logs
        `trim_events` has not yet trimmed, oldest end first."""

    def trim_events(self, job_ids: list[str]) -> None:
        """Keep only the last event (the terminal one) of each job's log, and take the jobs
        off the trim index. Sequence numbers go on from where they were."""

    def close(self) -> None: ...
