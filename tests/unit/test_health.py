"""The health verdict of model replicas, and the test-only fault injection config."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from serve_app.config import ServiceArgs
from serve_app.faults import FaultInjection, FaultInjector, InjectedFault
from serve_app.health import MIB, HealthMonitor, HealthOptions, ReplicaUnhealthy, classify, is_cuda_error, is_oom


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def monitor(**options) -> tuple[HealthMonitor, FakeClock]:
    clock = FakeClock()
    return HealthMonitor(HealthOptions(**options), "denoiser", clock=clock), clock


def unhealthy_reason(m: HealthMonitor) -> str:
    with pytest.raises(ReplicaUnhealthy) as info:
        m.check()
    err = info.value
    assert (err.status_code, err.code) == (503, "replica_unhealthy")
    return err.details["reason"]


# --------------------------------------------------------------------------- classifying errors


@pytest.mark.parametrize(
    "exc, outcome",
    [
        (None, "ok"),
        (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "oom"),
        (RuntimeError("CUDA error: out of memory"), "oom"),  # cudaMalloc outside torch's allocator
        (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"), "oom"),
        (torch.AcceleratorError("CUDA error: an illegal memory access was encountered"), "cuda_error"),
        (RuntimeError("CUDA error: device-side assert triggered"), "cuda_error"),
        (RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED"), "cuda_error"),
        (RuntimeError("CUDA error: unspecified launch failure"), "cuda_error"),
        # Mentions CUDA but is a programming error, not a sick GPU.
        (RuntimeError("Expected all tensors to be on the same device, but found cuda:0 and cpu!"), "error"),
        (ValueError("CUDA error: not a RuntimeError"), "error"),
        (RuntimeError("shape mismatch"), "error"),
    ],
)
def test_classify(exc, outcome):
    assert classify(exc) == outcome
    assert is_oom(exc) == (outcome == "oom") if exc is not None else True
    assert is_cuda_error(exc) == (outcome == "cuda_error") if exc is not None else True


# --------------------------------------------------------------------------- CUDA errors


def test_consecutive_cuda_errors_make_the_replica_unhealthy():
    m, _ = monitor(max_consecutive_cuda_errors=3)
    for _ in range(2):
        m.call_started()
        m.call_ended("cuda_error")
    m.check()  # two are not three
    m.call_started()
    m.call_ended("cuda_error")
    assert unhealthy_reason(m) == "cuda_errors"


def test_a_success_resets_the_count_and_other_failures_do_not_count():
    m, _ = monitor(max_consecutive_cuda_errors=2)
    for outcome in ["cuda_error", "ok", "cuda_error", "oom", "error"]:
        m.call_started()
        m.call_ended(outcome)
    assert m.consecutive_cuda_errors == 1
    m.check()
    m.call_started()
    m.call_ended("cuda_error")
    assert unhealthy_reason(m) == "cuda_errors"


def test_the_verdict_is_kept_once_reached():
    # Ray replaces a replica only after several failed checks in a row.
    m, _ = monitor(max_consecutive_cuda_errors=1)
    m.call_started()
    m.call_ended("cuda_error")
    m.call_started()
    m.call_ended("ok")
    for _ in range(3):
        assert unhealthy_reason(m) == "cuda_errors"
    assert m.snapshot()["healthy"] is False


# --------------------------------------------------------------------------- memory


def test_first_idle_reading_is_the_baseline_and_busy_readings_are_ignored():
    m, _ = monitor(memory_tolerance_mib=100, memory_strikes=1)
    m.observe_memory(5000 * MIB, idle=False)  # a running call's tensors: no baseline
    assert m.baseline_bytes is None
    m.observe_memory(1000 * MIB, idle=True)
    assert m.baseline_bytes == 1000 * MIB
    m.observe_memory(9000 * MIB, idle=False)
    m.check()
    m.observe_memory(1100 * MIB, idle=True)  # within tolerance
    m.check()


def test_memory_that_stays_up_on_several_idle_checks_is_a_leak():
    m, _ = monitor(memory_tolerance_mib=100, memory_strikes=2)
    m.observe_memory(1000 * MIB, idle=True)
    m.observe_memory(1200 * MIB, idle=True)
    m.check()  # one strike
    m.observe_memory(1000 * MIB, idle=True)  # came back: strikes reset
    assert m.memory_strikes == 0
    m.observe_memory(1200 * MIB, idle=True)
    m.check()
    m.observe_memory(1201 * MIB, idle=True)
    with pytest.raises(ReplicaUnhealthy, match=r"201 MiB above its baseline of 1000 MiB"):
        m.check()


def test_no_memory_reading_no_verdict():
    m, _ = monitor(memory_strikes=1)
    for _ in range(3):
        m.observe_memory(None, idle=True)  # the CPU, or CUDA not initialised
    m.check()
    assert m.baseline_bytes is None and not m.memory_over(None)


# --------------------------------------------------------------------------- stalls


def test_a_call_without_progress_for_stall_s_is_stuck():
    m, clock = monitor(stall_s=30)
    m.call_started()
    for step in range(1, 5):
        clock.now += 20  # a slow step, but steps keep coming
        m.beat(step)
        m.check()
    clock.now += 31
    with pytest.raises(ReplicaUnhealthy, match=r"no progress for 31s after step 4 \(limit 30s\)"):
        m.check()
    assert m.snapshot()["running_call"]["step"] == 4


def test_idle_replica_never_stalls_and_per_stage_limits_apply():
    m, clock = monitor(stall_s=30, stall_s_by_stage={"denoiser": 100})
    clock.now += 1000
    m.check()  # no call running
    m.call_started()
    clock.now += 99
    m.check()
    clock.now += 2
    assert unhealthy_reason(m) == "stall"


def test_disabled_checks_report_but_never_fail():
    m, _ = monitor(enabled=False, max_consecutive_cuda_errors=1)
    m.call_started()
    m.call_ended("cuda_error")
    m.check()
    assert m.snapshot()["reason"].startswith("1 model calls in a row failed with a CUDA error")


# --------------------------------------------------------------------------- config


def test_health_options_describe_every_field_and_reach_ray():
    assert all(f.description for f in HealthOptions.model_fields.values())
    args = ServiceArgs(health={"check_period_s": 2, "check_timeout_s": 7})
    for stage in ("prompt_encoder", "denoiser", "video_encoder"):
        opts = args.deployment_options(stage)
        assert (opts["health_check_period_s"], opts["health_check_timeout_s"]) == (2, 7)
    # The gateway and cache have no check_health of their own: Ray's defaults.
    assert "health_check_period_s" not in args.deployment_options("gateway")


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"stall_s_by_stage": {"denoiser": 0}}, "must be positive"),
        ({"stall_s_by_stage": {"gateway": 5}}, "gateway"),
        ({"max_consecutive_cuda_errors": 0}, "greater than or equal to 1"),
        ({"memory_tolerance_mib": -1}, "greater than or equal to 0"),
        ({"check_period_s": 0}, "greater than 0"),
        ({"nonsense": 1}, "nonsense"),
    ],
)
def test_health_options_reject(options, fragment):
    with pytest.raises(ValidationError, match=fragment):
        HealthOptions(**options)


def test_faults_are_off_by_default_and_documented_as_test_only():
    assert not ServiceArgs().faults.active
    for field in FaultInjection.model_fields.values():
        assert field.description.startswith("Test-only")
    assert ServiceArgs.model_fields["faults"].description.startswith("Test-only")


@pytest.mark.parametrize(
    "config, fragment",
    [
        ({"oom_on_calls": {"denoiser": [2]}, "fail_on_calls": {"denoiser": [2]}}, "denoiser call 2 is in both"),
        ({"oom_on_calls": {"gateway": [1]}}, "gateway"),
        ({"fail_on_calls": {"denoiser": [0]}}, "greater than 0"),
        ({"step_delay_s": -1}, "greater than or equal to 0"),
    ],
)
def test_fault_config_rejects(config, fragment):
    with pytest.raises(ValidationError, match=fragment):
        FaultInjection(**config)


def test_the_same_call_number_may_fail_in_different_stages():
    config = FaultInjection(oom_on_calls={"denoiser": [1]}, fail_on_calls={"video_encoder": [1]})
    assert config.active


def test_injector_raises_the_real_error_types_at_the_planned_calls():
    config = FaultInjection(
        oom_on_calls={"video_encoder": [1]},
        cuda_error_on_calls={"video_encoder": [2]},
        fail_on_calls={"video_encoder": [3], "denoiser": [4]},
    )
    injector = FaultInjector(config, "video_encoder")
    with pytest.raises(torch.cuda.OutOfMemoryError) as oom:
        injector.before_call(1)
    with pytest.raises(RuntimeError) as cuda:
        injector.before_call(2)
    with pytest.raises(InjectedFault) as generic:
        injector.before_call(3)
    injector.before_call(4)  # the denoiser's plan is not ours
    assert [classify(e.value) for e in (oom, cuda, generic)] == ["oom", "cuda_error", "error"]
    assert "video_encoder model call 3" in str(generic.value)
    assert injector.injected == 3


@pytest.mark.parametrize("module", ["serve_app.health", "serve_app.faults"])
def test_health_and_faults_import_neither_ray_nor_torch(module):
    # The gateway imports config, which imports these: torch there once segfaulted it.
    import subprocess
    import sys

    code = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
    loaded = set(
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    )
    assert "torch" not in loaded and "ray" not in loaded
