"""What every model-holding stage shares: its config, its slice of the pipeline,
and a `ModelWorker` (serve_app/model_worker) that runs the model calls.

A thin Ray Serve shell: the model thread, out-of-memory recovery, memory
statistics, warm-up and health verdict are the worker's; this class loads
the model, builds the worker and answers Ray's hooks (`check_health`) and
the gateway's `/healthz` probe (`describe`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from serve_app import metrics
from serve_app.deployment_view import start_args
from serve_app.gpu_share import cap_gpu_memory
from serve_app.live import apply_user_config
from serve_app.model_worker import ModelWorker
from serve_app.model_worker.warmup import WarmUpStep
from serve_app.pipeline.loading import Stage, load_pipeline, resolve_device
from serve_app.pipeline.optimize import use_compile_cache
from serve_app.pipeline.startup import StartupPhases

T = TypeVar("T")
log = logging.getLogger("ray.serve")


class ModelStage:
    """Loads its slice of the pipeline once; model work runs on its worker's thread.

    Subclasses name their `stage` and add the remote methods that do its work
    (through `run_model`).
    """

    stage: Stage

    def __init__(self, args: dict[str, Any]) -> None:
        metrics.enable()
        # First: a bad user_config or a scaling option set in two places fails here, not
        # after a minute of loading (serve_app/deployment_view.py).
        start = start_args(args, self.stage)
        self.base_args, self.args = start.base, start.args
        self.profile = self.args.model_profile()
        started = time.perf_counter()
        startup = StartupPhases()
        cache = self.args.compile_cache_path
        with startup.phase("compile_cache"):
            self.compile_cache = use_compile_cache(cache) if cache is not None else {}
        # The cap goes on before the weights load, so they count against it too.
        with startup.phase("gpu_init"):
            # Its GPU share as Ray runs it (a `deployments:` entry may set it instead of args).
            self.memory_fraction = cap_gpu_memory(start.view.memory_fraction, resolve_device(self.profile))
        self.pipe = load_pipeline(self.profile, self.args.data_path, self.stage, startup)
        self.device = str(self.pipe._execution_device)
        self.load_s = time.perf_counter() - started
        # Named with an underscore: not one of the deployment's remote methods.
        self._worker = ModelWorker(self.stage, self.pipe, self.device, self.args.health, self.args.faults, startup)
        log.info("%s loaded %s on %s in %.2fs", self.stage, self.profile.identity, self.device, self.load_s)

    # --- for the stages' own methods (see ModelWorker) ------------------------------

    async def run_model(self, fn: Callable[..., T], *args: Any, fallback: Callable[..., T] | None = None) -> T:
        """`fn(*args)` on the model thread; `fallback(*args)` once after an out-of-memory (ModelWorker.run)."""
        return await self._worker.run(fn, *args, fallback=fallback)

    def step_done(self, step: int, total: int) -> None:
        """The denoising loop's per-step hook (model thread): progress, then any injected step delay or step gate."""
        self._worker.step_done(step, total)

    def warm_up(self, steps: list[WarmUpStep], before_ready: int) -> None:
        """Run named warm-up steps: the first `before_ready` now (the replica is not ready, so
        gets no request, until they ran), the rest afterwards on the model thread, one at a time."""
        self._worker.warm_up(steps, before_ready)

    def presets_before_ready(self) -> int:
        """How many of speed.warmup_presets must be warm before the replica is ready."""
        presets = self.profile.speed.warmup_presets
        return min(1, len(presets)) if self.profile.speed.warmup_in_background else len(presets)

    def wait_warm(self, timeout_s: float) -> bool:
        """Block until background warm-up ended (benchmarks measure a warm replica)."""
        return self._worker.wait_warm(timeout_s)

    def close(self, wait: bool = True) -> None:
        """Stop the model thread, after what is queued on it if `wait`; later model calls
        raise RuntimeError. For stages built in-process without Ray (benchmarks, tests); a
        replica never needs it, its process ends with it. Calling it twice is harmless."""
        self._worker.shutdown(wait=wait)

    # --- Ray Serve hooks --------------------------------------------------------------

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Ray Serve calls this after the constructor, and on every deploy that changes only this
        deployment's user_config: its live settings (health thresholds; the denoiser's progress
        interval) change, the loaded model stays (serve_app/live.py). A bad one raises, and the
        deploy fails with its message. Calls already running finish as they started."""
        self.args = apply_user_config(self.base_args, self.stage, user_config)
        self._worker.health.options = self.args.health
        log.info("%s settings applied from its user_config: %s", self.stage, ", ".join(sorted(user_config or {})))

    async def check_health(self) -> None:
        """Ray Serve's periodic health check: raising gets this replica replaced.

        Runs on the replica's event loop (the model thread may be busy); the
        worker only reads counters and allocator statistics, never waits on the GPU.
        """
        self._worker.check_health()

    async def describe(self) -> dict[str, Any]:
        """What this replica runs: shown by /healthz."""
        runtime = self._worker.describe()
        # Key order as /healthz has always shown it.
        return {
            "model": self.profile.identity,
            "device": self.device,
            "dtype": self.profile.dtype if self.stage != "video_encoder" else self.profile.vae_dtype,
            "attention_backend": self.profile.attention_backend,
            "load_s": round(self.load_s, 3),
            "startup_phases": runtime["startup_phases"],
            "gpu_memory_fraction": self.memory_fraction,
            "health": runtime["health"],
            "oom": runtime["oom"],
            "compile_cache": self.compile_cache,
            "warmup_s": runtime["warmup_s"],
            "compile_cache_hits": runtime["compile_cache_hits"],
            "warmup_pending": runtime["warmup_pending"],
        }
