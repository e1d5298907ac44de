"""Uploaded first-frame images by hash, local and S3 (a real moto server on loopback), and their sweep."""

from __future__ import annotations

import hashlib
import itertools
import os
import time

import pytest

from serve_app.artifacts import LocalArtifactStore, S3ArtifactStore
from serve_app.errors import ImageGone
from serve_app.reference_images import LocalReferenceImages, S3ReferenceImages, reference_images_for, sweeper
from tests.helpers.fakes import FakeGenerator
from tests.helpers.images import png
from tests.helpers.service import gateway_over

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

IMAGE = png(16, 16)
SHA = hashlib.sha256(IMAGE).hexdigest()
VIDEO_ID = "video_" + "0123456789abcdef" * 2
_buckets = itertools.count()


@pytest.fixture(scope="module")
def s3_client():
    from botocore.config import Config

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    # Explicit credentials and region: nothing is read from the environment, nothing leaves loopback.
    yield boto3.client(
        "s3",
        endpoint_url=f"http://{host}:{port}",
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )
    server.stop()


@pytest.fixture(params=["local", "s3"])
def artifacts(request, tmp_path):
    if request.param == "local":
        return LocalArtifactStore(tmp_path / "videos")
    client = request.getfixturevalue("s3_client")
    return S3ArtifactStore(f"images-{next(_buckets)}", client=client, create_bucket=True)


def test_images_are_kept_by_hash_on_the_artifacts_backend(artifacts):
    images = reference_images_for(artifacts)
    assert isinstance(images, LocalReferenceImages if isinstance(artifacts, LocalArtifactStore) else S3ReferenceImages)
    images.put(SHA, IMAGE)
    images.put(SHA, IMAGE)  # a second upload of the same image: still one, still whole
    assert images.get(SHA) == IMAGE
    with pytest.raises(ImageGone) as missing:
        images.get("f" * 64)
    assert missing.value.param == "input_reference" and "send it again" in missing.value.message


def test_images_live_beside_videos_without_being_one(artifacts):
    images = reference_images_for(artifacts)
    images.put(SHA, IMAGE)
    artifacts.put(VIDEO_ID, "video", b"mp4")
    artifacts.delete(VIDEO_ID)  # a video's files going never takes an image with them
    assert images.get(SHA) == IMAGE


@pytest.mark.parametrize("bad", ["../" + "0" * 61, "0" * 63, "G" * 64, ""])
def test_only_a_sha256_names_a_file(artifacts, bad):
    images = reference_images_for(artifacts)
    with pytest.raises(ValueError):
        images.put(bad, IMAGE)
    with pytest.raises(ValueError):
        images.get(bad)


def test_the_sweep_removes_images_not_uploaded_since_its_cutoff(artifacts):
    images = reference_images_for(artifacts)
    images.put(SHA, IMAGE)
    assert images.sweep(time.time() - 3600) == 0  # uploaded just now: kept
    assert images.sweep(time.time() + 3600) == 1  # everything older than an hour from now
    with pytest.raises(ImageGone):
        images.get(SHA)


def test_an_upload_refreshes_an_image_already_kept(tmp_path):
    images = LocalReferenceImages(tmp_path / "inputs")
    images.put(SHA, IMAGE)
    day_ago = time.time() - 86400
    os.utime(images.root / SHA, (day_ago, day_ago))
    images.put(SHA, IMAGE)  # uploaded again: kept for another keep_s
    assert images.sweep(time.time() - 3600) == 0 and images.get(SHA) == IMAGE


def test_the_runners_expiry_sweep_removes_stale_images(tmp_path):
    gateway = gateway_over(tmp_path, FakeGenerator())
    try:
        images = gateway.stores.images
        images.put(SHA, IMAGE)
        stale = time.time() - gateway.settings.args.image_input.keep_s - 60
        os.utime(images.root / SHA, (stale, stale))
        gateway.runner.sweep_expired()
        with pytest.raises(ImageGone):
            images.get(SHA)
    finally:
        gateway.stores.jobs.close()


def test_a_failing_image_sweep_does_not_stop_the_video_sweep(tmp_path):
    gateway = gateway_over(tmp_path, FakeGenerator())

    def broken() -> int:
        raise OSError("disk gone")

    try:
        gateway.runner.expiry.also.insert(0, broken)
        assert gateway.runner.sweep_expired() == 0  # ran to the end, the log has the error
    finally:
        gateway.stores.jobs.close()


def test_sweeper_sweeps_with_its_keep_time(tmp_path):
    images = LocalReferenceImages(tmp_path / "inputs")
    images.put(SHA, IMAGE)
    assert sweeper(images, keep_s=60, clock=lambda: time.time() + 30)() == 0
    assert sweeper(images, keep_s=60, clock=lambda: time.time() + 120)() == 1
