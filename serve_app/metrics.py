"""The service's metrics, for Prometheus and the Grafana dashboard in configs/grafana/.

Defined through `ray.serve.metrics` (Ray exports them on each node's metrics
port, in Prometheus format, with the application, deployment and replica as
tags). The Ray dashboard does not chart them; docs/operations.md says what
does. Created lazily, once per process, so importing this module costs nothing
and code without Ray (unit tests) can run with metrics off.

| metric | type | tags | what |
| --- | --- | --- | --- |
| wan_jobs_total | counter | status, code | jobs ended: completed, or failed with its error code |
| wan_jobs_in_flight | gauge | | jobs this gateway replica is running now |
| wan_queue_wait_seconds | histogram | | accepted to first denoising step |
| wan_eta_ratio | histogram | | actual over estimated job time (1 is exact; ETA error) |
| wan_stage_seconds | histogram | stage | prompt_encode, denoise, decode, encode, total per job |
| wan_step_seconds | histogram | | one denoising step (both guidance passes) |
| wan_cache_{hits,misses}_total | counter | | result cache lookups (gateways) |
| wan_cache_{fills,evictions}_total | counter | | result cache writes (deployments/result_cache.py) |
| wan_embedding_cache_{hits,misses}_total | counter | | prompt-encoder embedding cache lookups, per text (prompt or negative prompt) |
| wan_gpu_memory_bytes | gauge | kind | torch allocated/reserved/peak (last call), NVML used/total, per model replica |
| wan_gpu_utilization_percent | gauge | | NVML utilisation of the replica's GPU |
| wan_gpu_oom_total | counter | stage, outcome | model calls that ran out of GPU memory: recovered (fallback ran) or failed |
| wan_cuda_errors_total | counter | stage | model calls that failed with a CUDA error (serve_app/health.py) |
| wan_replica_unhealthy_total | counter | stage, reason | failed health checks: cuda_errors, memory, stall |
| wan_admissions_total | counter | outcome, tier | creates by outcome (sync, async, cached, rejected) and tier (or error code) |
| wan_job_retries_total | counter | reason | runs started again after a stage's replica was lost |
| wan_load | gauge | | the load admission last saw (0-1: queue depth per replica, GPU use) |
"""

from __future__ import annotations

import logging
import threading
from functools import cache
from typing import Any

# Every metric the service exports (Prometheus adds Ray's `ray_` prefix).
NAMES = (
    "wan_jobs_total",
    "wan_jobs_in_flight",
    "wan_queue_wait_seconds",
    "wan_eta_ratio",
    "wan_stage_seconds",
    "wan_step_seconds",
    "wan_cache_hits_total",
    "wan_cache_misses_total",
    "wan_cache_fills_total",
    "wan_cache_evictions_total",
    "wan_embedding_cache_hits_total",
    "wan_embedding_cache_misses_total",
    "wan_gpu_memory_bytes",
    "wan_gpu_utilization_percent",
    "wan_admissions_total",
    "wan_load",
    "wan_job_retries_total",
    "wan_gpu_oom_total",
    "wan_cuda_errors_total",
    "wan_replica_unhealthy_total",
)

SECONDS_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600]
# Ray histograms take positive boundaries only: ETA error is a ratio.
RATIO_BUCKETS = [0.25, 0.5, 0.67, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2, 4, 10]

_lock = threading.Lock()
_enabled = False


def enable() -> None:
    """Turn metrics on in this process (deployments do, in their constructors)."""
    global _enabled
    _enabled = True


class _Off:
    def inc(self, *args, **kwargs) -> None: ...
    def set(self, *args, **kwargs) -> None: ...
    def observe(self, *args, **kwargs) -> None: ...


_OFF = _Off()
log = logging.getLogger("ray.serve")


def _metric(kind: str, name: str, description: str, tags: tuple[str, ...] = (), buckets: tuple = ()) -> Any:
    if not _enabled:
        return _OFF
    try:
        return _make(kind, name, description, tags, buckets)
    except Exception:
        log.exception("metric %s unavailable", name)
        return _OFF


@cache
def _make(kind: str, name: str, description: str, tags: tuple[str, ...], buckets: tuple) -> Any:
    from ray.serve import metrics

    with _lock:
        if kind == "counter":
            return metrics.Counter(name, description=description, tag_keys=tags or None)
        if kind == "gauge":
            return metrics.Gauge(name, description=description, tag_keys=tags or None)
        return metrics.Histogram(name, description=description, boundaries=list(buckets), tag_keys=tags or None)


def job_ended(status: str, code: str = "") -> None:
    _metric("counter", "wan_jobs_total", "Jobs ended, by status and error code.", ("status", "code")).inc(
        1, tags={"status": status, "code": code or "none"}
    )


def jobs_in_flight(n: int) -> None:
    _metric("gauge", "wan_jobs_in_flight", "Jobs this gateway replica runs now.").set(n)


def queue_wait(seconds: float) -> None:
    _metric(
        "histogram", "wan_queue_wait_seconds", "Accepted to first denoising step.", (), tuple(SECONDS_BUCKETS)
    ).observe(seconds)


def eta_error(actual_s: float, estimated_s: float) -> None:
    if estimated_s > 0:
        _metric(
            "histogram", "wan_eta_ratio", "Actual over estimated job time (1 is exact).", (), tuple(RATIO_BUCKETS)
        ).observe(actual_s / estimated_s)


def stage_time(stage: str, seconds: float) -> None:
    _metric("histogram", "wan_stage_seconds", "Per-job stage time.", ("stage",), tuple(SECONDS_BUCKETS)).observe(
        seconds, tags={"stage": stage}
    )


def step_time(seconds: float) -> None:
    _metric("histogram", "wan_step_seconds", "One denoising step.", (), tuple(SECONDS_BUCKETS)).observe(seconds)


def cache_lookup(hit: bool) -> None:
    name = "wan_cache_hits_total" if hit else "wan_cache_misses_total"
    _metric("counter", name, f"Result cache {'hits' if hit else 'misses'}.").inc()


def embedding_cache_lookup(hit: bool) -> None:
    """One text looked up in a prompt encoder's embedding cache (a miss runs the text encoder)."""
    name = "wan_embedding_cache_hits_total" if hit else "wan_embedding_cache_misses_total"
    _metric("counter", name, f"Prompt embedding cache {'hits' if hit else 'misses'} (per text).").inc()


def gpu_memory(kind: str, value: float) -> None:
    _metric("gauge", "wan_gpu_memory_bytes", "GPU memory of a model replica.", ("kind",)).set(
        value, tags={"kind": kind}
    )


def gpu_utilization(percent: float) -> None:
    _metric("gauge", "wan_gpu_utilization_percent", "NVML utilisation of the replica's GPU.").set(percent)


def gpu_oom(stage: str, outcome: str) -> None:
    _metric(
        "counter", "wan_gpu_oom_total", "Model calls out of GPU memory: recovered or failed.", ("stage", "outcome")
    ).inc(1, tags={"stage": stage, "outcome": outcome})


def cuda_error(stage: str) -> None:
    _metric("counter", "wan_cuda_errors_total", "Model calls failed with a CUDA error.", ("stage",)).inc(
        1, tags={"stage": stage}
    )


def replica_unhealthy(stage: str, reason: str) -> None:
    _metric(
        "counter", "wan_replica_unhealthy_total", "Failed health checks of model replicas.", ("stage", "reason")
    ).inc(1, tags={"stage": stage, "reason": reason})


@cache
def _nvml_handle(torch_index: int) -> Any:
    """The NVML handle of torch's device `torch_index`, found by UUID.

    Torch numbers cards after CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER;
    NVML numbers all cards in PCI order, so indexes do not carry over. The UUID
    does. Cached: the mapping cannot change within a process.
    """
    import pynvml
    import torch

    pynvml.nvmlInit()
    uuid = str(torch.cuda.get_device_properties(torch_index).uuid)
    candidates = [uuid] if uuid.startswith(("GPU-", "MIG-")) else [f"GPU-{uuid}", f"MIG-{uuid}"]
    for candidate in candidates:
        try:
            return pynvml.nvmlDeviceGetHandleByUUID(candidate)
        except pynvml.NVMLError:
            continue
    raise LookupError(f"no NVML device with UUID {uuid}")


def report_gpu(device: str, peak_bytes: int | None = None) -> None:
    """Torch allocator and NVML figures of this replica's GPU (no-op on the CPU).

    `peak_bytes`: the highest allocation of the last model call (the model
    thread reads and resets torch's peak counter around each call).
    """
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_initialized():
        return
    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    gpu_memory("allocated", torch.cuda.memory_allocated(index))
    gpu_memory("reserved", torch.cuda.memory_reserved(index))
    if peak_bytes is not None:
        gpu_memory("peak", peak_bytes)
    try:
        import pynvml

        handle = _nvml_handle(index)
        info = pynvml.nvmlDeviceGetMemoryInfo(handle)
        gpu_memory("nvml_used", info.used)
        gpu_memory("nvml_total", info.total)
        gpu_utilization(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    except Exception:  # noqa: BLE001 - telemetry never breaks serving (no NVML, MIG without counters)
        pass


def admitted(outcome: str, tier: str) -> None:
    """One create: its outcome (sync, async, cached, rejected) and tier (or, rejected, the error code)."""
    _metric(
        "counter", "wan_admissions_total", "Creates by admission outcome and quality tier.", ("outcome", "tier")
    ).inc(1, tags={"outcome": outcome, "tier": tier})


def load(value: float) -> None:
    _metric("gauge", "wan_load", "Load admission last saw (0-1).").set(value)


def job_retried(reason: str) -> None:
    _metric(
        "counter", "wan_job_retries_total", "Job runs started again after a stage replica was lost.", ("reason",)
    ).inc(1, tags={"reason": reason})
