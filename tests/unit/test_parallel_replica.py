"""How a multi-GPU replica judges its ranks, without Ray or ranks: the health verdict from their
pings (serve_app/rank_health.py), and how a collective call on every rank ended
(deployments/parallel_ranks.collect, fed asyncio futures in place of ObjectRefs)."""

from __future__ import annotations

import asyncio
import re

import pytest
from ray.exceptions import ActorDiedError

from deployments.parallel_ranks import RanksBroken, collect
from serve_app.errors import DeadlineExceeded, RequestCancelled
from serve_app.rank_health import RankSilent, RankVerdict, judge


def ping(rank: int, running: bool = False, quiet: float = 0.0) -> dict:
    return {"rank": rank, "device": "cpu", "step": 3, "running": running, "seconds_since_step": quiet}


# --- the health verdict -----------------------------------------------------------------


def test_healthy_ranks_pass_and_an_idle_rank_never_stalls():
    assert judge([ping(0), ping(1)], stall_limit_s=10) is None
    assert judge([ping(0, quiet=999), ping(1, quiet=999)], stall_limit_s=10) is None  # idle since its last job


def test_a_dead_or_silent_rank_fails_the_replica_whatever_health_enabled_says():
    lost = judge([ping(0), ActorDiedError()], stall_limit_s=10)
    assert lost == RankVerdict("lost", "rank 1 is gone: ActorDiedError") and lost.binding
    silent = judge([RankSilent("no answer within 5s"), ping(1)], stall_limit_s=10)
    assert silent is not None and silent.kind == "silent" and "rank 0 did not answer" in silent.reason
    assert silent.binding


def test_a_running_loop_without_steps_past_the_limit_is_a_stall():
    stall = judge([ping(0, running=True, quiet=12), ping(1, running=True, quiet=12)], stall_limit_s=10)
    assert stall is not None and stall.kind == "stall" and not stall.binding
    assert "rank 0 made no denoising step for 12s after step 3 (limit 10s)" == stall.reason
    assert judge([ping(0, running=True, quiet=9)], stall_limit_s=10) is None


# --- a collective call's outcome -----------------------------------------------------------


def settled(*outcomes):
    """Futures already ended with these outcomes (an exception, or a value)."""
    loop = asyncio.get_running_loop()
    futures = []
    for outcome in outcomes:
        future = loop.create_future()
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
        futures.append(future)
    return futures


def run(coroutine_fn):
    return asyncio.run(coroutine_fn())


def test_rank_zeros_answer_when_every_rank_finished():
    async def call():
        return await collect(settled(("latents", "video"), None, None), settle_s=1)

    assert run(call) == ("latents", "video")


def test_a_dead_rank_fails_the_call_at_once_without_waiting_for_the_others():
    async def call():
        hung = asyncio.get_running_loop().create_future()  # rank 0, stuck in a collective
        [dead] = settled(ActorDiedError())
        with pytest.raises(RanksBroken, match="rank 1 died during a call") as broken:
            await collect([hung, dead], settle_s=3600)
        return broken.value.kind

    assert run(call) == "lost"


def test_a_stop_the_ranks_agreed_on_is_rank_zeros_error():
    async def call():
        refs = settled(DeadlineExceeded("deadline passed at step 2", step=2), RequestCancelled("stopped with rank 0"))
        with pytest.raises(DeadlineExceeded, match="step 2"):
            await collect(refs, settle_s=1)

    run(call)


def test_the_same_error_on_every_rank_is_the_jobs_own_failure():
    async def call():
        with pytest.raises(ValueError, match="bad shape"):
            await collect(settled(ValueError("bad shape"), ValueError("bad shape")), settle_s=1)

    run(call)


@pytest.mark.parametrize(
    "outcomes, reason",
    [
        ((("latents", "video"), RuntimeError("boom")), "the ranks disagree: rank(s) [0] finished"),
        ((RuntimeError("[gloo] Timed out waiting 60000ms"), RuntimeError("[gloo] Connection closed by peer")), "group"),
        ((ValueError("x"), KeyError("x")), "the ranks failed differently (ValueError, KeyError)"),
    ],
)
def test_ranks_that_disagree_or_a_failed_group_break_the_replica(outcomes, reason):
    async def call():
        with pytest.raises(RanksBroken, match=re.escape(reason)) as broken:
            await collect(settled(*outcomes), settle_s=1)
        return broken.value.kind

    assert run(call) == "failed"


def test_a_rank_that_never_ends_after_another_failed_breaks_the_replica_after_the_settle_time():
    async def call():
        hung = asyncio.get_running_loop().create_future()
        [failed] = settled(RuntimeError("collective timed out"))
        message = "rank(s) [1] did not end their call 0.05s after another failed"
        with pytest.raises(RanksBroken, match=re.escape(message)):
            await collect([failed, hung], settle_s=0.05)
        return hung.cancelled()

    assert run(call)  # the call gives up on it


# --- the replica's health check, over stand-in rank handles ------------------------------


class FakeRank:
    """Answers `ping.remote()` like a rank actor handle: with `answer`, by raising it, or never ("hang")."""

    def __init__(self, answer) -> None:
        self.answer = answer
        self.ping = self

    def remote(self):
        return self._answer()

    async def _answer(self):
        if self.answer == "hang":
            await asyncio.Event().wait()
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


def bare_replica(ranks, **args):
    """A ParallelDenoiser as its constructor leaves it, without Ray (its ranks: `ranks`)."""
    from deployments.parallel_denoiser import ParallelDenoiser
    from serve_app.config import ServiceArgs

    replica = object.__new__(ParallelDenoiser.func_or_class)
    replica.args = ServiceArgs(
        stages={"parallel_denoiser": {"gpus": len(ranks), "gpu_share": 0, "ping_timeout_s": 0.05}}, **args
    )
    replica.options = replica.args.stages.parallel_denoiser
    replica._ranks, replica._verdict, replica._failed_checks = ranks, None, 0
    replica._replaced = asyncio.Event()
    return replica


def health_checks(replica, times: int) -> list[str]:
    from serve_app.health import ReplicaUnhealthy

    async def checks():
        outcomes = []
        for _ in range(times):
            try:
                await replica.check_health()
                outcomes.append("ok")
            except ReplicaUnhealthy as exc:
                outcomes.append(exc.details["reason"])
        return outcomes, replica._replaced.is_set()

    return asyncio.run(checks())


def test_the_replica_fails_every_check_once_a_rank_is_gone_and_knows_when_serve_gives_up():
    replica = bare_replica([FakeRank(ping(0)), FakeRank(ActorDiedError())])
    outcomes, replaced = health_checks(replica, 3)
    assert outcomes == ["lost"] * 3 and replaced  # Ray replaces a replica after 3 failed checks
    # The verdict is kept: the rank is not asked again, and a healthy answer changes nothing.
    replica._ranks[1].answer = ping(1)
    assert health_checks(replica, 1)[0] == ["lost"]


def test_a_rank_that_does_not_answer_its_ping_in_time_fails_the_check():
    replica = bare_replica([FakeRank(ping(0)), FakeRank("hang")])
    outcomes, replaced = health_checks(replica, 2)
    assert outcomes == ["silent", "silent"] and not replaced


def test_a_stall_fails_the_check_only_with_health_enabled():
    stalled = [FakeRank(ping(0, running=True, quiet=20)), FakeRank(ping(1, running=True, quiet=20))]
    assert health_checks(bare_replica(stalled, health={"stall_s": 10}), 1)[0] == ["stall"]
    off = bare_replica(stalled, health={"stall_s": 10, "enabled": False})
    assert health_checks(off, 2)[0] == ["ok", "ok"] and off._verdict is None
    # A lost rank fails it either way: such a replica cannot serve at all.
    lost = bare_replica([FakeRank(ping(0)), FakeRank(ActorDiedError())], health={"enabled": False})
    assert health_checks(lost, 1)[0] == ["lost"]


def test_warm_up_compiles_the_shapes_that_route_to_the_replica():
    from deployments.parallel_denoiser import warmup_shapes
    from serve_app.config import ServiceArgs

    args = ServiceArgs(model="wan2.2-ti2v-5b-random", stages={"parallel_denoiser": {"min_latent_tokens": 16384}})
    # The profile warms preview, standard and official; only official (27,280 tokens) routes here.
    assert warmup_shapes(args, args.stages.parallel_denoiser) == [(64, 64, 5), (704, 1280, 121)]
    tiny = ServiceArgs(stages={"parallel_denoiser": {"min_latent_tokens": 16384}})
    assert warmup_shapes(tiny, tiny.stages.parallel_denoiser) == [(64, 64, 5)]  # the compiled graph only
