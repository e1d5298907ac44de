"""Gateway: the HTTP ingress. Validation, the graph call, results; no model."""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve

from serve_app.api.protocol import StageHealth
from serve_app.api.routes import create_app
from serve_app.api.service import VideoService
from serve_app.artifacts import LocalArtifactStore
from serve_app.config import ServiceArgs
from serve_app.graph import StageGraph
from serve_app.records import FileRecordStore

STAGE_PROBE_TIMEOUT_S = 5.0


class HandleProbe:
    """Asks one replica of each stage what it runs (for /healthz)."""

    def __init__(self, handles: dict[str, Any]) -> None:
        self.handles = handles

    async def _one(self, handle: Any) -> StageHealth:
        try:
            info = await asyncio.wait_for(handle.describe.remote(), STAGE_PROBE_TIMEOUT_S)
            return StageHealth(ok=True, replica=info)
        except Exception as exc:  # noqa: BLE001 - health reports, never raises
            return StageHealth(ok=False, error=f"{type(exc).__name__}: {exc}"[:500])

    async def describe_stages(self) -> dict[str, StageHealth]:
        results = await asyncio.gather(*(self._one(h) for h in self.handles.values()))
        return dict(zip(self.handles, results))


@serve.deployment
@serve.ingress()
class Gateway:
    def __init__(self, args: dict[str, Any], prompt_encoder: Any, denoiser: Any, video_encoder: Any) -> None:
        service_args = ServiceArgs(**args)
        videos_dir = service_args.data_path / "videos"
        self.service = VideoService(
            args=service_args,
            profile=service_args.model_profile(),
            catalog=service_args.preset_catalog(),
            generator=StageGraph(prompt_encoder, denoiser, video_encoder),
            records=FileRecordStore(videos_dir),
            artifacts=LocalArtifactStore(videos_dir),
            probe=HandleProbe(
                {"prompt_encoder": prompt_encoder, "denoiser": denoiser, "video_encoder": video_encoder}
            ),
        )

    def __serve_build_asgi_app__(self):
        return create_app(self.service)
