"""Finished files (the mp4, later thumbnails) by video id and variant.

The local-folder backend is the default; an S3-compatible backend can stand
behind the same interface.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Protocol

from serve_app.errors import NotFound
from serve_app.records import check_video_id

Variant = Literal["video"]
FILE_NAMES: dict[str, str] = {"video": "video.mp4"}
MEDIA_TYPES: dict[str, str] = {"video": "video/mp4"}


class ArtifactStore(Protocol):
    def put(self, video_id: str, variant: Variant, data: bytes) -> None: ...
    def local_path(self, video_id: str, variant: Variant) -> Path: ...


class LocalArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, video_id: str, variant: Variant) -> Path:
        return self.root / check_video_id(video_id) / FILE_NAMES[variant]

    def put(self, video_id: str, variant: Variant, data: bytes) -> None:
        path = self._path(video_id, variant)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def local_path(self, video_id: str, variant: Variant) -> Path:
        path = self._path(video_id, variant)
        if not path.exists():
            raise NotFound(f"video {video_id!r} has no {variant!r} content", param="variant")
        return path
