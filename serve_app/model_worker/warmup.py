"""Warm-up: a replica's first-run costs (compiles, cuDNN's algorithm search,
allocator growth) paid before requests pay them.

The first steps run before the replica reports ready; the rest run
afterwards on the model thread, one at a time. Each later step is queued
only when the one before it ended, so a request that arrives meanwhile
waits for one step at most, never for the whole list. Restarts are then
ready once the first shape is warm (speed.warmup_in_background).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

log = logging.getLogger("ray.serve")

WarmUpStep = tuple[str, Callable[[], Any]]  # (name shown in /healthz, what to run)


class WarmUp:
    """Runs named warm-up steps and records how long each took (`seconds`) and which are still to run (`pending`).

    `submit` queues a function on the model thread; `after_failure` runs on
    that thread after a background step raised (to let go of its memory).
    """

    def __init__(
        self, stage: str, submit: Callable[[Callable[[], None]], Future], after_failure: Callable[[], None]
    ) -> None:
        self.stage = stage
        self._submit = submit
        self._after_failure = after_failure
        self.seconds: dict[str, float] = {}
        self.pending: list[str] = []
        self._done = threading.Event()
        self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def run(self, steps: list[WarmUpStep], before_ready: int) -> None:
        """The first `before_ready` steps now, in this thread; the rest in the background."""
        self.pending = [name for name, _ in steps[before_ready:]]
        self._done.clear()
        for name, fn in steps[:before_ready]:
            self._timed(name, fn)
        self._queue_next(steps[before_ready:])

    def wait(self, timeout_s: float) -> bool:
        """Block until the background steps ended; False if `timeout_s` passed first."""
        return self._done.wait(timeout_s)

    def _timed(self, name: str, fn: Callable[[], Any]) -> None:
        started = time.perf_counter()
        fn()
        self.seconds[name] = round(time.perf_counter() - started, 3)
        log.info("%s warmed %s in %.2fs", self.stage, name, self.seconds[name])

    def _queue_next(self, rest: list[WarmUpStep]) -> None:
        if not rest:
            self._done.set()
            return
        name, fn = rest[0]

        def step() -> None:
            try:
                self._timed(name, fn)
            except Exception:
                log.exception("%s: background warm-up of %s failed", self.stage, name)
                self._after_failure()
            finally:
                self.pending.remove(name)
                self._queue_next(rest[1:])

        self._submit(step)
