"""Restoring a denoising checkpoint sets only the scheduler state it saved (issue 15 item 13).

The file is data read from (possibly shared) disk; a crafted one must not set
arbitrary attributes on the live scheduler. Jobs here are stand-ins with the
attributes `LoopCheckpoints.restore` touches; test_optimized_path.py resumes
real loops."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from serve_app.pipeline.checkpoint import FORMAT, SCHEDULER_STATE, LoopCheckpoints  # noqa: E402

REQUEST = "request-a"


def _job():
    def set_timesteps(n):  # a method a crafted file would like to replace
        return n

    scheduler = SimpleNamespace(set_timesteps=set_timesteps, model_outputs=[None, None], _step_index=None)
    return SimpleNamespace(
        timesteps=list(range(6)),
        latents=torch.zeros(1, 4, 2, 8, 8),
        scheduler=scheduler,
        step=0,
        guard=SimpleNamespace(steps_done=0),
    )


def _write(path, **changes):
    state = {
        "format": FORMAT,
        "request": REQUEST,
        "step": 3,
        "latents": torch.ones(1, 4, 2, 8, 8),
        "scheduler": {"model_outputs": [torch.ones(2), torch.ones(2)], "_step_index": 3},
    }
    state.update(changes)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path.write_bytes(buffer.getvalue())


def test_a_checkpoint_of_scheduler_state_is_restored(tmp_path):
    _write(tmp_path / "video_a.pt")
    job = _job()
    assert LoopCheckpoints(tmp_path, "video_a", REQUEST, every_s=60).restore(job) == 3
    assert (job.step, job.guard.steps_done, job.scheduler._step_index) == (3, 3, 3)
    assert torch.equal(job.latents, torch.ones(1, 4, 2, 8, 8))


@pytest.mark.parametrize("name", ["set_timesteps", "config", "__class__"])
def test_a_checkpoint_naming_another_attribute_is_refused_whole(tmp_path, name, caplog):
    assert name not in SCHEDULER_STATE
    _write(tmp_path / "video_a.pt", scheduler={"_step_index": 3, name: 7})
    job = _job()
    original = job.scheduler.set_timesteps
    assert LoopCheckpoints(tmp_path, "video_a", REQUEST, every_s=60).restore(job) == 0
    # Nothing of it was applied: not the foreign name, not the allowed field beside it.
    assert job.scheduler.set_timesteps is original and job.scheduler._step_index is None
    assert not hasattr(job.scheduler, "config") and type(job.scheduler) is SimpleNamespace
    assert job.step == 0 and torch.equal(job.latents, torch.zeros(1, 4, 2, 8, 8))
    assert f"'{name}'" in caplog.text and "not scheduler state" in caplog.text


@pytest.mark.parametrize(
    "changes",
    [
        {"latents": torch.ones(1, 4, 2, 16, 16)},  # another shape: would fail mid-loop
        {"latents": [1.0, 2.0]},
        {"scheduler": [("_step_index", 3)]},
        {"step": "3"},
    ],
)
def test_a_checkpoint_of_the_wrong_shape_is_refused(tmp_path, changes):
    _write(tmp_path / "video_a.pt", **changes)
    job = _job()
    assert LoopCheckpoints(tmp_path, "video_a", REQUEST, every_s=60).restore(job) == 0
    assert job.step == 0 and job.scheduler._step_index is None


def test_a_file_that_is_no_mapping_is_ignored(tmp_path):
    buffer = io.BytesIO()
    torch.save([1, 2, 3], buffer)
    (tmp_path / "video_a.pt").write_bytes(buffer.getvalue())
    assert LoopCheckpoints(tmp_path, "video_a", REQUEST, every_s=60).restore(_job()) == 0
