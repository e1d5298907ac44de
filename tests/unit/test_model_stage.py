"""ModelStage's model thread: OOM recovery, error hygiene, fault injection and check_health.

No Ray and no model: a stage around a fake pipeline, driven with asyncio.run.
Out-of-memory errors are real `torch.cuda.OutOfMemoryError`s (constructible on
the CPU); the GPU variant with real allocations is tests/gpu/test_oom_recovery.py.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref

import pytest
import torch

from deployments import base
from deployments.base import ModelStage
from serve_app.config import ServiceArgs
from serve_app.errors import DeadlineExceeded, GpuOutOfMemory, StageFailed
from serve_app.health import ReplicaUnhealthy


class FakeVae:
    def __init__(self) -> None:
        self.cleared = 0

    def clear_cache(self) -> None:
        self.cleared += 1


class FakePipe:
    def __init__(self) -> None:
        self.vae = FakeVae()

    @property
    def components(self) -> dict:
        return {"vae": self.vae, "transformer": None, "scheduler": object()}


class Stage(ModelStage):
    stage = "video_encoder"

    def __init__(self, **args) -> None:  # what ModelStage.__init__ does, without loading a model
        self.args = ServiceArgs(**args)
        self.pipe = FakePipe()
        self.device = "cpu"
        self._start_runtime()


class Held:
    """Stands in for a tensor a failed call had in a local variable."""


def oom(message: str = "CUDA out of memory. Tried to allocate 9.00 GiB") -> torch.cuda.OutOfMemoryError:
    return torch.cuda.OutOfMemoryError(message)


def run(coro):
    return asyncio.run(coro)


def test_a_plain_call_runs_on_the_model_thread():
    stage = Stage()

    def work(a, b):
        return a + b, threading.current_thread().name

    total, thread = run(stage.run_model(work, 2, 3))
    assert total == 5 and thread.startswith("video_encoder-model")
    assert stage.health.snapshot()["outcomes"] == {"ok": 1}
    assert stage.idle


def test_oom_runs_the_fallback_once_with_the_same_arguments():
    stage = Stage()
    calls = []

    def decode(latents, fps):
        calls.append(("decode", latents, fps))
        raise oom()

    def decode_tiled(latents, fps):
        calls.append(("tiled", latents, fps))
        return "video"

    assert run(stage.run_model(decode, "z", 8, fallback=decode_tiled)) == "video"
    assert calls == [("decode", "z", 8), ("tiled", "z", 8)]
    assert stage.oom_counts == {"recovered": 1}
    assert stage.pipe.vae.cleared == 1  # the interrupted decode's feature cache is dropped
    assert stage.health.snapshot()["outcomes"] == {"ok": 1}


def test_oom_without_fallback_is_a_503_and_the_replica_keeps_serving():
    stage = Stage()
    held = []

    def greedy():
        tensor = Held()
        held.append(weakref.ref(tensor))
        raise oom()

    with pytest.raises(GpuOutOfMemory) as info:
        run(stage.run_model(greedy))
    err = info.value
    assert (err.status_code, err.code) == (503, "gpu_out_of_memory")
    assert "video_encoder ran out of GPU memory (CUDA out of memory. Tried to allocate 9.00 GiB)" in err.message
    assert err.details == {"stage": "video_encoder", "fallback_tried": False}
    # The original error (and its frames, and their tensors) is not carried along.
    assert err.__context__ is None and err.__cause__ is None
    assert held[0]() is None
    assert stage.oom_counts == {"failed": 1}
    assert run(stage.run_model(lambda: "next request")) == "next request"
    stage.health.check()  # an OOM says nothing about the GPU's health


def test_fallback_that_also_runs_out_is_a_503_naming_both():
    stage = Stage()

    def tiled():
        raise oom("CUDA out of memory. Tried to allocate 1.00 GiB")

    with pytest.raises(GpuOutOfMemory, match=r"and so did its lower-memory fallback \(CUDA out of memory. "
                       r"Tried to allocate 1.00 GiB\)") as info:
        run(stage.run_model(lambda: (_ for _ in ()).throw(oom()), fallback=tiled))
    assert info.value.details["fallback_tried"] is True
    assert stage.oom_counts == {"failed": 1}
    assert stage.pipe.vae.cleared == 2  # after each out-of-memory


def test_fallback_failing_otherwise_reports_its_own_error():
    stage = Stage()

    def tiled():
        raise ValueError("tile size 0")

    with pytest.raises(StageFailed, match="video_encoder failed: ValueError: tile size 0"):
        run(stage.run_model(lambda: (_ for _ in ()).throw(oom()), fallback=tiled))
    assert stage.oom_counts == {"failed": 1}


def test_unexpected_errors_reach_clients_as_one_line_without_traceback():
    stage = Stage()
    held = []

    def buggy():
        tensor = Held()
        held.append(weakref.ref(tensor))
        raise RuntimeError("line one\nTraceback (most recent call last):\n  File \"/srv/secret.py\"")

    with pytest.raises(StageFailed) as info:
        run(stage.run_model(buggy))
    message = info.value.message
    assert message == "video_encoder failed: RuntimeError: line one"
    assert "Traceback" not in str(info.value.to_dict())
    assert info.value.__context__ is None
    assert held[0]() is None


def test_service_errors_pass_through_and_release_their_frames():
    stage = Stage()
    held = []

    def too_late():
        tensor = Held()
        held.append(weakref.ref(tensor))
        raise DeadlineExceeded("deadline passed after step 3 of 8", stage="denoise", step=3)

    with pytest.raises(DeadlineExceeded) as info:
        run(stage.run_model(too_late))
    assert info.value.details == {"stage": "denoise", "step": 3}
    # The exception is still alive here (pytest holds it); the failed call's locals are not.
    assert held[0]() is None


def test_fault_injection_numbers_calls_and_fallbacks():
    stage = Stage(faults={"oom_on_calls": {"video_encoder": [1, 4, 5]}, "fail_on_calls": {"video_encoder": [6]}})
    ran = []

    def work(tag):
        ran.append(tag)
        return tag

    assert run(stage.run_model(work, "a", fallback=work)) == "a"  # call 1 OOMs, its fallback is call 2
    assert run(stage.run_model(work, "b", fallback=work)) == "b"  # call 3
    with pytest.raises(GpuOutOfMemory, match="injected fault: video_encoder model call 5"):
        run(stage.run_model(work, "c", fallback=work))  # calls 4 and 5
    with pytest.raises(StageFailed, match="InjectedFault: model call failed"):
        run(stage.run_model(work, "d"))  # call 6
    assert ran == ["a", "b"]
    assert stage.oom_counts == {"recovered": 1, "failed": 1}
    assert stage.faults.injected == 4


def test_faults_for_another_stage_do_nothing_here():
    stage = Stage(faults={"oom_on_calls": {"denoiser": [1]}})
    assert run(stage.run_model(lambda: "fine")) == "fine"


def test_consecutive_cuda_errors_fail_the_health_check():
    stage = Stage(health={"max_consecutive_cuda_errors": 2}, faults={"cuda_error_on_calls": {"video_encoder": [1, 2]}})

    async def scenario():
        for _ in range(2):
            with pytest.raises(StageFailed, match="CUDA error: an illegal memory access"):
                await stage.run_model(lambda: None)
        await stage.check_health()

    with pytest.raises(ReplicaUnhealthy, match="2 model calls in a row failed with a CUDA error"):
        run(scenario())


def test_a_stuck_call_fails_the_health_check_and_steps_keep_it_alive():
    stage = Stage(health={"stall_s": 60})
    now = [0.0]
    stage.health.clock = lambda: now[0]
    started, release = threading.Event(), threading.Event()

    def denoise():
        started.set()
        release.wait(10)
        return "latents"

    async def scenario():
        work = asyncio.ensure_future(stage.run_model(denoise))
        await asyncio.to_thread(started.wait, 10)
        now[0] += 50
        stage.step_done(1, 8)  # a step: progress
        now[0] += 50
        await stage.check_health()  # 50 s since the last step
        now[0] += 11
        with pytest.raises(ReplicaUnhealthy, match=r"model call 1 made no progress for 61s after step 1"):
            await stage.check_health()
        release.set()
        return await work

    assert run(scenario()) == "latents"


def test_step_delay_fault_sleeps_after_each_step(monkeypatch):
    slept = []
    monkeypatch.setattr("serve_app.faults.time.sleep", slept.append)
    stage = Stage(faults={"step_delay_s": 0.25})
    stage.step_done(1, 4)
    stage.step_done(2, 4)
    assert slept == [0.25, 0.25]
    Stage().step_done(1, 4)  # off by default
    assert slept == [0.25, 0.25]


def test_a_queued_call_cancelled_before_it_ran_leaves_the_replica_idle():
    stage = Stage()
    started, release = threading.Event(), threading.Event()

    def first():
        started.set()
        release.wait(10)
        return 1

    async def scenario():
        running = asyncio.ensure_future(stage.run_model(first))
        await asyncio.to_thread(started.wait, 10)
        queued = asyncio.ensure_future(stage.run_model(lambda: 2))
        await asyncio.sleep(0)  # let it submit
        assert not stage.idle
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        release.set()
        assert await running == 1

    run(scenario())
    assert stage.idle


def test_memory_baseline_leak_and_collection(monkeypatch):
    stage = Stage(health={"memory_tolerance_mib": 1, "memory_strikes": 2})
    allocated = [100 * 2**20]
    monkeypatch.setattr(stage, "_allocated", lambda: allocated[0])
    collected = []

    def collect():
        collected.append(True)
        allocated[0] = garbage_free[0]

    monkeypatch.setattr(base.gc, "collect", collect)
    garbage_free = [100 * 2**20]

    async def scenario():
        await stage.check_health()  # the baseline
        assert stage.health.baseline_bytes == 100 * 2**20
        # Up by 50 MiB, but all of it garbage: a collection brings it back, no strike.
        allocated[0] = 150 * 2**20
        await stage.check_health()
        assert collected and stage.health.memory_strikes == 0
        # Up by 50 MiB that survives collection: a leak, twice in a row.
        allocated[0] = garbage_free[0] = 150 * 2**20
        await stage.check_health()
        with pytest.raises(ReplicaUnhealthy, match="50 MiB above its baseline"):
            await stage.check_health()

    run(scenario())


def test_check_health_on_the_cpu_passes_and_describe_reports_health():
    stage = Stage()
    stage.profile = ServiceArgs().model_profile()
    stage.load_s, stage.memory_fraction = 0.0, None  # set by ModelStage.__init__, which loads a model
    run(stage.check_health())
    info = run(stage.describe())
    assert info["health"]["healthy"] is True and info["oom"] == {}
    gc.collect()


def test_background_warm_up_lets_a_request_run_between_its_steps():
    """Steps after `before_ready` run on the model thread one at a time: a request submitted
    while one runs goes next, before the remaining steps."""
    stage = Stage()
    order: list[str] = []
    first_background_step = threading.Event()
    release = threading.Event()

    def step(name: str, hold: bool = False):
        def run_step():
            order.append(name)
            if hold:
                first_background_step.set()
                assert release.wait(10)
        return run_step

    stage.warm_up([("ready", step("ready")), ("later 1", step("later 1", hold=True)),
                   ("later 2", step("later 2"))], before_ready=1)
    assert first_background_step.wait(10)
    assert order == ["ready", "later 1"]  # "ready" ran in the constructor's thread, before it returned
    assert stage.warmup_pending == ["later 1", "later 2"]
    assert not stage.idle  # no memory baseline is taken while warm-up still grows the allocator

    async def request():
        future = asyncio.ensure_future(stage.run_model(lambda: order.append("request")))
        await asyncio.sleep(0)  # submitted to the model thread now, while "later 1" holds it
        release.set()
        await future

    run(request())
    assert stage.wait_warm(10)
    assert order == ["ready", "later 1", "request", "later 2"]
    assert stage.warmup_pending == [] and set(stage.warmup_s) == {"ready", "later 1", "later 2"}
    assert stage.idle


def test_a_failing_background_warm_up_step_leaves_the_replica_serving():
    stage = Stage()

    def broken():
        raise RuntimeError("no such kernel")

    stage.warm_up([("broken", broken), ("fine", lambda: None)], before_ready=0)
    assert stage.wait_warm(10)
    assert set(stage.warmup_s) == {"fine"} and stage.warmup_pending == []
    assert run(stage.run_model(lambda: 42)) == 42
