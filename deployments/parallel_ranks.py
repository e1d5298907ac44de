"""The rank actors of one ParallelDenoiser replica: starting them in its placement group, and
telling how a collective call on all of them ended.

Ray-specific, so it lives beside the deployment rather than in serve_app/: the rank
body itself (`RankWorker`, serve_app/pipeline/parallel/rank.py) is Ray-free.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Sequence
from typing import Any

import ray
from ray.exceptions import RayActorError
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from serve_app.config import ParallelDenoiserOptions
from serve_app.errors import ServiceError
from serve_app.faults import FaultInjector
from serve_app.graph import unwrap_stage_error
from serve_app.pipeline.parallel.rank import RankWorker, free_port

log = logging.getLogger("ray.serve")

STAGE = "parallel_denoiser"
# Threads of a rank actor: the collective call, plus progress, cancel and ping answering
# meanwhile (and a describe); more would only let a second collective start by mistake.
RANK_CONCURRENCY = 4
# Errors of torch.distributed that mean the group itself failed (a peer gone, a timeout),
# as opposed to an error every rank raised alike before any collective (a bug, bad input).
GROUP_FAILURE = re.compile(r"gloo|nccl|timed? ?out|connection|peer|socket|broken pipe|Dist\w*Error", re.IGNORECASE)


class RankActor(RankWorker):
    """A rank as the deployment runs it: `RankWorker` plus, on rank 0, the test-only step
    faults of `args.faults` (step delay, step gate) under the stage name 'parallel_denoiser'.
    Rank 0 alone waits: the others wait for it in the next collective, so holding rank 0
    holds the whole replica, as holding a single-GPU denoiser's loop does."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        faults = self.args.faults
        active = self.rank == 0 and (faults.step_delay_s > 0 or bool(faults.step_gate))
        self._faults = FaultInjector(faults, STAGE) if active else None

    def _on_step(self, step: int, total: int) -> None:
        super()._on_step(step, total)
        if self._faults is not None:
            self._faults.after_step(step, total)


@ray.remote(num_cpus=0)
def _rendezvous_address() -> tuple[str, int]:
    """Run on rank 0's bundle: its node's address and a port free there, for the group's TCP store."""
    return ray.util.get_node_ip_address(), free_port()


def _rank_env() -> dict[str, str]:
    # NVLink multicast off unless the host says otherwise (the GPU hosts here ask for it).
    return {} if "NCCL_NVLS_ENABLE" in os.environ else {"NCCL_NVLS_ENABLE": "0"}


def start_ranks(
    payload: dict[str, Any], options: ParallelDenoiserOptions, name_prefix: str | None = None
) -> tuple[list[Any], str]:
    """One rank actor per bundle 1..N of this replica's placement group (bundle 0 is the replica).
    Returns the actor handles (rank order) and the rendezvous address. The actors are being
    constructed: their first call waits for it (each joins the group, so all start together).
    `name_prefix`: the actors are named `<prefix><rank>` (operators find them in `ray list
    actors` and the dashboard; tests kill one by name)."""
    pg = ray.util.get_current_placement_group()
    if pg is None:
        raise RuntimeError(
            "ParallelDenoiser runs in a placement group (its options' placement_group_bundles): built without "
            "one, it has no bundles to start its ranks in"
        )
    if len(pg.bundle_specs) != options.gpus + 1:
        raise RuntimeError(
            f"the placement group has {len(pg.bundle_specs)} bundles, but gpus={options.gpus} needs "
            f"{options.gpus + 1} (the replica and one per rank): its bundles come from args.stages.parallel_denoiser"
        )

    def in_bundle(index: int) -> PlacementGroupSchedulingStrategy:
        return PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=index)

    addr, port = ray.get(_rendezvous_address.options(scheduling_strategy=in_bundle(1)).remote())
    env = _rank_env()
    actor = ray.remote(RankActor)
    ranks = [
        actor.options(
            num_cpus=options.rank_cpus,
            num_gpus=options.gpu_share,
            max_concurrency=RANK_CONCURRENCY,
            scheduling_strategy=in_bundle(rank + 1),
            runtime_env={"env_vars": env} if env else None,
            **({"name": f"{name_prefix}{rank}"} if name_prefix else {}),
        ).remote(
            payload,
            rank,
            options.gpus,
            addr,
            port,
            options.collective_timeout_s,
            options.cfg_parallel,
            # A whole card (or a CPU bundle) needs no cap; a share does (RankWorker).
            options.gpu_share if 0 < options.gpu_share < 1 else None,
        )
        for rank in range(options.gpus)
    ]
    return ranks, f"{addr}:{port}"


def kill_ranks(ranks: Sequence[Any]) -> None:
    if not ray.is_initialized():
        return  # no Ray here, so no rank actors either (ray.kill would start a cluster to find out)
    for rank in ranks:
        try:
            ray.kill(rank, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass


class RanksBroken(Exception):
    """The ranks cannot run a collective together any more (one died or the group failed)."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind  # "lost" | "failed"
        self.reason = reason


async def collect(refs: Sequence[Any], settle_s: float) -> Any:
    """Rank 0's answer to a collective call on every rank (`refs`, in rank order).

    A rank that died fails the call at once (`RanksBroken`), without waiting for the others,
    which are stuck in a collective until their timeout. Otherwise every rank's outcome is
    awaited (at most `settle_s` once the first one failed): the same `ServiceError` stop on
    every rank (deadline, cancel: the ranks agree per step) is rank 0's error, raised as it
    is; the same other error everywhere is a job failure, raised as it is; anything else
    (ranks disagree, a torch.distributed failure, a rank that never answers) is `RanksBroken`.
    """
    futures = [asyncio.ensure_future(_outcome(ref)) for ref in refs]
    try:
        done, pending = await asyncio.wait(futures, return_when=asyncio.FIRST_EXCEPTION)
        for future in done:
            if isinstance(future.exception(), RayActorError):
                rank = futures.index(future)
                raise RanksBroken("lost", f"rank {rank} died during a call: {type(future.exception()).__name__}")
        if pending:
            _, still = await asyncio.wait(pending, timeout=settle_s)
            if still:
                ranks = sorted(futures.index(f) for f in still)
                raise RanksBroken(
                    "failed", f"rank(s) {ranks} did not end their call {settle_s:g}s after another failed"
                )
    finally:
        for future in futures:
            if not future.done():
                future.cancel()
    errors = [future.exception() for future in futures]
    if all(error is None for error in errors):
        return futures[0].result()
    raise _agreed_error(errors)


async def _outcome(ref: Any) -> Any:
    return await ref


def _agreed_error(errors: list[BaseException | None]) -> BaseException:
    causes = [None if error is None else unwrap_stage_error(error) for error in errors]
    for rank, cause in enumerate(causes):
        if isinstance(cause, RayActorError):
            raise RanksBroken("lost", f"rank {rank} died during a call: {type(cause).__name__}")
    if any(cause is None for cause in causes):
        done = [rank for rank, cause in enumerate(causes) if cause is None]
        raise RanksBroken("failed", f"the ranks disagree: rank(s) {done} finished, the others failed")
    if all(isinstance(cause, ServiceError) for cause in causes):
        return causes[0]  # type: ignore[return-value]  # a stop the ranks agreed on
    for rank, cause in enumerate(causes):
        if not isinstance(cause, ServiceError) and GROUP_FAILURE.search(f"{type(cause).__name__}: {cause}"):
            raise RanksBroken("failed", f"rank {rank}'s group failed: {type(cause).__name__}")
    if len({type(cause) for cause in causes}) > 1:
        kinds = ", ".join(type(cause).__name__ for cause in causes)
        raise RanksBroken("failed", f"the ranks failed differently ({kinds})")
    return causes[0]  # type: ignore[return-value]  # every rank alike: the job's own failure
