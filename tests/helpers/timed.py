"""A call in a thread, timed: for tests where one request is stuck (on a blackholed Redis,
a held S3 request) while another must still be answered.

`start(fn)` runs `fn()` in a daemon thread and returns its `Timed`; `finish(timeout_s)`
waits for it (failing the test, not hanging it, if it never ends) and hands it back
with `value` or `error` and `elapsed_s`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


class Timed:
    def __init__(self, fn: Callable[[], Any]) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.elapsed_s: float | None = None
        self._fn = fn
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        start = time.monotonic()
        try:
            self.value = self._fn()
        except Exception as exc:  # noqa: BLE001 -- handed to the test, which checks it
            self.error = exc
        finally:
            self.elapsed_s = time.monotonic() - start

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def finish(self, timeout_s: float, what: str) -> Timed:
        self._thread.join(timeout=timeout_s)
        assert not self._thread.is_alive(), f"{what}: still running after {timeout_s} s"
        return self


def start(fn: Callable[[], Any]) -> Timed:
    timed = Timed(fn)
    timed._thread.start()
    return timed
