"""What every model-holding stage shares: config, model loading, a worker thread."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from serve_app import metrics
from serve_app.config import ServiceArgs
from serve_app.pipeline.loading import Stage, load_pipeline

T = TypeVar("T")
log = logging.getLogger("ray.serve")


class ModelStage:
    """Loads its slice of the pipeline once and runs model work off the event loop.

    Model calls run on one dedicated thread: the replica's event loop stays
    free for health checks and cancellation, and one thread means one model
    call at a time, so memory peaks do not stack up.
    """

    stage: Stage

    def __init__(self, args: dict[str, Any]) -> None:
        metrics.enable()
        self.args = ServiceArgs(**args)
        self.profile = self.args.model_profile()
        started = time.perf_counter()
        self.pipe = load_pipeline(self.profile, self.args.data_path, self.stage)
        self.device = str(self.pipe._execution_device)
        self.load_s = time.perf_counter() - started
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.stage}-model")
        log.info("%s loaded %s on %s in %.2fs", self.stage, self.profile.identity, self.device, self.load_s)

    async def run_model(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)
        finally:
            metrics.report_gpu(self.device)

    async def describe(self) -> dict[str, Any]:
        """What this replica runs: shown by /healthz."""
        return {
            "model": self.profile.identity,
            "device": self.device,
            "dtype": self.profile.dtype if self.stage != "video_encoder" else self.profile.vae_dtype,
            "attention_backend": self.profile.attention_backend,
            "load_s": round(self.load_s, 3),
        }
