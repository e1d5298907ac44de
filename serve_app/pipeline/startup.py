"""Where a replica's start-up time goes: named phases, shown by /healthz.

A restarted replica's time to ready is what autoscaling and replacement
cost; `bench/gpu_e2e.py` records these phases so a slow start says which
part was slow (process start and imports, CUDA context, weights, warm-up).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


class StartupPhases:
    """Seconds per named phase, in the order they ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        process_age = _process_age_s()
        if process_age is not None:
            # Worker process start and module imports, before the replica's constructor ran.
            self.seconds["process_to_init"] = round(process_age, 3)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - started, 3)


def compile_cache_counts() -> dict[str, int]:
    """Inductor's FX graph cache and AOTAutograd's cache hits and misses in this process:
    a restart with the caches on disk should show hits, not misses."""
    if "torch" not in sys.modules:
        return {}  # nothing compiled, and a process without torch is not made to import it
    from torch._dynamo.utils import counters

    keys = ("fxgraph_cache_hit", "fxgraph_cache_miss", "autograd_cache_hit", "autograd_cache_miss")
    merged = {**counters["inductor"], **counters["aot_autograd"]}
    return {key: int(merged.get(key, 0)) for key in keys}


def _process_age_s() -> float | None:
    try:
        import psutil  # a Ray dependency; absent only outside Serve
    except ImportError:
        return None
    return time.time() - psutil.Process(os.getpid()).create_time()
