"""Video ids that must never become paths, and the local artifact store."""

from __future__ import annotations

import pytest

from serve_app.artifacts import LocalArtifactStore
from serve_app.errors import NotFound
from serve_app.ids import check_video_id

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


@pytest.mark.parametrize("bad", BAD_IDS)
def test_ids_that_could_escape_are_refused(bad):
    with pytest.raises(NotFound):
        check_video_id(bad)


def test_our_ids_are_accepted():
    assert check_video_id(VIDEO_ID) == VIDEO_ID


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
