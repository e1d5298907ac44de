"""Video ids: ours are "video_" + 32 hex digits, and nothing else is accepted.

Ids become parts of paths and object keys; refusing every other shape
before use means none can escape the artifact folder or bucket prefix.
"""

from __future__ import annotations

import re

from serve_app.errors import NotFound

VIDEO_ID = re.compile(r"^video_[0-9a-f]{32}$")


def check_video_id(video_id: str) -> str:
    if not isinstance(video_id, str) or not VIDEO_ID.fullmatch(video_id):
        # Cut: the id is the client's, and may be as long as a URL can be.
        raise NotFound(f"no video with id {str(video_id)[:80]!r}", param="video_id")
    return video_id
