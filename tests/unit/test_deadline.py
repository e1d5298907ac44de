"""Deadlines and the per-step guard, on a fake clock (no sleeps)."""

from __future__ import annotations

import pickle
import threading

import pytest

from serve_app.deadline import Deadline, StepGuard
from serve_app.errors import DeadlineExceeded, RequestCancelled


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_after_remaining_expired():
    clock = FakeClock()
    deadline = Deadline.after(10, clock)
    assert deadline.at == 1010.0
    assert deadline.remaining(clock) == 10
    assert not deadline.expired(clock)
    clock.now = 1009.5
    assert deadline.remaining(clock) == 0.5 and not deadline.expired(clock)
    # Expiry is inclusive: at the deadline there is no time left to start work.
    clock.now = 1010.0
    assert deadline.expired(clock)
    clock.now = 1012.0
    assert deadline.remaining(clock) == -2


def test_check_passes_before_and_raises_after():
    clock = FakeClock()
    deadline = Deadline.after(5, clock)
    deadline.check("decode", clock)
    clock.now += 6.25
    with pytest.raises(DeadlineExceeded) as info:
        deadline.check("decode", clock)
    err = info.value
    assert err.status_code == 504 and err.code == "deadline_exceeded"
    assert err.details == {"stage": "decode"}
    assert "1.250s ago" in err.message and "'decode'" in err.message


def test_deadline_travels_as_an_absolute_time():
    deadline = Deadline.after(3, FakeClock(50.0))
    assert pickle.loads(pickle.dumps(deadline)) == Deadline(53.0)


def test_guard_runs_until_deadline():
    clock = FakeClock()
    guard = StepGuard(Deadline.after(2, clock), total_steps=8, clock=clock)
    assert not guard.should_stop()
    clock.now += 1.99
    assert not guard.should_stop()
    clock.now += 0.01
    assert guard.should_stop() and not guard.cancelled


def test_guard_stops_on_cancel_from_another_thread():
    clock = FakeClock()
    guard = StepGuard(Deadline.after(60, clock), total_steps=8, clock=clock)
    worker = threading.Thread(target=guard.cancel)
    worker.start()
    worker.join()
    assert guard.cancelled and guard.should_stop()


def test_raise_stop_on_cancel():
    clock = FakeClock()
    guard = StepGuard(Deadline.after(60, clock), total_steps=8, clock=clock)
    guard.steps_done = 3
    guard.cancel()
    with pytest.raises(RequestCancelled) as info:
        guard.raise_stop()
    assert info.value.details == {"step": 3, "total_steps": 8}
    assert "step 3 of 8" in info.value.message


def test_cancel_wins_over_expiry():
    # Both happened; the client is gone, so "cancelled" is the truthful reason.
    clock = FakeClock()
    guard = StepGuard(Deadline.after(1, clock), total_steps=4, clock=clock)
    clock.now += 5
    guard.cancel()
    with pytest.raises(RequestCancelled):
        guard.raise_stop()


def test_raise_stop_on_expiry():
    clock = FakeClock()
    guard = StepGuard(Deadline.after(1, clock), total_steps=20, clock=clock)
    guard.steps_done = 7
    clock.now += 1
    assert guard.should_stop()
    with pytest.raises(DeadlineExceeded) as info:
        guard.raise_stop()
    assert info.value.details == {"stage": "denoise", "step": 7, "total_steps": 20}
    assert "step 7 of 20" in info.value.message
