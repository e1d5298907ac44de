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
