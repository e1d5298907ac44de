"""What the gateway calls outside itself, typed by Protocols instead of `Any`.

In the gateway deployment these are Ray Serve handles, each behind a class
that spells out its methods (serve_app/graph.py's `StageGraph`,
deployments/gateway.py's `ResultCacheHandle`); in tests they are Ray-free
fakes (tests/helpers) or a deployment class built without Ray. Both kinds
satisfy the same Protocols; tests/unit/test_gateway_handles.py checks them
method by method, since nothing else would notice a fake drifting from the
real signature.

The cache's Protocol is split by caller: the job side (creator, runner,
listeners, deletes) claims, releases, fills and forgets entries; the admin routes read
stats, delete, purge and collect orphans. A fake for one side need not implement the other.
"""

from __future__ import annotations

from typing import Any, Protocol

from serve_app.deadline import Deadline
from serve_app.messages import GraphResult, ProgressCallback
from serve_app.params import GenerationParams


class VideoGenerator(Protocol):
    """Runs one job's settings through the model stages: prompt encoder, denoiser, video encoder."""

    async def generate(
        self,
        params: GenerationParams,
        deadline: Deadline,
        on_progress: ProgressCallback | None = None,
        job_id: str | None = None,
    ) -> GraphResult:
        """The finished mp4 and its stage times. `on_progress` hears every denoising step;
        `job_id` names the denoiser's loop checkpoint, so a rerun of the job resumes from it.
        Raises the stage's `ServiceError` (deadline, out of memory, lost replica, ...)."""
        ...


class CacheClaims(Protocol):
    """The result cache as jobs use it: single-flight claims on a key, and fills."""

    async def claim(self, key: str, job_id: str) -> str:
        """Claim `key` for `job_id`'s generation; returns the claim's holder: `job_id`, or
        the job already generating that key (which the request may join instead)."""
        ...

    async def release(self, key: str, job_id: str) -> None:
        """Drop `job_id`'s claim on `key` (a no-op when another job holds it)."""
        ...

    async def fill(self, key: str, video: dict[str, Any], source_id: str) -> bool:
        """Store job `source_id`'s completed files and video object (`video`, a VideoObject's
        dump) under `key`, and release its claim; False when its files were gone."""
        ...

    async def forget_source(self, key: str, source_id: str) -> bool:
        """Drop the entry of `key` if video `source_id` filled it (that video was deleted:
        what its owner deleted is not served on); False when it did not or there is none."""
        ...


class CacheAdministration(Protocol):
    """The result cache as the admin routes use it (/v1/cache)."""

    async def stats(self) -> dict[str, Any]:
        """Entries, bytes, fills and evictions."""
        ...

    async def delete(self, key: str) -> bool:
        """Drop one entry and its files; False when there was none."""
        ...

    async def purge(self) -> int:
        """Drop every entry; how many there were."""
        ...

    async def collect_orphans(self, now: float | None = None) -> int:
        """Delete files that no entry points at (left by a crash or a failed delete); how
        many keys' files went."""
        ...


class ResultCacheClient(CacheClaims, CacheAdministration, Protocol):
    """All of the result cache the gateway calls (deployments/result_cache.py's `ResultCache`)."""
