"""The real `StageGraph` over the real stage classes, in this process, without Ray.

`LocalHandle` answers what StageGraph asks of a Ray Serve handle:
`handle.method.remote(...)` starts the call as a task and returns a response
that can be awaited, cancelled, or passed to another stage's call, which
awaits it first (as Ray resolves a response given as an argument);
`handle.options(stream=True).method.remote(...)` gives an async iterator over
a streaming method. Errors arrive unwrapped (Ray would wrap them in a
RayTaskError, which StageGraph unwraps).

`local_stages(args)` builds the three model stages (their deployment classes,
`Deployment.func_or_class`) on the CPU with the tiny model.
"""

from __future__ import annotations

import asyncio
from typing import Any


class LocalResponse:
    def __init__(self, coroutine) -> None:
        self._task = asyncio.ensure_future(coroutine)

    def __await__(self):
        return self._task.__await__()

    def cancel(self) -> None:
        self._task.cancel()


async def _resolved(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    args = tuple([await a if isinstance(a, LocalResponse) else a for a in args])
    kwargs = {k: await v if isinstance(v, LocalResponse) else v for k, v in kwargs.items()}
    return args, kwargs


class LocalStream:
    def __init__(self, method, args: tuple, kwargs: dict, seen: list) -> None:
        self._method, self._args, self._kwargs, self._seen = method, args, kwargs, seen
        self._generator = None

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self._generator is None:
            args, kwargs = await _resolved(self._args, self._kwargs)
            self._generator = self._method(*args, **kwargs)
        item = await self._generator.__anext__()
        self._seen.append(item)
        return item

    def cancel(self) -> None:
        if self._generator is not None:
            asyncio.ensure_future(self._generator.aclose())


class _Method:
    def __init__(self, handle: LocalHandle, name: str) -> None:
        self._handle, self._name = handle, name

    def remote(self, *args, **kwargs):
        method = getattr(self._handle.target, self._name)
        calls = self._handle.calls.setdefault(self._name, [])
        if self._handle.stream:
            return LocalStream(method, args, kwargs, calls)

        async def call():
            resolved_args, resolved_kwargs = await _resolved(args, kwargs)
            result = await method(*resolved_args, **resolved_kwargs)
            calls.append(result)
            return result

        return LocalResponse(call())


class LocalHandle:
    """A stage object behind the handle interface StageGraph uses; `calls[name]` holds what each
    method returned (a streaming method: every item it yielded)."""

    def __init__(self, target: Any, stream: bool = False, calls: dict | None = None) -> None:
        self.target = target
        self.stream = stream
        self.calls: dict[str, list] = {} if calls is None else calls

    def options(self, stream: bool = False, **_: Any) -> LocalHandle:
        return LocalHandle(self.target, stream, self.calls)

    def __getattr__(self, name: str) -> _Method:
        if name.startswith("_"):
            raise AttributeError(name)
        return _Method(self, name)


def local_stages(args: dict[str, Any]) -> dict[str, Any]:
    """The three model stages, built by their own constructors in this process."""
    from deployments.denoiser import Denoiser
    from deployments.prompt_encoder import PromptEncoder
    from deployments.video_encoder import VideoEncoder

    return {
        "prompt_encoder": PromptEncoder.func_or_class(args),
        "denoiser": Denoiser.func_or_class(args),
        "video_encoder": VideoEncoder.func_or_class(args),
    }


def shut_down(stages: dict[str, Any]) -> None:
    for stage in stages.values():
        stage._worker.shutdown(wait=True)
