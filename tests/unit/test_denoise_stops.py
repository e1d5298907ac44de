"""The denoising loop stops within one step of its deadline or a cancel.

A fake clock that advances one tick per transformer forward makes "the
deadline passes during step k" exact, with no sleeps.
"""

from __future__ import annotations

import threading

import pytest

from serve_app.deadline import Deadline, StepGuard
from serve_app.errors import DeadlineExceeded, RequestCancelled
from serve_app.params import GenerationParams
from serve_app.pipeline import stages
from serve_app.pipeline.loading import load_pipeline

STEPS = 12


@pytest.fixture(scope="module")
def denoiser(tiny_profile, data_dir):
    return load_pipeline(tiny_profile, data_dir, "denoiser")


@pytest.fixture(scope="module")
def embeddings(tiny_profile, data_dir):
    encoder = load_pipeline(tiny_profile, data_dir, "prompt_encoder")
    return stages.encode_prompts(encoder, "a boat", "", 1.0, tiny_profile.max_sequence_length)


PARAMS = GenerationParams(
    prompt="a boat",
    negative_prompt="",
    width=64,
    height=64,
    num_frames=5,
    num_inference_steps=STEPS,
    guidance_scale=1.0,
    fps=8,
    seed=0,
    preset="test",
)


class ForwardClock:
    """Time is the number of DiT forwards so far: step k ends at time k."""

    def __init__(self) -> None:
        self.forwards = 0

    def tick(self, *_):
        self.forwards += 1

    def __call__(self) -> float:
        return float(self.forwards)


@pytest.fixture
def clock(denoiser):
    clock = ForwardClock()
    hook = denoiser.transformer.register_forward_hook(clock.tick)
    yield clock
    hook.remove()


@pytest.mark.parametrize("deadline_step", [1, 5, STEPS - 1])
def test_deadline_mid_loop_stops_at_that_step(denoiser, embeddings, clock, deadline_step):
    # Expires during step `deadline_step` (time deadline_step - 0.5).
    guard = StepGuard(Deadline(deadline_step - 0.5), STEPS, clock=clock)
    with pytest.raises(DeadlineExceeded) as info:
        stages.denoise(denoiser, PARAMS, embeddings, guard)
    assert guard.steps_done == deadline_step
    assert clock.forwards == deadline_step, "a step after the deadline was computed"
    assert info.value.details["step"] == deadline_step
    assert info.value.details["total_steps"] == STEPS


def test_expired_before_start_runs_no_step(denoiser, embeddings, clock):
    guard = StepGuard(Deadline(-1.0), STEPS, clock=clock)
    with pytest.raises(DeadlineExceeded):
        stages.denoise(denoiser, PARAMS, embeddings, guard)
    assert clock.forwards == 0


def test_cancel_from_another_thread_stops_after_current_step(denoiser, embeddings):
    guard = StepGuard(Deadline.after(600), STEPS)

    def on_step(step: int, total: int) -> None:
        if step == 3:
            # What the replica's event loop does when Ray cancels the request:
            # set the flag from another thread. Joined, so the order is fixed.
            canceller = threading.Thread(target=guard.cancel)
            canceller.start()
            canceller.join()

    with pytest.raises(RequestCancelled) as info:
        stages.denoise(denoiser, PARAMS, embeddings, guard, on_step=on_step)
    assert guard.steps_done == 3
    assert info.value.details["step"] == 3


def test_full_run_reports_every_step_in_order(denoiser, embeddings):
    seen: list[tuple[int, int]] = []
    guard = StepGuard(Deadline.after(600), STEPS)
    latents = stages.denoise(denoiser, PARAMS, embeddings, guard, on_step=lambda s, t: seen.append((s, t)))
    assert seen == [(k, STEPS) for k in range(1, STEPS + 1)]
    assert tuple(latents.shape) == (1, 48, 2, 4, 4)
