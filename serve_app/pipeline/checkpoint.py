"""Denoising-loop checkpoints: a job whose denoiser replica dies resumes at its last saved step.

Every `every_s` seconds of loop time the job's state goes to one file per job
(`<dir>/<job id>.pt`): the latents, the step, and the UniPC scheduler's
multistep memory (the last model outputs and timesteps it extrapolates from).
That is all the loop carries from step to step, so a job resumed from step k
gives the same latents as one never stopped (tests/unit/test_optimized_path.py).
The file names the request it belongs to (a fingerprint of the parameters,
the fast knobs and the model): a rerun with other parameters, such as the
lower-tier rerun after an out-of-memory error, ignores it and starts at step 0.

Written with `torch.save` and read with `weights_only=True`: tensors, lists,
numbers and strings only, never pickled code. Only the denoiser touches the
folder; across nodes it must be shared storage for a resume to find the file
(otherwise the rerun starts at step 0, as without checkpoints).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("ray.serve")

# UniPCMultistepScheduler's state that changes as it steps (set_timesteps
# rebuilds the rest from the step count, as start_job does for every job).
SCHEDULER_STATE = (
    "model_outputs",
    "timestep_list",
    "lower_order_nums",
    "last_sample",
    "this_order",
    "_step_index",
    "_begin_index",
)
_SAFE_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
FORMAT = 1


def fingerprint(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def _to(value: Any, device) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, list):
        return [_to(v, device) for v in value]
    return value


def _refusal(state: dict, job) -> str:
    """Why a checkpoint of this request may not be put into `job` ('' if it may).

    The file is data from disk (shared storage, across nodes), and restoring it sets
    attributes on the live scheduler: only the names `SCHEDULER_STATE` lists, or one
    file could replace any attribute or method of the scheduler. Latents of another
    shape would fail mid-loop instead of here."""
    import torch

    scheduler = state.get("scheduler")
    if not isinstance(scheduler, dict):
        return "no scheduler state"
    unknown = sorted(str(name) for name in scheduler if name not in SCHEDULER_STATE)
    if unknown:
        return f"scheduler fields {unknown} are not scheduler state; allowed: {list(SCHEDULER_STATE)}"
    if not isinstance(state.get("step"), int):
        return "no step"
    latents = state.get("latents")
    if not isinstance(latents, torch.Tensor) or latents.shape != job.latents.shape:
        shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
        return f"latents {shape} do not match the job's {tuple(job.latents.shape)}"
    return ""


class LoopCheckpoints:
    """One job's checkpoint file: saved on a cadence, restored once, removed when the loop finishes."""

    def __init__(self, directory: Path, key: str, request_fingerprint: str, every_s: float) -> None:
        if not _SAFE_KEY.match(key):
            raise ValueError(f"checkpoint key {key!r} is not a safe file name")
        self.path = Path(directory) / f"{key}.pt"
        self.request = request_fingerprint
        self.every_s = every_s
        self.saved = 0  # checkpoints written by this run
        self.resumed_from = 0  # the step this run started at
        self._last = time.monotonic()

    def restore(self, job) -> int:
        """Put the saved state into `job` (a batching.DenoiseJob at step 0) if it is this
        request's; the step it now starts at (0: nothing usable was there)."""
        import torch

        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return 0
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception:
            log.warning("unreadable denoising checkpoint %s; starting at step 0", self.path, exc_info=True)
            return 0
        if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("request") != self.request:
            return 0  # another request's state (new parameters, another tier): not ours
        refused = _refusal(state, job)
        if refused:
            log.warning("denoising checkpoint %s refused (%s); starting at step 0", self.path, refused)
            return 0
        step = int(state["step"])
        if not 0 < step < len(job.timesteps):
            return 0
        device = job.latents.device
        job.latents = state["latents"].to(device)
        for name, value in state["scheduler"].items():
            setattr(job.scheduler, name, _to(value, device))
        job.step = step
        job.guard.steps_done = step
        self.resumed_from = step
        self._last = time.monotonic()
        log.info("resumed a denoising loop at step %d of %d from %s", step, len(job.timesteps), self.path)
        return step

    def maybe_save(self, job) -> bool:
        """Save if `every_s` has passed since the last save (or the start) and steps remain."""
        if job.finished or time.monotonic() - self._last < self.every_s:
            return False
        self.save(job)
        return True

    def save(self, job) -> None:
        import torch

        state = {
            "format": FORMAT,
            "request": self.request,
            "step": job.step,
            "latents": job.latents.detach().cpu(),
            "scheduler": {
                name: _to(getattr(job.scheduler, name), "cpu")
                for name in SCHEDULER_STATE
                if hasattr(job.scheduler, name)
            },
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Readers see the previous checkpoint or this one, never half of one.
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(buffer.getbuffer())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.saved += 1
        self._last = time.monotonic()

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


def sweep(directory: Path, older_than_s: float) -> int:
    """Remove checkpoints (and torn temp files) not written for `older_than_s`: jobs that
    finished elsewhere or failed for good. How many went."""
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    cutoff = time.time() - older_than_s
    removed = 0
    for path in list(directory.glob("*.pt")) + list(directory.glob(".*.tmp")):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            pass
    return removed
