"""Whether a multi-GPU denoiser replica can go on, from its ranks' pings (Ray-free).

deployments/parallel_denoiser.py pings every rank actor at each Ray Serve
health check and hands the answers here. The replica must be replaced when:

- a rank is gone (its actor died: killed, out of host memory, NCCL's
  watchdog ended its process): `lost`;
- a rank does not answer its ping within `ping_timeout_s` (its process is
  stuck, e.g. holding the GIL in a hung call): `silent`;
- a running loop made no step for longer than `health.stall_s` (for the stage
  `parallel_denoiser`), as a single-GPU replica's stall check says: `stall`.

The first two mean the ranks can never run a collective together again, and
after a stall the replica kills its ranks (those stuck in a collective hold
their GPUs otherwise): every verdict ends the replica's ranks, and the replica
keeps it, as `HealthMonitor` keeps its verdicts. A stall obeys `health.enabled`
like the single-GPU checks do; a lost or silent rank does not: a replica with
a rank missing cannot serve at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# Ray Serve marks a replica unhealthy after this many failed health checks in a row
# (ray.serve._private.constants.REPLICA_HEALTH_CHECK_UNHEALTHY_THRESHOLD, not public).
CHECKS_BEFORE_REPLACEMENT = 3


class RankSilent(Exception):
    """A rank's ping did not come back within the ping timeout."""


@dataclass(frozen=True)
class RankVerdict:
    kind: str  # "lost" | "silent" | "stall" | "failed" (a collective call failed the group)
    reason: str

    @property
    def binding(self) -> bool:
        """Whether it holds with `health.enabled` false too (a stall alone does not)."""
        return self.kind != "stall"


def judge(pings: Sequence[dict[str, Any] | BaseException], stall_limit_s: float) -> RankVerdict | None:
    """The verdict on one round of pings (one per rank, in rank order: an answer or what
    raised instead), or None when the replica is fit to serve."""
    for rank, answer in enumerate(pings):
        if isinstance(answer, RankSilent):
            return RankVerdict("silent", f"rank {rank} did not answer its ping ({answer})")
        if isinstance(answer, BaseException):
            return RankVerdict("lost", f"rank {rank} is gone: {type(answer).__name__}")
    for rank, answer in enumerate(pings):
        assert isinstance(answer, dict)
        quiet = float(answer.get("seconds_since_step", 0.0))
        if answer.get("running") and quiet > stall_limit_s:
            return RankVerdict(
                "stall",
                f"rank {rank} made no denoising step for {quiet:.0f}s after step {answer.get('step')} "
                f"(limit {stall_limit_s:g}s)",
            )
    return None
