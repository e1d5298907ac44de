"""ModelWorker: the model thread, OOM recovery, error hygiene, fault injection, health and warm-up.

No Ray and no model: a worker around a fake pipeline, driven with asyncio.run.
Out-of-memory errors are real `torch.cuda.OutOfMemoryError`s (constructible on
the CPU); the GPU variant with real allocations is tests/gpu/test_oom_recovery.py.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import weakref

import pytest

from serve_app.errors import DeadlineExceeded, GpuOutOfMemory, StageFailed
from serve_app.health import ReplicaUnhealthy
from tests.helpers.model_worker import FakePipe, Held, make_worker, oom


def run(coro):
    return asyncio.run(coro)


def test_a_plain_call_runs_on_the_model_thread():
    worker = make_worker()

    def work(a, b):
        return a + b, threading.current_thread().name

    total, thread = run(worker.run(work, 2, 3))
    assert total == 5 and thread.startswith("video_encoder-model")
    assert worker.health.snapshot()["outcomes"] == {"ok": 1}
    assert worker.idle


def test_oom_runs_the_fallback_once_with_the_same_arguments():
    pipe = FakePipe()
    worker = make_worker(pipe)
    calls = []

    def decode(latents, fps):
        calls.append(("decode", latents, fps))
        raise oom()

    def decode_tiled(latents, fps):
        calls.append(("tiled", latents, fps))
        return "video"

    assert run(worker.run(decode, "z", 8, fallback=decode_tiled)) == "video"
    assert calls == [("decode", "z", 8), ("tiled", "z", 8)]
    assert worker.oom_counts == {"recovered": 1}
    assert pipe.vae.cleared == 1  # the interrupted decode's feature cache is dropped
    assert worker.health.snapshot()["outcomes"] == {"ok": 1}


def test_oom_without_fallback_is_a_503_and_the_replica_keeps_serving():
    worker = make_worker()
    held = []

    def greedy():
        tensor = Held()
        held.append(weakref.ref(tensor))
        raise oom()

    with pytest.raises(GpuOutOfMemory) as info:
        run(worker.run(greedy))
    err = info.value
    assert (err.status_code, err.code) == (503, "gpu_out_of_memory")
    assert "video_encoder ran out of GPU memory (CUDA out of memory. Tried to allocate 9.00 GiB)" in err.message
    assert err.details == {"stage": "video_encoder", "fallback_tried": False}
    # The original error (and its frames, and their tensors) is not carried along.
    assert err.__context__ is None and err.__cause__ is None
    assert held[0]() is None
    assert worker.oom_counts == {"failed": 1}
    assert run(worker.run(lambda: "next request")) == "next request"
    worker.health.check()  # an OOM says nothing about the GPU's health


def test_fallback_that_also_runs_out_is_a_503_naming_both():
    pipe = FakePipe()
    worker = make_worker(pipe)

    def tiled():
        raise oom("CUDA out of memory. Tried to allocate 1.00 GiB")

    with pytest.raises(
        GpuOutOfMemory,
        match=r"and so did its lower-memory fallback \(CUDA out of memory. "
        r"Tried to allocate 1.00 GiB\)",
    ) as info:
        run(worker.run(lambda: (_ for _ in ()).throw(oom()), fallback=tiled))
    assert info.value.details["fallback_tried"] is True
    assert worker.oom_counts == {"failed": 1}
    assert pipe.vae.cleared == 2  # after each out-of-memory


def test_fallback_failing_otherwise_reports_its_own_error():
    worker = make_worker()

    def tiled():
        raise ValueError("tile size 0")

    with pytest.raises(StageFailed, match="video_encoder failed: ValueError: tile size 0"):
        run(worker.run(lambda: (_ for _ in ()).throw(oom()), fallback=tiled))
    assert worker.oom_counts == {"failed": 1}


def test_unexpected_errors_reach_clients_as_one_line_without_traceback():
    worker = make_worker()
    held = []

    def buggy():
        tensor = Held()
        held.append(weakref.ref(tensor))
        raise RuntimeError('line one\nTraceback (most recent call last):\n  File "/srv/secret.py"')

    with pytest.raises(StageFailed) as info:
        run(worker.run(buggy))
    message = info.value.message
    assert message == "video_encoder failed: RuntimeError: line one"
    assert "Traceback" not in str(info.value.to_dict())
    assert info.value.__context__ is None
    assert held[0]() is None


def test_service_errors_pass_through_and_release_their_frames():
    worker = make_worker()
    held = []

    def too_late():
        tensor = Held()
        held.append(weakref.ref(tensor))
        raise DeadlineExceeded("deadline passed after step 3 of 8", stage="denoise", step=3)

    with pytest.raises(DeadlineExceeded) as info:
        run(worker.run(too_late))
    assert info.value.details == {"stage": "denoise", "step": 3}
    # The exception is still alive here (pytest holds it); the failed call's locals are not.
    assert held[0]() is None


def test_fault_injection_numbers_calls_and_fallbacks():
    worker = make_worker(faults={"oom_on_calls": {"video_encoder": [1, 4, 5]}, "fail_on_calls": {"video_encoder": [6]}})
    ran = []

    def work(tag):
        ran.append(tag)
        return tag

    assert run(worker.run(work, "a", fallback=work)) == "a"  # call 1 OOMs, its fallback is call 2
    assert run(worker.run(work, "b", fallback=work)) == "b"  # call 3
    with pytest.raises(GpuOutOfMemory, match="injected fault: video_encoder model call 5"):
        run(worker.run(work, "c", fallback=work))  # calls 4 and 5
    with pytest.raises(StageFailed, match="InjectedFault: model call failed"):
        run(worker.run(work, "d"))  # call 6
    assert ran == ["a", "b"]
    assert worker.oom_counts == {"recovered": 1, "failed": 1}
    assert worker.faults.injected == 4


def test_faults_for_another_stage_do_nothing_here():
    worker = make_worker(faults={"oom_on_calls": {"denoiser": [1]}})
    assert run(worker.run(lambda: "fine")) == "fine"


def test_consecutive_cuda_errors_fail_the_health_check():
    worker = make_worker(
        health={"max_consecutive_cuda_errors": 2}, faults={"cuda_error_on_calls": {"video_encoder": [1, 2]}}
    )

    async def scenario():
        for _ in range(2):
            with pytest.raises(StageFailed, match="CUDA error: an illegal memory access"):
                await worker.run(lambda: None)
        worker.check_health()

    with pytest.raises(ReplicaUnhealthy, match="2 model calls in a row failed with a CUDA error"):
        run(scenario())


def test_a_stuck_call_fails_the_health_check_and_steps_keep_it_alive():
    worker = make_worker(health={"stall_s": 60})
    now = [0.0]
    worker.health.clock = lambda: now[0]
    started, release = threading.Event(), threading.Event()

    def denoise():
        started.set()
        release.wait(10)
        return "latents"

    async def scenario():
        work = asyncio.ensure_future(worker.run(denoise))
        await asyncio.to_thread(started.wait, 10)
        now[0] += 50
        worker.step_done(1, 8)  # a step: progress
        now[0] += 50
        worker.check_health()  # 50 s since the last step
        now[0] += 11
        with pytest.raises(ReplicaUnhealthy, match=r"model call 1 made no progress for 61s after step 1"):
            worker.check_health()
        release.set()
        return await work

    assert run(scenario()) == "latents"


def test_step_delay_fault_sleeps_after_each_step(monkeypatch):
    slept = []
    monkeypatch.setattr("serve_app.faults.time.sleep", slept.append)
    worker = make_worker(faults={"step_delay_s": 0.25})
    worker.step_done(1, 4)
    worker.step_done(2, 4)
    assert slept == [0.25, 0.25]
    make_worker().step_done(1, 4)  # off by default
    assert slept == [0.25, 0.25]


def test_a_queued_call_cancelled_before_it_ran_leaves_the_replica_idle():
    worker = make_worker()
    started, release = threading.Event(), threading.Event()

    def first():
        started.set()
        release.wait(10)
        return 1

    async def scenario():
        running = asyncio.ensure_future(worker.run(first))
        await asyncio.to_thread(started.wait, 10)
        queued = asyncio.ensure_future(worker.run(lambda: 2))
        await asyncio.sleep(0)  # let it submit
        assert not worker.idle
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        release.set()
        assert await running == 1

    run(scenario())
    assert worker.idle


def test_memory_baseline_leak_and_collection(monkeypatch):
    worker = make_worker(health={"memory_tolerance_mib": 1, "memory_strikes": 2})
    allocated = [100 * 2**20]
    monkeypatch.setattr(worker.memory, "allocated", lambda: allocated[0])
    collected = []

    def collect():
        collected.append(True)
        allocated[0] = garbage_free[0]

    monkeypatch.setattr("serve_app.model_worker.worker.gc.collect", collect)
    garbage_free = [100 * 2**20]

    worker.check_health()  # the baseline
    assert worker.health.baseline_bytes == 100 * 2**20
    # Up by 50 MiB, but all of it garbage: a collection brings it back, no strike.
    allocated[0] = 150 * 2**20
    worker.check_health()
    assert collected and worker.health.memory_strikes == 0
    # Up by 50 MiB that survives collection: a leak, twice in a row.
    allocated[0] = garbage_free[0] = 150 * 2**20
    worker.check_health()
    with pytest.raises(ReplicaUnhealthy, match="50 MiB above its baseline"):
        worker.check_health()


def test_on_the_cpu_the_health_check_passes_and_describe_reports_it():
    worker = make_worker()
    worker.check_health()
    info = worker.describe()
    assert info["health"]["healthy"] is True and info["oom"] == {}
    assert info["warmup_s"] == {} and info["warmup_pending"] == []
    assert set(info) == {"startup_phases", "health", "oom", "warmup_s", "compile_cache_hits", "warmup_pending"}


def test_background_warm_up_lets_a_request_run_between_its_steps():
    """Steps after `before_ready` run on the model thread one at a time: a request submitted
    while one runs goes next, before the remaining steps."""
    worker = make_worker()
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

    worker.warm_up(
        [("ready", step("ready")), ("later 1", step("later 1", hold=True)), ("later 2", step("later 2"))],
        before_ready=1,
    )
    assert first_background_step.wait(10)
    assert order == ["ready", "later 1"]  # "ready" ran in the caller's thread, before warm_up returned
    assert worker.describe()["warmup_pending"] == ["later 1", "later 2"]
    assert not worker.idle  # no memory baseline is taken while warm-up still grows the allocator

    async def request():
        future = asyncio.ensure_future(worker.run(lambda: order.append("request")))
        await asyncio.sleep(0)  # submitted to the model thread now, while "later 1" holds it
        release.set()
        await future

    run(request())
    assert worker.wait_warm(10)
    assert order == ["ready", "later 1", "request", "later 2"]
    info = worker.describe()
    assert info["warmup_pending"] == [] and set(info["warmup_s"]) == {"ready", "later 1", "later 2"}
    assert worker.idle


def test_a_failing_background_warm_up_step_leaves_the_replica_serving():
    pipe = FakePipe()
    worker = make_worker(pipe)

    def broken():
        raise RuntimeError("no such kernel")

    worker.warm_up([("broken", broken), ("fine", lambda: None)], before_ready=0)
    assert worker.wait_warm(10)
    info = worker.describe()
    assert set(info["warmup_s"]) == {"fine"} and info["warmup_pending"] == []
    assert pipe.vae.cleared == 1  # what the failed step held is let go
    assert run(worker.run(lambda: 42)) == 42


def test_shutdown_waits_for_what_is_queued():
    worker = make_worker()
    ran = []
    worker.warm_up([("slow", lambda: ran.append("slow"))], before_ready=0)
    worker.shutdown(wait=True)
    assert ran == ["slow"]


def test_importing_the_worker_loads_neither_ray_nor_torch():
    code = "import sys, serve_app.model_worker; print(' '.join(sorted(sys.modules)))"
    loaded = set(
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    )
    assert "serve_app.model_worker.worker" in loaded  # a guard against checking nothing
    assert "torch" not in loaded and "ray" not in loaded
