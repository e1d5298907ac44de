"""Artifact stores, local and S3 (against a real moto server on loopback)."""

from __future__ import annotations

import itertools
import urllib.request
from pathlib import Path

import pytest

from serve_app.artifacts import (
    FILE_NAMES,
    LocalArtifactStore,
    S3ArtifactStore,
    media_type,
    open_artifact_store,
)
from serve_app.errors import InvalidRequest, NotFound

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

VIDEO_ID = "video_" + "0123456789abcdef" * 2
OTHER_ID = "video_" + "f" * 32
BAD_IDS = ["../x", "video_../../etc", "/etc/passwd", "video_" + "0" * 31, ""]
CONTENT = {"video": b"\x00\x00\x00\x18ftypmp42 mp4 bytes", "thumbnail": b"\xff\xd8\xff jpeg bytes"}
_buckets = itertools.count()


@pytest.fixture(scope="module")
def moto_endpoint():
    # Port 0: the OS picks a free port, so parallel runs never collide.
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="module")
def s3_client(moto_endpoint):
    from botocore.config import Config

    # Explicit credentials and region: nothing is read from the environment
    # or ~/.aws, and no request can leave loopback.
    return boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )


def fresh_s3_store(s3_client, **kwargs) -> S3ArtifactStore:
    # A bucket per test: moto's state lives as long as the server does.
    return S3ArtifactStore(f"bucket-{next(_buckets)}", client=s3_client, create_bucket=True, **kwargs)


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalArtifactStore(tmp_path / "artifacts")
    return fresh_s3_store(request.getfixturevalue("s3_client"))


def stored_names(store) -> list[str]:
    """Every file or key the store holds, to prove a refused call wrote nothing."""
    if isinstance(store, LocalArtifactStore):
        return sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*"))
    listing = store.client.list_objects_v2(Bucket=store.bucket)
    return sorted(obj["Key"] for obj in listing.get("Contents", []))


@pytest.mark.parametrize("variant", ["video", "thumbnail"])
def test_round_trip(store, variant):
    assert not store.exists(VIDEO_ID, variant)
    store.put(VIDEO_ID, variant, CONTENT[variant])
    assert store.exists(VIDEO_ID, variant)
    assert store.get(VIDEO_ID, variant) == CONTENT[variant]
    other = "thumbnail" if variant == "video" else "video"
    assert not store.exists(VIDEO_ID, other)


def test_put_overwrites(store):
    store.put(VIDEO_ID, "video", b"first")
    store.put(VIDEO_ID, "video", b"second")
    assert store.get(VIDEO_ID, "video") == b"second"


def test_local_path(store):
    store.put(VIDEO_ID, "video", CONTENT["video"])
    path = store.local_path(VIDEO_ID, "video")
    if isinstance(store, LocalArtifactStore):
        assert isinstance(path, Path) and path.read_bytes() == CONTENT["video"]
        assert path.is_relative_to(store.root) and path.name == "video.mp4"
    else:
        assert path is None


@pytest.mark.parametrize("variant", ["video", "thumbnail"])
def test_missing_is_not_found_on_variant(store, variant):
    store.put(OTHER_ID, variant, b"someone else's")
    with pytest.raises(NotFound) as info:
        store.get(VIDEO_ID, variant)
    assert info.value.status_code == 404 and info.value.param == "variant"
    assert VIDEO_ID in info.value.message and variant in info.value.message


def test_local_path_of_missing_file_is_not_found(tmp_path):
    with pytest.raises(NotFound) as info:
        LocalArtifactStore(tmp_path).local_path(VIDEO_ID, "thumbnail")
    assert info.value.param == "variant"


def test_delete_removes_every_variant_and_is_idempotent(store):
    for variant, data in CONTENT.items():
        store.put(VIDEO_ID, variant, data)
    store.put(OTHER_ID, "video", b"keep me")
    store.delete(VIDEO_ID)
    assert not store.exists(VIDEO_ID, "video") and not store.exists(VIDEO_ID, "thumbnail")
    with pytest.raises(NotFound):
        store.get(VIDEO_ID, "thumbnail")
    store.delete(VIDEO_ID)  # again: nothing left, still fine
    store.delete("video_" + "1" * 32)  # never existed
    assert store.get(OTHER_ID, "video") == b"keep me"
    assert all(VIDEO_ID not in name for name in stored_names(store))


def test_copy_outlives_its_source_and_survives_a_replaced_source(store):
    """Issue 15 item 9: a cache hit's files are its own copy of the entry's."""
    for variant, data in CONTENT.items():
        store.put(VIDEO_ID, variant, data)
    assert store.copy(VIDEO_ID, OTHER_ID) == ("video", "thumbnail")
    store.put(VIDEO_ID, "video", b"refilled")  # a later fill of the entry replaces its file
    assert store.get(OTHER_ID, "video") == CONTENT["video"]
    store.delete(VIDEO_ID)  # the entry evicted
    assert store.get(OTHER_ID, "video") == CONTENT["video"]
    assert store.get(OTHER_ID, "thumbnail") == CONTENT["thumbnail"]


def test_copy_takes_what_the_source_has(store):
    store.put(VIDEO_ID, "video", CONTENT["video"])
    assert store.copy(VIDEO_ID, OTHER_ID) == ("video",)
    assert not store.exists(OTHER_ID, "thumbnail")
    third = "video_" + "2" * 32
    assert store.copy("video_" + "1" * 32, third) == ()  # no source at all
    assert all(third not in name for name in stored_names(store))


def test_local_copy_is_a_hard_link(tmp_path):
    store = LocalArtifactStore(tmp_path)
    store.put(VIDEO_ID, "video", CONTENT["video"])
    store.copy(VIDEO_ID, OTHER_ID)
    source, copy = store.local_path(VIDEO_ID, "video"), store.local_path(OTHER_ID, "video")
    assert source.stat().st_ino == copy.stat().st_ino and source.stat().st_nlink == 2
    assert not [p for p in (tmp_path / OTHER_ID).iterdir() if p.name.endswith(".tmp")]


def test_local_copy_falls_back_to_copying_where_links_fail(tmp_path, monkeypatch):
    import errno
    import os

    def no_links(source, target):
        raise OSError(errno.EMLINK, "too many links")  # a file at its link limit, or another file system

    store = LocalArtifactStore(tmp_path)
    store.put(VIDEO_ID, "video", CONTENT["video"])
    monkeypatch.setattr(os, "link", no_links)
    assert store.copy(VIDEO_ID, OTHER_ID) == ("video",)
    copy = store.local_path(OTHER_ID, "video")
    assert copy.read_bytes() == CONTENT["video"] and copy.stat().st_nlink == 1


def test_local_delete_keeps_files_it_does_not_own(tmp_path):
    # The record store may keep video.json in the same folder.
    store = LocalArtifactStore(tmp_path)
    store.put(VIDEO_ID, "video", b"x")
    (tmp_path / VIDEO_ID / "video.json").write_text("{}")
    store.delete(VIDEO_ID)
    assert [p.name for p in (tmp_path / VIDEO_ID).iterdir()] == ["video.json"]


def test_local_put_leaves_no_temp_files(tmp_path):
    store = LocalArtifactStore(tmp_path)
    store.put(VIDEO_ID, "video", b"a")
    store.put(VIDEO_ID, "thumbnail", b"b")
    store.put(VIDEO_ID, "video", b"c")
    assert sorted(p.name for p in (tmp_path / VIDEO_ID).iterdir()) == ["thumbnail.jpg", "video.mp4"]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_ids_that_could_escape_are_refused(store, bad):
    before = stored_names(store)
    for call in (
        lambda: store.put(bad, "video", b"x"),
        lambda: store.put(bad, "thumbnail", b"x"),
        lambda: store.get(bad, "video"),
        lambda: store.exists(bad, "video"),
        lambda: store.local_path(bad, "video"),
        lambda: store.delete(bad),
    ):
        with pytest.raises(NotFound) as info:
            call()
        assert info.value.param == "video_id"
    assert stored_names(store) == before == []


def test_unknown_variant_is_refused(store):
    with pytest.raises(InvalidRequest) as info:
        store.put(VIDEO_ID, "poster", b"x")
    assert info.value.param == "variant" and "'thumbnail'" in info.value.message
    assert stored_names(store) == []


def test_media_types():
    assert media_type("video") == "video/mp4"
    assert media_type("thumbnail") == "image/jpeg"
    with pytest.raises(InvalidRequest):
        media_type("poster")


def test_s3_keys_and_content_types(s3_client):
    store = fresh_s3_store(s3_client, prefix="/media/videos/")
    for variant, data in CONTENT.items():
        store.put(VIDEO_ID, variant, data)
    assert stored_names(store) == [f"media/videos/{VIDEO_ID}/thumbnail.jpg", f"media/videos/{VIDEO_ID}/video.mp4"]
    for variant, expected in [("video", "video/mp4"), ("thumbnail", "image/jpeg")]:
        head = s3_client.head_object(Bucket=store.bucket, Key=f"media/videos/{VIDEO_ID}/{FILE_NAMES[variant]}")
        assert head["ContentType"] == expected


def test_s3_default_prefix(s3_client):
    store = fresh_s3_store(s3_client)
    store.put(VIDEO_ID, "video", b"x")
    assert stored_names(store) == [f"videos/{VIDEO_ID}/video.mp4"]


def test_s3_create_bucket_is_idempotent(s3_client):
    store = fresh_s3_store(s3_client)
    store.put(VIDEO_ID, "video", b"x")
    again = S3ArtifactStore(store.bucket, client=s3_client, create_bucket=True)
    assert again.get(VIDEO_ID, "video") == b"x"


@pytest.mark.parametrize("variant", ["video", "thumbnail"])
def test_s3_presigned_url_serves_the_bytes(s3_client, variant):
    store = fresh_s3_store(s3_client)
    store.put(VIDEO_ID, variant, CONTENT[variant])
    url = store.presigned_url(VIDEO_ID, variant, expires_s=60)
    assert url.startswith(s3_client.meta.endpoint_url + "/")
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == CONTENT[variant]
        assert response.headers["Content-Type"] == media_type(variant)


@pytest.mark.parametrize("expires_s", [0, 7 * 24 * 3600 + 1])
def test_s3_presigned_url_expiry_bounds(s3_client, expires_s):
    store = S3ArtifactStore("any", client=s3_client)
    with pytest.raises(ValueError, match=f"got {expires_s}"):
        store.presigned_url(VIDEO_ID, "video", expires_s=expires_s)


def test_open_default_and_empty_are_local_under_data_dir(tmp_path):
    for url in (None, ""):
        store = open_artifact_store(url, tmp_path)
        assert isinstance(store, LocalArtifactStore) and store.root == tmp_path / "videos"


def test_open_file_url(tmp_path):
    target = tmp_path / "elsewhere dir"
    store = open_artifact_store((target).as_uri(), tmp_path / "data")
    assert isinstance(store, LocalArtifactStore) and store.root == target
    store.put(VIDEO_ID, "video", b"x")
    assert (target / VIDEO_ID / "video.mp4").read_bytes() == b"x"


def test_open_s3_url_with_explicit_client(s3_client, tmp_path):
    store = open_artifact_store("s3://opened-bucket/some/prefix/", tmp_path, client=s3_client, create_bucket=True)
    assert isinstance(store, S3ArtifactStore)
    assert (store.bucket, store.prefix) == ("opened-bucket", "some/prefix")
    store.put(VIDEO_ID, "thumbnail", b"jpeg")
    assert stored_names(store) == [f"some/prefix/{VIDEO_ID}/thumbnail.jpg"]
    assert open_artifact_store("s3://opened-bucket", tmp_path, client=s3_client).prefix == "videos"


def test_open_s3_url_takes_endpoint_from_env_or_keyword(monkeypatch, moto_endpoint, tmp_path):
    # Credentials from the environment here, since the store builds its own
    # client; the config files are pointed away so ~/.aws cannot interfere.
    for name, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ENDPOINT_URL": moto_endpoint,
    }.items():
        monkeypatch.setenv(name, value)
    store = open_artifact_store("s3://env-bucket", tmp_path, create_bucket=True)
    assert store.client.meta.endpoint_url == moto_endpoint
    store.put(VIDEO_ID, "video", b"via env")
    with urllib.request.urlopen(store.presigned_url(VIDEO_ID, "video"), timeout=10) as response:
        assert response.read() == b"via env"

    explicit = open_artifact_store("s3://env-bucket", tmp_path, endpoint_url="http://127.0.0.1:9")
    assert explicit.client.meta.endpoint_url == "http://127.0.0.1:9"


@pytest.mark.parametrize(
    "url",
    [
        "http://host/x",
        "gs://bucket/x",
        "/abs/dir",
        "relative/dir",
        "file://relative/dir",
        "s3:///no-bucket",
        "s3://bucket/x?versioned=1",
    ],
)
def test_open_rejects_other_urls(tmp_path, url):
    with pytest.raises(ValueError) as info:
        open_artifact_store(url, tmp_path)
    assert repr(url) in str(info.value)
    assert not any(tmp_path.iterdir())


def test_unknown_scheme_message_names_allowed_forms(tmp_path):
    with pytest.raises(ValueError, match=r"'gs'.*file:///absolute/dir.*s3://bucket\[/prefix\]"):
        open_artifact_store("gs://bucket", tmp_path)
