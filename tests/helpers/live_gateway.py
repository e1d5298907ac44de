"""The in-process gateway (tests/helpers/service.py) on a real loopback port, for clients in other
processes: `wan-video` in a pseudo-terminal (tests/unit/test_cli_terminal.py), an installed wheel.

uvicorn serves `gateway.app` from a thread, on a socket bound to port 0 before the thread starts,
so the URL is known at once. `SteppedGenerator` is the model: a job takes one denoising step
each time the test calls `step()` (or all at once with `free_running=True`), so a test sees the
progress bar at a step of its choosing, without sleeps.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path

import uvicorn

from serve_app.api.gateway_app import GatewayApp
from tests.helpers.fakes import FakeGenerator
from tests.helpers.service import gateway_over

# A step nobody allows within this long fails the job (a test that forgot to step) rather than hanging.
STEP_WAIT_S = 60.0


class SteppedGenerator(FakeGenerator):
    """FakeGenerator's mp4, after `num_inference_steps` progress reports, each one let through by `step()`."""

    def __init__(self, free_running: bool = False) -> None:
        super().__init__()
        self.free_running = free_running
        self._steps = threading.Semaphore(0)
        self.started = threading.Event()  # a job reached its first step

    def step(self, n: int = 1) -> None:
        for _ in range(n):
            self._steps.release()

    async def generate(self, params, deadline, on_progress=None, job_id=None):
        self.started.set()
        for step in range(1, params.num_inference_steps + 1):
            if not self.free_running:
                allowed = await asyncio.to_thread(self._steps.acquire, True, STEP_WAIT_S)
                if not allowed:
                    raise TimeoutError(f"step {step} was never allowed by the test")
            if on_progress is not None:
                on_progress(_progress(step, params.num_inference_steps))
        return await super().generate(params, deadline, None, job_id)


def _progress(step: int, total: int):
    from serve_app.messages import StepProgress

    return StepProgress(step=step, total_steps=total)


class LiveGateway:
    """`gateway_over(data_dir, generator)` served over HTTP on 127.0.0.1; a context manager."""

    def __init__(self, data_dir: Path, generator=None) -> None:
        self.generator = generator if generator is not None else SteppedGenerator()
        self.gateway: GatewayApp = gateway_over(data_dir, self.generator)
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        config = uvicorn.Config(self.gateway.app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True)

    def __enter__(self) -> LiveGateway:
        self._thread.start()
        give_up = time.monotonic() + 30
        # uvicorn says it is listening through this flag only.
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > give_up:
                raise RuntimeError("the test gateway did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        if isinstance(self.generator, SteppedGenerator):
            self.generator.step(1000)  # jobs left waiting for a step end now
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self._socket.close()
        self.gateway.stores.jobs.close()
