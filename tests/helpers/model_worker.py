"""A `ModelWorker` around a fake pipeline, and the fakes its tests share (unit and GPU)."""

from __future__ import annotations

from typing import Any

from serve_app.model_worker import ModelWorker
from serve_app.settings.faults import FaultInjection
from serve_app.settings.health import HealthOptions


class FakeVae:
    """Counts `clear_cache` calls: the worker clears the VAE's feature cache after an out-of-memory."""

    def __init__(self) -> None:
        self.cleared = 0

    def clear_cache(self) -> None:
        self.cleared += 1


class FakePipe:
    """What a worker touches of a `WanPipeline`: its `components`. By default a VAE
    with a cache to clear and two components without one."""

    def __init__(self, **components: Any) -> None:
        self._components = components or {"vae": FakeVae(), "transformer": None, "scheduler": object()}

    @property
    def components(self) -> dict[str, Any]:
        return self._components

    @property
    def vae(self) -> Any:
        return self._components.get("vae")


class Held:
    """Stands in for a tensor a failed call had in a local variable."""


def oom(message: str = "CUDA out of memory. Tried to allocate 9.00 GiB"):
    """A real `torch.cuda.OutOfMemoryError` (constructible without a GPU)."""
    import torch

    return torch.cuda.OutOfMemoryError(message)


def make_worker(
    pipe: Any = None,
    *,
    stage: str = "video_encoder",
    device: str = "cpu",
    health: dict | None = None,
    faults: dict | None = None,
) -> ModelWorker:
    """A worker for `stage` on `device`; `health` and `faults` as the `args.health` and `args.faults` blocks."""
    return ModelWorker(
        stage,
        FakePipe() if pipe is None else pipe,
        device,
        HealthOptions(**(health or {})),
        FaultInjection(**(faults or {})),
    )
