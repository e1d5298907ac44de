"""A step gate: integration tests hold denoising jobs mid-flight and let them go (Ray's SignalActor pattern).

An app deployed with `faults.step_gate: NAME` makes its denoiser call
`StepGate.wait(stage, step, total)` on the actor NAME after every denoising
step, and go on when the call returns (serve_app/faults.py). The gate starts
open: jobs run at full speed. A test that needs a job held (to queue behind
it, kill its replica, restart Redis under it) closes the gate, waits until
`held()` shows the job parked after its step, does its deed and opens the
gate again, or lets steps through one at a time with `release`.

    gate = Gate("my-gate")                   # before the app that names it deploys
    with gate.closed():                      # opened again on the way out, whatever happens
        submit(...)
        (job,) = gate.wait_held(1)           # {"stage": "denoiser", "step": 1, "total": 8}
        kill_the_replica()

Waits from a replica that died while held stay in `held()` until the gate
opens (or `release` spends a permit on them): open it after a kill.

A held job is a slow job to the service: its deadline runs on, and the
gateways' time estimates (admission, sync or async, ETAs) learn its
denoising time, hold included. Hold briefly, or give a long hold a deadline
and a shape that other tests' timing does not lean on.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import ray

from serve_app.settings.faults import STEP_GATE_NAMESPACE

POLL_INTERVAL_S = 0.05


@ray.remote(num_cpus=0)
class StepGate:
    """The actor. Open: every wait returns at once. Closed: a wait returns when the gate
    opens, or takes one of the permits `release` hands out."""

    def __init__(self) -> None:
        self._open = True
        self._permits = 0
        self._from_step = 1  # closed, steps before this one still pass
        self._changed = asyncio.Condition()
        self._held: dict[int, dict[str, Any]] = {}
        self._tokens = itertools.count()
        self._passed = 0

    async def wait(self, stage: str, step: int, total: int) -> None:
        token = next(self._tokens)
        self._held[token] = {"stage": stage, "step": step, "total": total}
        try:
            async with self._changed:
                await self._changed.wait_for(lambda: self._open or step < self._from_step or self._permits > 0)
                if not self._open and step >= self._from_step:
                    self._permits -= 1
            self._passed += 1
        finally:
            self._held.pop(token, None)

    async def close(self, from_step: int = 1) -> None:
        async with self._changed:
            self._open = False
            self._permits = 0
            self._from_step = from_step

    async def open(self) -> None:
        async with self._changed:
            self._open = True
            self._permits = 0
            self._changed.notify_all()

    async def release(self, steps: int) -> None:
        async with self._changed:
            self._permits += steps
            self._changed.notify_all()

    async def held(self) -> list[dict[str, Any]]:
        """The waits parked now, oldest first."""
        return [self._held[token] for token in sorted(self._held)]

    async def passed(self) -> int:
        return self._passed


class Gate:
    """The test's side of a `StepGate` named `name` (created, or found if it exists)."""

    def __init__(self, name: str, **actor_options: Any) -> None:
        self.name = name
        self.actor = StepGate.options(
            name=name, namespace=STEP_GATE_NAMESPACE, get_if_exists=True, **actor_options
        ).remote()
        ray.get(self.actor.held.remote())  # up before any replica looks it up

    def close(self, from_step: int = 1) -> None:
        """From now on each denoising step from `from_step` on waits after it finishes (earlier
        steps pass: every job comes to rest at `from_step`, whichever got there first)."""
        ray.get(self.actor.close.remote(from_step))

    def open(self) -> None:
        """Let every held step go, and every later one through."""
        ray.get(self.actor.open.remote())

    def release(self, steps: int = 1) -> None:
        """Let `steps` more steps through a closed gate (a held one takes a permit at once)."""
        ray.get(self.actor.release.remote(steps))

    def held(self) -> list[dict[str, Any]]:
        return ray.get(self.actor.held.remote())

    def passed(self) -> int:
        """Steps that have gone through the gate since it was created."""
        return ray.get(self.actor.passed.remote())

    def wait_held(self, count: int = 1, step: int | None = None, timeout_s: float = 60) -> list[dict[str, Any]]:
        """Wait until at least `count` steps are held (each at `step`, if given); what is held then."""
        give_up = time.monotonic() + timeout_s
        while True:
            held = self.held()
            if len(held) >= count and (step is None or all(h["step"] == step for h in held)):
                return held
            assert time.monotonic() < give_up, (
                f"timed out waiting for {count} step(s) held{'' if step is None else f' at step {step}'} "
                f"at gate {self.name!r}; held: {held}"
            )
            time.sleep(POLL_INTERVAL_S)

    @contextmanager
    def closed(self, from_step: int = 1) -> Iterator[Gate]:
        """The gate closed for the `with` block, and open again after it (also when the block fails)."""
        self.close(from_step)
        try:
            yield self
        finally:
            self.open()
