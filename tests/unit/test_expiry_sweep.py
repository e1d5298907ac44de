"""The expiry sweeper alone, over both job stores: which files it frees, which event logs it
trims and which records it deletes, how often, and that it reads what is due, not every job."""

from __future__ import annotations

import pytest

from serve_app.api.protocol import VideoTimings
from serve_app.artifacts import LocalArtifactStore
from serve_app.config import ServiceArgs
from serve_app.errors import NotFound
from serve_app.jobs import expiry
from serve_app.jobs.expiry import DEFAULT_EVENTS_KEEP_S, DEFAULT_RETENTION_S, ExpirySweeper, Swept
from tests.helpers.job_stores import store_of_kind
from tests.helpers.jobs import job_id, make_job, with_status

DAY = 86400.0


def _completed(n: int, expires_at: int, completed_at: int = 0, **changes):
    timings = VideoTimings(prompt_encode_s=0.1, denoise_s=0.5, decode_s=0.01, encode_s=0.02, total_s=0.6)
    return with_status(
        make_job(n, created_at=float(n), **changes),
        "completed",
        progress=100,
        timings=timings,
        expires_at=expires_at,
        completed_at=completed_at,
    )


class CountingArtifacts(LocalArtifactStore):
    """Local files that count the calls a sweep makes (each is a request with S3)."""

    def __init__(self, root) -> None:
        super().__init__(root)
        self.calls: list[tuple[str, str]] = []

    def exists(self, video_id, variant):
        self.calls.append(("exists", video_id))
        return super().exists(video_id, variant)

    def delete(self, video_id):
        self.calls.append(("delete", video_id))
        super().delete(video_id)


class ReadCounter:
    """A store that counts the records and ids its readers get back."""

    def __init__(self, store) -> None:
        self.store = store
        self.read = 0

    def __getattr__(self, name):
        method = getattr(self.store, name)

        def call(*args, **kwargs):
            result = method(*args, **kwargs)
            if name == "list":
                self.read += len(result[0])
            elif isinstance(result, list):
                self.read += len(result)
            return result

        return call


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    yield from store_of_kind(request, tmp_path)


@pytest.fixture
def artifacts(tmp_path):
    return CountingArtifacts(tmp_path / "videos")


def test_defaults_match_the_config():
    args = ServiceArgs()
    assert (args.job_retention_s, args.job_events_keep_s) == (DEFAULT_RETENTION_S, DEFAULT_EVENTS_KEEP_S)
    assert DEFAULT_RETENTION_S == 7 * DAY


def test_the_sweeper_sweeps_once_per_interval(store, artifacts):
    now = [1000.0]
    sweeper = ExpirySweeper(store, artifacts, clock=lambda: now[0], interval_s=300)
    first, second = _completed(1, expires_at=900), _completed(2, expires_at=1200)
    for job in (first, second):
        store.create(job)
        artifacts.put(job.id, "video", b"mp4")

    assert sweeper.sweep_if_due().files == 1
    assert not artifacts.exists(first.id, "video") and artifacts.exists(second.id, "video")
    now[0] += 299  # second is due now, but the sweep is not
    assert sweeper.sweep_if_due() is None and artifacts.exists(second.id, "video")
    now[0] += 1
    assert sweeper.sweep_if_due().files == 1 and not artifacts.exists(second.id, "video")
    assert store.get(first.id).video.status == "completed"  # the objects stay; content answers 410


def test_expired_files_are_deleted_once_not_asked_about_on_every_sweep(store, artifacts):
    # Main's sweep asked the artifact store about every expired video on every sweep (two
    # HEADs each with S3), for as long as the record lived.
    now = [1000.0]
    sweeper = ExpirySweeper(store, artifacts, clock=lambda: now[0], interval_s=60)
    for n in range(1, 4):
        store.create(_completed(n, expires_at=900))
        artifacts.put(job_id(n), "video", b"mp4")
    assert sweeper.sweep_if_due().files == 3
    assert sorted(artifacts.calls) == [("delete", job_id(n)) for n in range(1, 4)]  # no look first

    artifacts.calls.clear()
    for _ in range(3):
        now[0] += 60
        assert sweeper.sweep_if_due() == Swept()
    assert artifacts.calls == []


def test_the_sweeper_leaves_files_the_cache_owns(store, artifacts):
    cached = _completed(1, expires_at=10, artifact_id="cache_entry")
    store.create(cached)
    artifacts.put(cached.id, "video", b"mp4")
    assert ExpirySweeper(store, artifacts, clock=lambda: 1000.0).sweep().files == 0
    assert artifacts.calls == [] and artifacts.exists(cached.id, "video")


def test_records_go_at_the_end_of_their_retention_with_key_events_and_files(store, artifacts):
    ended_at = 1_000_000
    done = _completed(1, expires_at=ended_at + 30 * int(DAY), completed_at=ended_at, idempotency_key="k")
    store.create(done)
    store.append_event(done.id, {"type": "completed"})
    artifacts.put(done.id, "video", b"mp4")  # files kept longer than the record: they go with it
    failed = with_status(make_job(2, created_at=2.0), "failed", completed_at=ended_at)
    store.create(failed)
    running = make_job(3, created_at=3.0, status="in_progress")  # older than any retention, still running
    store.create(running)
    now = [ended_at + DAY - 1]
    sweeper = ExpirySweeper(store, artifacts, clock=lambda: now[0], retention_s=DAY)

    assert sweeper.sweep().records == 0
    assert store.get(done.id) and store.get(failed.id)

    now[0] += 1
    assert sweeper.sweep().records == 2
    for gone in (done.id, failed.id):
        with pytest.raises(NotFound):
            store.get(gone)
        assert store.events_after(gone, 0) == []
    assert not artifacts.exists(done.id, "video")
    assert store.get(running.id).status == "in_progress"
    # The idempotency key went with its record: the same key makes a new job.
    again = make_job(4, created_at=4.0, idempotency_key="k")
    assert store.create(again) == (again, True)
    assert sweeper.sweep() == Swept()


def test_a_cached_answer_past_retention_leaves_the_cache_files(store, artifacts):
    store.create(_completed(1, expires_at=10, completed_at=10, artifact_id="cache_entry"))
    assert ExpirySweeper(store, artifacts, clock=lambda: 10 + DAY, retention_s=DAY).sweep().records == 1
    assert artifacts.calls == []


def test_event_logs_are_trimmed_to_the_terminal_event_after_events_keep_s(store, artifacts):
    job = make_job(1)
    store.create(job)
    store.append_event(job.id, {"type": "queued"})
    for step in (1, 2, 3):
        store.append_event(job.id, {"type": "progress", "step": step, "preview": "data:image/jpeg;base64," + "A" * 9})
    store.save(with_status(job, "completed", completed_at=5000, expires_at=9000))
    store.append_event(job.id, {"type": "completed"})
    now = [5000.0 + 599]
    sweeper = ExpirySweeper(store, artifacts, clock=lambda: now[0], events_keep_s=600)

    assert sweeper.sweep().logs == 0
    assert len(store.events_after(job.id, 0)) == 5  # a stream reconnecting soon after the end replays it all
    now[0] += 1
    assert sweeper.sweep().logs == 1
    assert store.events_after(job.id, 0) == [(5, {"type": "completed"})]
    assert store.get(job.id).status == "completed"  # the record stays until its retention ends
    assert sweeper.sweep().logs == 0


def test_a_sweep_reads_what_is_due_not_every_job(store, artifacts):
    # 300 finished jobs, none due; 2 with files due, 1 ended long ago. Main's sweep paged
    # through all 303 records on every sweep.
    now = 10 * DAY
    for n in range(300):
        store.create(_completed(n, expires_at=int(now + 3600), completed_at=int(now - 60)))
    store.create(_completed(1000, expires_at=int(now - 1), completed_at=int(now - 3600)))
    store.create(_completed(1001, expires_at=int(now - 1), completed_at=int(now - 3600)))
    store.create(_completed(1002, expires_at=int(now - 2 * DAY), completed_at=int(now - 8 * DAY)))
    counted = ReadCounter(store)
    sweeper = ExpirySweeper(counted, artifacts, clock=lambda: now, events_keep_s=DAY, retention_s=7 * DAY)

    assert sweeper.sweep() == Swept(files=3, logs=1, records=1)
    assert counted.read <= 3 + 1 + 1


def test_a_backlog_is_worked_off_over_several_ticks(store, artifacts, monkeypatch):
    monkeypatch.setattr(expiry, "SWEEP_BATCH", 2)
    monkeypatch.setattr(expiry, "MAX_BATCHES", 2)
    for n in range(7):
        store.create(_completed(n, expires_at=10, completed_at=10))
    sweeper = ExpirySweeper(store, artifacts, clock=lambda: 1000.0, interval_s=3600, events_keep_s=DAY)

    assert sweeper.sweep_if_due() == Swept(files=4, backlog=True)
    # Due again at once (the next dispatcher tick), though the interval has not passed.
    assert sweeper.sweep_if_due() == Swept(files=3)
    assert sweeper.sweep_if_due() is None
    assert store.files_due(1000.0, 100) == []
