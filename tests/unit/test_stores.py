"""Record and artifact stores: round trips, and ids that must never become paths."""

from __future__ import annotations

import pytest

from serve_app.api.protocol import VideoError, VideoObject
from serve_app.artifacts import LocalArtifactStore
from serve_app.errors import NotFound
from serve_app.records import FileRecordStore

VIDEO_ID = "video_" + "0123456789abcdef" * 2
BAD_IDS = [
    "../x",
    "video_../../etc",
    "/etc/passwd",
    "video_" + "0" * 31,
    "video_" + "0" * 33,
    "video_" + "A" * 32,
    "video_" + "0" * 32 + "\n",
    "",
]


def make_video(video_id: str = VIDEO_ID, **changes) -> VideoObject:
    fields = dict(
        id=video_id, status="completed", model="wan2.2-ti2v-tiny", created_at=1, size="64x64",
        seconds="0.62", preset="preview", prompt="a boat", negative_prompt="", width=64, height=64,
        num_frames=5, fps=8, num_inference_steps=2, guidance_scale=1.0, seed=3,
    )
    return VideoObject(**{**fields, **changes})


def test_record_round_trip(tmp_path):
    store = FileRecordStore(tmp_path / "records")
    video = make_video(status="failed", error=VideoError(code="deadline_exceeded", message="late"))
    store.save(video)
    assert store.load(VIDEO_ID) == video
    # Saves go through a temporary file that must not be left behind.
    assert [p.name for p in (tmp_path / "records" / VIDEO_ID).iterdir()] == ["video.json"]


def test_record_save_overwrites(tmp_path):
    store = FileRecordStore(tmp_path)
    store.save(make_video(status="in_progress", progress=10))
    store.save(make_video(progress=100))
    loaded = store.load(VIDEO_ID)
    assert (loaded.status, loaded.progress) == ("completed", 100)


def test_unknown_record(tmp_path):
    with pytest.raises(NotFound) as info:
        FileRecordStore(tmp_path).load(VIDEO_ID)
    assert info.value.status_code == 404 and info.value.param == "video_id"
    assert VIDEO_ID in info.value.message


@pytest.mark.parametrize("bad", BAD_IDS)
def test_record_ids_that_could_escape_are_refused(tmp_path, bad):
    store = FileRecordStore(tmp_path / "records")
    with pytest.raises(NotFound):
        store.load(bad)
    with pytest.raises(NotFound):
        store.save(make_video(video_id=bad))
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["records"]


def test_artifact_round_trip(tmp_path):
    store = LocalArtifactStore(tmp_path / "artifacts")
    store.put(VIDEO_ID, "video", b"mp4 bytes")
    path = store.local_path(VIDEO_ID, "video")
    assert path.read_bytes() == b"mp4 bytes"
    assert path.is_relative_to(tmp_path / "artifacts")
    assert [p.name for p in path.parent.iterdir()] == ["video.mp4"]


def test_missing_artifact(tmp_path):
    with pytest.raises(NotFound) as info:
        LocalArtifactStore(tmp_path).local_path(VIDEO_ID, "video")
    assert info.value.status_code == 404 and VIDEO_ID in info.value.message


@pytest.mark.parametrize("bad", BAD_IDS)
def test_artifact_ids_that_could_escape_are_refused(tmp_path, bad):
    store = LocalArtifactStore(tmp_path / "artifacts")
    with pytest.raises(NotFound):
        store.put(bad, "video", b"x")
    with pytest.raises(NotFound):
        store.local_path(bad, "video")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["artifacts"]
