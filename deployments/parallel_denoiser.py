"""ParallelDenoiser: one replica over N GPUs of one node, for large shapes.

The replica coordinates and holds no model: Ray Serve reserves its placement
group (`args.stages.parallel_denoiser`: bundle 0 for the replica, CPU only;
bundles 1..N, one GPU share each, STRICT_PACK), and the replica starts one rank
actor per bundle (deployments/parallel_ranks.py). The ranks form one
torch.distributed group and run the same loop in lock-step
(serve_app/pipeline/parallel/), then decode the video together; rank 0 answers.

`denoise` has the Denoiser's signature and streams the same messages, then the
EncodedVideo its ranks made (the graph then skips the VideoEncoder). The
gateway sends it the jobs whose latent tokens reach `min_latent_tokens`
(serve_app/routing.py).

Failure: a rank that dies fails the running call at once; one that hangs fails
it within `collective_timeout_s`. The health check pings every rank
(serve_app/rank_health.py); once the ranks cannot work together the replica
fails every check, Ray Serve replaces it, and the job, run again by its
gateway, resumes from rank 0's last loop checkpoint on the new replica.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import ray
from ray import serve

from deployments.parallel_ranks import STAGE, RanksBroken, collect, kill_ranks, start_ranks
from serve_app import metrics
from serve_app.config import ParallelDenoiserOptions
from serve_app.deadline import Deadline
from serve_app.deployment_view import start_args
from serve_app.errors import DeadlineExceeded, RequestCancelled, StageFailed, StageLost
from serve_app.health import ReplicaUnhealthy
from serve_app.live import apply_user_config
from serve_app.messages import DenoisedLatents, EncodedVideo, ImageLatents, StepProgress
from serve_app.params import GenerationParams
from serve_app.rank_health import CHECKS_BEFORE_REPLACEMENT, RankSilent, RankVerdict, judge
from serve_app.routing import DenoiserRoutes
from serve_app.settings.speed import EXACT, FastKnobs

log = logging.getLogger("ray.serve")

# Rank actors' names: <prefix><app>#<replica id>#<rank>, in the replica's namespace.
RANK_NAME_PREFIX = "SERVE_PARALLEL_RANK::"
# Past the collective timeout, how long a rank may take to report its failed call.
SETTLE_GRACE_S = 30.0


@serve.deployment
class ParallelDenoiser:
    stage = STAGE

    def __init__(self, args: dict[str, Any]) -> None:
        metrics.enable()
        started = time.perf_counter()
        start = start_args(args, self.stage)
        self.base_args, self.args = start.base, start.args
        assert isinstance(start.view, ParallelDenoiserOptions)
        self.options: ParallelDenoiserOptions = start.view
        self.profile = self.args.model_profile()
        self.outcomes: Counter[str] = Counter()
        self.last_run: dict[str, Any] = {}
        self._verdict: RankVerdict | None = None
        self._failed_checks = 0
        self._replaced = asyncio.Event()
        self._previous: asyncio.Future | None = None  # the last collective call, until it ended on every rank
        context = serve.get_replica_context()
        # Named after the replica, as Serve names replicas (SERVE_REPLICA::app#Deployment#id).
        names = f"{RANK_NAME_PREFIX}{context.app_name}#{context.replica_id.unique_id}#"
        self.rank_names = [f"{names}{rank}" for rank in range(self.options.gpus)]
        self._ranks, self.rendezvous = start_ranks(args, self.options, names)
        try:
            # Each rank joins the group in its constructor: the first call on each waits for all.
            self.rank_info = ray.get([rank.describe.remote() for rank in self._ranks])
            self.warmup_s: dict[str, float] = {}
            if self.args.warmup:
                shapes = warmup_shapes(self.args, self.options)
                self.warmup_s = ray.get([rank.warm_up.remote(shapes) for rank in self._ranks])[0]
        except BaseException:
            kill_ranks(self._ranks)
            raise
        self.load_s = time.perf_counter() - started
        log.info(
            "parallel denoiser ready: %d ranks (%s) in %.1fs, rendezvous %s",
            len(self._ranks),
            self.rank_info[0].get("backend"),
            self.load_s,
            self.rendezvous,
        )

    # --- the stream ---------------------------------------------------------------------

    async def denoise(
        self,
        params: GenerationParams,
        embeddings: Any,
        deadline: Deadline,
        knobs: FastKnobs | None = None,
        job_id: str | None = None,
        image_latents: ImageLatents | None = None,
    ) -> AsyncIterator[StepProgress | DenoisedLatents | EncodedVideo]:
        """The Denoiser's `denoise`, run on every rank at once: StepProgress..., DenoisedLatents (its
        timings; the array stays on the ranks), then the EncodedVideo the ranks decoded."""
        knobs = EXACT if knobs is None else knobs
        if not knobs.exact:
            # Routing sends fast tiers to single-GPU replicas (serve_app/routing.py); the ranks run the exact path only.
            raise StageFailed(f"fast knobs {knobs.model_dump(exclude_defaults=True)} run on single-GPU replicas only")
        await self._settle_previous()
        if self._verdict is not None:
            await self._wait_for_replacement(deadline)
            raise StageLost(f"the parallel denoiser's ranks are gone ({self._verdict.reason}); run again elsewhere")
        # Resolved once here (a response passed on by another deployment arrives resolved; a bare
        # ObjectRef is awaited) and put once, not serialised once per rank.
        embeddings = await _resolved(embeddings)
        image_latents = await _resolved(image_latents)
        shared_embeddings = ray.put(embeddings)
        shared_image = None if image_latents is None else ray.put(image_latents)
        started = time.perf_counter()
        refs = [
            rank.denoise_and_decode.remote(params, shared_embeddings, deadline, knobs, job_id, shared_image)
            for rank in self._ranks
        ]
        settle_s = self.options.collective_timeout_s + SETTLE_GRACE_S
        run = self._previous = asyncio.ensure_future(collect(refs, settle_s))
        total = params.num_inference_steps
        steps: list[int] = []
        try:
            while not run.done():
                await asyncio.wait({run}, timeout=max(self.args.progress_interval_s, self.options.progress_poll_s))
                step = await self._progress() if not run.done() else None
                if step and step > (steps[-1] if steps else 0):
                    steps.append(step)
                    yield StepProgress(step, total)
            latents, video = run.result()
        except RanksBroken as exc:
            self._record("lost", steps, total, started)
            self._fail(RankVerdict(exc.kind, exc.reason))
            await self._wait_for_replacement(deadline)
            raise StageLost(
                f"the parallel denoiser lost its ranks mid-job ({exc.reason}); run again elsewhere"
            ) from None
        except BaseException as exc:
            if not run.done():
                # Cancelled (client gone, deadline hit in the gateway): rank 0 stops at its next
                # step, and every rank with it (they agree per step). Not awaited: re-raise now.
                self._previous = asyncio.ensure_future(self._stop(run))
            self._record(_outcome_of(exc), steps, total, started)
            raise
        self._record("completed", steps, total, started)
        if not steps or steps[-1] < total:
            yield StepProgress(total, total)
        # The latents themselves stay here: the video is made, and the gateway relays only timings.
        yield dataclasses.replace(latents, latents=None)
        yield video

    async def _progress(self) -> int | None:
        try:
            answer = await asyncio.wait_for(self._ranks[0].progress.remote(), self.options.ping_timeout_s)
        except Exception:  # noqa: BLE001 - progress is best effort; the call's own outcome decides
            return None
        return int(answer["step"]) if answer.get("running") else None

    async def _stop(self, run: asyncio.Future) -> None:
        """Cancel rank 0's loop until the call has ended on every rank (a cancel that came before
        its loop started is sent again), so the next call never meets a loop still running."""
        while not run.done():
            try:
                self._ranks[0].cancel.remote()
            except Exception:  # noqa: BLE001 - the rank is gone: the call fails on its own
                pass
            await asyncio.wait({run}, timeout=self.options.progress_poll_s)
        error = run.exception()
        if isinstance(error, RanksBroken):
            self._fail(RankVerdict(error.kind, error.reason))

    async def _settle_previous(self) -> None:
        """Wait until the last call (a cancelled one still stopping) has ended on every rank."""
        previous = self._previous
        if previous is not None and not previous.done():
            await asyncio.wait({previous})

    # --- failure ------------------------------------------------------------------------

    def _fail(self, verdict: RankVerdict) -> None:
        """Keep the first verdict; ranks that can no longer work together are killed at once (those stuck
        in a collective would otherwise hold their GPUs until their timeout)."""
        if self._verdict is None:
            self._verdict = verdict
            metrics.replica_unhealthy(self.stage, verdict.kind)
            log.error("parallel denoiser unhealthy: %s", verdict.reason)
        kill_ranks(self._ranks)

    async def _wait_for_replacement(self, deadline: Deadline) -> None:
        """Hold a call that found the ranks gone until Ray Serve has given up on this replica, so
        that its rerun is routed to the replacement rather than here again (each run here costs
        the job an attempt). Never past the job's deadline (the rerun gets a fresh one)."""
        health = self.args.health
        limit = (CHECKS_BEFORE_REPLACEMENT + 1) * health.check_period_s + health.check_timeout_s
        limit = min(limit, max(0.0, deadline.remaining() - 1.0))
        try:
            await asyncio.wait_for(self._replaced.wait(), limit)
        except TimeoutError:
            return
        # Serve stops routing here at its next reconcile after the last failed check.
        await asyncio.sleep(min(health.check_period_s, max(0.0, deadline.remaining() - 1.0)))

    async def check_health(self) -> None:
        """Ray Serve's periodic check: every rank answers its ping within ping_timeout_s, and a
        running loop makes steps (health.stall_s). Raising gets the replica replaced."""
        if self._verdict is None:
            pings = await asyncio.gather(*(self._ping(rank) for rank in self._ranks))
            verdict = judge(pings, self.args.health.stall_limit(self.stage))
            if verdict is not None and (verdict.binding or self.args.health.enabled):
                self._fail(verdict)
        if self._verdict is not None:
            self._failed_checks += 1
            if self._failed_checks >= CHECKS_BEFORE_REPLACEMENT:
                self._replaced.set()
            raise ReplicaUnhealthy(
                f"{self.stage} replica is unhealthy: {self._verdict.reason}",
                stage=self.stage,
                reason=self._verdict.kind,
            )

    async def _ping(self, rank: Any) -> dict[str, Any] | BaseException:
        timeout = self.options.ping_timeout_s
        try:
            return await asyncio.wait_for(rank.ping.remote(), timeout)
        except TimeoutError:
            return RankSilent(f"no answer within {timeout:g}s")
        except Exception as exc:  # noqa: BLE001 - judged by rank_health
            return exc

    # --- Ray Serve hooks and reports ----------------------------------------------------------

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Live settings (serve_app/live.py): the progress interval and health thresholds."""
        self.args = apply_user_config(self.base_args, self.stage, user_config)

    async def describe(self) -> dict[str, Any]:
        """What this replica runs (for /healthz): its ranks as they started, and its verdict."""
        return {
            "model": self.profile.identity,
            "device": f"{len(self._ranks)} ranks ({self.rank_info[0].get('backend')})",
            "dtype": self.profile.dtype,
            "attention_backend": self.profile.attention_backend,
            "load_s": round(self.load_s, 3),
            "warmup_s": {k: round(v, 3) for k, v in self.warmup_s.items()},
            "ranks": [{"rank": info.get("rank"), "device": info.get("device")} for info in self.rank_info],
            "layout": {k: v for k, v in self.rank_info[0].items() if k not in ("rank", "device", "load_s")},
            "gpu_share": self.options.gpu_share,
            "min_latent_tokens": self.options.min_latent_tokens,
            "health": {"healthy": self._verdict is None, "reason": self._verdict and self._verdict.reason},
        }

    async def stats(self) -> dict[str, Any]:
        """Outcome counters and the last run (for operators and tests)."""
        return {
            "outcomes": dict(self.outcomes),
            "last_run": dict(self.last_run),
            "ranks": len(self._ranks),
            "rank_actors": list(self.rank_names),
            "routes": dataclasses.asdict(DenoiserRoutes.of(self.args.stages)),
        }

    def _record(self, outcome: str, steps: list[int], total: int, started: float) -> None:
        self.outcomes[outcome] += 1
        # A first reported step past 1: the loop resumed from a checkpoint of an earlier run.
        first = steps[0] if steps else None
        if first is not None and first > 1:
            self.outcomes["resumed"] += 1
        self.last_run = {
            "outcome": outcome,
            "steps_done": total if outcome == "completed" else (steps[-1] if steps else 0),
            "total_steps": total,
            "first_step_seen": first,
            "elapsed_s": round(time.perf_counter() - started, 3),
        }

    def __del__(self) -> None:
        # The ranks would die with the replica's placement group anyway; this frees their GPUs first.
        kill_ranks(getattr(self, "_ranks", []))


def warmup_shapes(args: Any, options: ParallelDenoiserOptions) -> list[tuple[int, int, int]]:
    """(height, width, frames) to compile and run at start: a tiny one (the compiled graph, as the
    Denoiser's first warm-up step), then the profile's warm-up presets that route here."""
    catalog = args.preset_catalog()
    routes = DenoiserRoutes(options.min_latent_tokens)
    presets = [catalog.presets[name] for name in args.model_profile().speed.warmup_presets]
    routed = [(p.height, p.width, p.num_frames) for p in presets if routes.parallel(_preset_params(p))]
    return [(64, 64, 5), *routed]


def _preset_params(preset: Any) -> GenerationParams:
    return GenerationParams(
        prompt="",
        negative_prompt="",
        width=preset.width,
        height=preset.height,
        num_frames=preset.num_frames,
        num_inference_steps=preset.num_inference_steps,
        guidance_scale=preset.guidance_scale,
        fps=preset.fps,
        seed=0,
        preset="warmup",
    )


async def _resolved(value: Any) -> Any:
    return await value if isinstance(value, ray.ObjectRef) else value


def _outcome_of(exc: BaseException) -> str:
    if isinstance(exc, DeadlineExceeded):
        return "deadline_exceeded"
    if isinstance(exc, (RequestCancelled, asyncio.CancelledError, GeneratorExit)):
        return "cancelled"
    return "failed"
