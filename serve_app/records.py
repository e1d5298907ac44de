"""Where video objects are kept between the POST that made them and later GETs.

`FileRecordStore` keeps one JSON file per video next to its artifacts: enough
for a single gateway node. The durable job store (SQLite, Redis) replaces it
behind the same three methods.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Protocol

from serve_app.api.protocol import VideoObject
from serve_app.errors import NotFound

# Ids are ours ("video_" + 32 hex); anything else is refused before it can
# become part of a path.
VIDEO_ID = re.compile(r"^video_[0-9a-f]{32}$")


def check_video_id(video_id: str) -> str:
    if not VIDEO_ID.fullmatch(video_id):
        raise NotFound(f"no video with id {video_id!r}", param="video_id")
    return video_id


class RecordStore(Protocol):
    def save(self, video: VideoObject) -> None: ...
    def load(self, video_id: str) -> VideoObject: ...


class FileRecordStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, video_id: str) -> Path:
        return self.root / check_video_id(video_id) / "video.json"

    def save(self, video: VideoObject) -> None:
        path = self._path(video.id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(video.model_dump_json())
        os.replace(tmp, path)  # readers never see half a record

    def load(self, video_id: str) -> VideoObject:
        path = self._path(video_id)
        if not path.exists():
            raise NotFound(f"no video with id {video_id!r}", param="video_id")
        return VideoObject.model_validate_json(path.read_text())
