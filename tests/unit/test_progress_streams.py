"""SSE progress streams through the gateway (build_gateway, no Ray): one store poller per job
for all its streams, per-key and per-replica caps, a maximum lifetime ending in `reconnect`,
and keep-alive comments. Streams are read as they come (tests/helpers/asgi_stream.py).

Jobs here are queued and held by a live runner elsewhere (tests/helpers/streams.py), so
nothing runs them: the test writes each event, as the runner would.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from serve_app.api.streams import ProgressStreams, Reconnect
from tests.helpers.asgi_stream import SseCall
from tests.helpers.streams import ALICE, BOB, bearer, queued_job, stream_gateway, two_keys, write_event


@pytest.fixture
def make_gateway(tmp_path):
    made = []

    def make(access=None, **streams):
        made.append(stream_gateway(tmp_path, access, **streams))
        return made[-1]

    yield make
    for gateway in made:
        gateway.stores.jobs.close()


def test_n_streams_of_one_job_share_one_store_poller(make_gateway, monkeypatch):
    gateway = make_gateway()
    video_id = queued_job(gateway)
    store = gateway.stores.jobs
    reads: list[str] = []
    real_events_after = store.events_after

    def counted(job_id, seq, limit=1000):
        reads.append(job_id)
        return real_events_after(job_id, seq, limit)

    monkeypatch.setattr(store, "events_after", counted)
    streams = 10

    async def scenario():
        calls = []
        for _ in range(streams):  # one at a time: each new stream costs one read, for its backlog
            call = SseCall(gateway.app, f"/v1/videos/{video_id}/events")
            await call.__aenter__()
            calls.append(call)
            assert (await call.next_event()).event == "queued"
        assert len(reads) == streams
        assert gateway.streams.feeds.watching() == {video_id: streams}
        for step in (1, 2, 3):
            write_event(gateway, video_id, {"type": "progress", "step": step})
            for call in calls:
                event = await call.next_event()
                assert (event.event, event.json()["step"]) == ("progress", step)
        # Three events for ten streams: three reads, not thirty.
        assert len(reads) == streams + 3
        write_event(gateway, video_id, {"type": "completed"})
        for call in calls:
            assert [e.event for e in await call.rest()] == ["completed"]
            await call.disconnect()
        assert gateway.streams.feeds.watching() == {}
        assert gateway.streams.slots.total == 0

    asyncio.run(scenario())


def test_a_key_over_its_stream_cap_is_refused_with_429_too_many_streams(make_gateway):
    gateway = make_gateway(access=two_keys(), max_per_key=2, retry_after_s=7)
    video_id = queued_job(gateway, key_id="alice")
    bobs = queued_job(gateway, 2, key_id="bob")
    path = f"/v1/videos/{video_id}/events"

    async def scenario():
        first = SseCall(gateway.app, path, bearer(ALICE))
        async with first, SseCall(gateway.app, path, bearer(ALICE)) as second:
            assert (first.status, second.status) == (200, 200)
            async with SseCall(gateway.app, path, bearer(ALICE)) as refused:
                await refused.rest()
                assert refused.status == 429
                assert refused.headers["content-type"] == "application/json"
                assert refused.headers["retry-after"] == "7"
                error = json.loads(refused.text)["error"]
                assert (error["code"], error["key_id"], error["max_streams"]) == ("too_many_streams", "alice", 2)
                assert "streams.max_per_key" in error["message"]
            # Another key has its own streams.
            async with SseCall(gateway.app, f"/v1/videos/{bobs}/events", bearer(BOB)) as other:
                assert other.status == 200
            assert gateway.streams.slots.per_key == {"alice": 2}
            await first.disconnect()  # a stream closed gives its slot back at once
            async with SseCall(gateway.app, path, bearer(ALICE)) as again:
                assert again.status == 200
        assert gateway.streams.slots.total == 0

    asyncio.run(scenario())


def test_without_keys_the_replica_cap_bounds_all_streams(make_gateway):
    gateway = make_gateway(max_per_key=1, max_per_replica=2)  # auth off: per-key caps do not apply
    path = f"/v1/videos/{queued_job(gateway)}/events"

    async def scenario():
        async with SseCall(gateway.app, path) as one, SseCall(gateway.app, path) as two:
            assert (one.status, two.status) == (200, 200)
            async with SseCall(gateway.app, path) as refused:
                await refused.rest()
                error = json.loads(refused.text)["error"]
                assert (refused.status, error["code"]) == (429, "too_many_streams")
                assert "streams.max_per_replica=2" in error["message"]

    asyncio.run(scenario())


def test_an_unknown_or_foreign_video_is_a_404_before_any_slot_is_taken(make_gateway):
    gateway = make_gateway(access=two_keys())
    alices = queued_job(gateway, key_id="alice")

    async def scenario():
        for path, key in (("/v1/videos/video_nope/events", ALICE), (f"/v1/videos/{alices}/events", BOB)):
            async with SseCall(gateway.app, path, bearer(key)) as call:
                await call.rest()
                assert (call.status, json.loads(call.text)["error"]["code"]) == (404, "not_found")
        assert gateway.streams.slots.total == 0 and gateway.streams.feeds.watching() == {}

    asyncio.run(scenario())


def test_a_stream_ends_with_a_reconnect_event_at_its_lifetime_and_resumes_from_its_last_id(make_gateway):
    # Polls every 5 ms find nothing new: they must not keep the stream from ending.
    gateway = make_gateway(max_lifetime_s=0.05, poll_interval_s=0.005)
    video_id = queued_job(gateway)
    path = f"/v1/videos/{video_id}/events"

    async def scenario():
        async with SseCall(gateway.app, path) as call:
            events = await call.rest()
        assert [e.event for e in events] == ["queued", "reconnect"]
        assert events[-1].json() == {"type": "reconnect", "reason": "max_lifetime", "last_event_id": 1}
        assert events[-1].id == "1"  # no id of its own: Last-Event-ID stays the last real event's
        assert "retry: 1000\nevent: reconnect\n" in call.text  # the browser's reconnection delay
        assert gateway.streams.slots.total == 0 and gateway.streams.feeds.watching() == {}
        write_event(gateway, video_id, {"type": "progress", "step": 1})
        async with SseCall(gateway.app, path, {"Last-Event-ID": events[-1].id}) as resumed:
            again = await resumed.rest()
        assert [(e.id, e.event) for e in again] == [("2", "progress"), ("2", "reconnect")]

    asyncio.run(scenario())


def test_an_idle_stream_sends_keep_alive_comments_between_events(make_gateway):
    gateway = make_gateway(keepalive_s=0.01)
    video_id = queued_job(gateway)

    async def scenario():
        async with SseCall(gateway.app, f"/v1/videos/{video_id}/events") as call:
            assert (await call.next_event()).event == "queued"
            while not call.comments:  # nothing happens: only keep-alives come
                assert await call.next_block() == ": keep-alive"
                call.comments.append(": keep-alive")
            write_event(gateway, video_id, {"type": "completed"})
            assert [e.event for e in await call.rest()] == ["completed"]  # comments skipped by parsers
        assert call.headers["content-type"].startswith("text/event-stream")
        assert call.headers["x-accel-buffering"] == "no"

    asyncio.run(scenario())


def test_a_finished_job_s_stream_ends_after_its_terminal_event_without_keepalive_or_reconnect(make_gateway):
    gateway = make_gateway()
    video_id = queued_job(gateway)
    write_event(gateway, video_id, {"type": "progress", "step": 1})
    write_event(gateway, video_id, {"type": "failed"})

    async def scenario():
        async with SseCall(gateway.app, f"/v1/videos/{video_id}/events") as call:
            assert [(e.id, e.event) for e in await call.rest()] == [("1", "queued"), ("2", "progress"), ("3", "failed")]
        assert ": keep-alive" not in call.text and gateway.streams.slots.total == 0

    asyncio.run(scenario())


def test_a_reconnect_names_the_last_event_sent_not_the_last_one_read(make_gateway):
    gateway = make_gateway(max_lifetime_s=10)
    video_id = queued_job(gateway)
    write_event(gateway, video_id, {"type": "progress", "step": 1})
    now = [0.0]
    streams = ProgressStreams(gateway.views, gateway.streams.feeds, gateway.settings.args.streams, lambda: now[0])

    async def scenario():
        stream = await streams.open(video_id, 0, None)
        assert (await stream.next())[0] == 1  # the feed's one read brought events 1 and 2
        now[0] = 10.0  # the lifetime is over with event 2 read but never sent
        assert await stream.next() == Reconnect("max_lifetime", last_event_id=1)
        stream.close()

    asyncio.run(scenario())
