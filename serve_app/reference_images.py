"""Uploaded first-frame images (image to video), by SHA-256, kept beside the videos.

A job carries only its image's hash (`GenerationParams.input_reference_sha256`); whichever
gateway replica runs it, or runs it again after a crash, reads the bytes from
here. Content-addressed: one file per distinct image, however many jobs use it.
Every upload refreshes the file's time, and the runner's expiry sweep removes
images not uploaded for `image_input.keep_s` (longer than any job waits and runs).

Where: the artifact store's own backend, so every replica that sees the videos
sees the images. A local folder keeps them in `<artifact folder>/inputs/`, a bucket
under `<prefix>/inputs/`; "inputs" is no video id, so the artifact store never
serves, lists or deletes them.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from serve_app.artifacts import ArtifactStore, LocalArtifactStore, S3ArtifactStore, write_atomically
from serve_app.errors import ImageGone

SHA256 = re.compile(r"^[0-9a-f]{64}$")
FOLDER = "inputs"


def _check(sha256: str) -> str:
    # The hash becomes a file name or an object key: nothing else may.
    if not isinstance(sha256, str) or not SHA256.fullmatch(sha256):
        raise ValueError(f"not a SHA-256 hex digest: {str(sha256)[:80]!r}")
    return sha256


def _missing(sha256: str) -> ImageGone:
    return ImageGone(
        f"the input_reference image {sha256[:12]}... is no longer stored (images are kept image_input.keep_s "
        "seconds after their last upload); send it again",
        param="input_reference",
    )


class ReferenceImageStore(Protocol):
    def put(self, sha256: str, data: bytes) -> None:
        """Keep `data` under its hash; an image already there only has its time refreshed."""

    def get(self, sha256: str) -> bytes:
        """The image's bytes, or ImageGone (410, param input_reference) once it is gone."""

    def sweep(self, older_than: float) -> int:
        """Remove images last uploaded before `older_than` (epoch s); how many went."""


class LocalReferenceImages:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, sha256: str) -> Path:
        return self.root / _check(sha256)

    def put(self, sha256: str, data: bytes) -> None:
        path = self._path(sha256)
        if path.is_file():
            try:
                os.utime(path)  # the same bytes by definition: only the keep-until time moves
                return
            except FileNotFoundError:
                pass  # swept between the check and the touch: written again below
        write_atomically(path, data)  # two uploads of one image at once each write a whole file

    def get(self, sha256: str) -> bytes:
        try:
            return self._path(sha256).read_bytes()
        except FileNotFoundError:
            raise _missing(sha256) from None

    def sweep(self, older_than: float) -> int:
        if not self.root.is_dir():
            return 0
        removed = 0
        for path in self.root.iterdir():
            try:
                if path.stat().st_mtime < older_than:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        return removed


class S3ReferenceImages:
    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    def _key(self, sha256: str) -> str:
        return f"{self.prefix}/{_check(sha256)}"

    def put(self, sha256: str, data: bytes) -> None:
        # Always a PUT: it also moves LastModified, which the sweep reads.
        self.client.put_object(Bucket=self.bucket, Key=self._key(sha256), Body=data)

    def get(self, sha256: str) -> bytes:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(sha256))
        except self.client.exceptions.NoSuchKey:
            raise _missing(sha256) from None
        body = response["Body"]
        try:
            data: bytes = body.read()
            return data
        finally:
            body.close()

    def sweep(self, older_than: float) -> int:
        stale: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=f"{self.prefix}/"):
            for item in page.get("Contents", []):
                if item["LastModified"].timestamp() < older_than:
                    stale.append(item["Key"])
        for start in range(0, len(stale), 1000):  # DeleteObjects takes at most 1000 keys
            batch = stale[start : start + 1000]
            self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
            )
        return len(stale)


def reference_images_for(artifacts: ArtifactStore) -> ReferenceImageStore | None:
    """The image store on the artifact store's backend; None for a backend it does not know
    (then image requests are refused, as with `image_input.enabled: false`)."""
    if isinstance(artifacts, LocalArtifactStore):
        return LocalReferenceImages(artifacts.root / FOLDER)
    if isinstance(artifacts, S3ArtifactStore):
        prefix = f"{artifacts.prefix}/{FOLDER}" if artifacts.prefix else FOLDER
        return S3ReferenceImages(artifacts.client, artifacts.bucket, prefix)
    return None


def sweeper(images: ReferenceImageStore, keep_s: float, clock: Callable[[], float] = time.time) -> Callable[[], int]:
    """A no-argument sweep for the runner's expiry sweeper: images older than `keep_s` go."""

    def sweep() -> int:
        return images.sweep(clock() - keep_s)

    return sweep
