"""Tasks that outlive the request that started them.

A job a synchronous request starts runs in a task of its own, so that the job
goes on when its caller hangs up (a keyed retry, or identical requests attached
to it, still want it). Ray Serve has its own idea of what belongs to a request:
every handle call made with that request's context (the `_serve_request_context`
contextvar, which `create_task` copies into a new task) is its child, and when
the caller disconnects Serve cancels the handler and those children. A job task
started inside the request would have its model calls cancelled under it, and
fail "a pipeline stage was cancelled" (tests/integration/test_hang_up.py).

So such tasks start in an empty `contextvars.Context`: no request context, no
parent, as if the gateway's dispatcher had started them.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def detached_task(coro: Coroutine[Any, Any, T], name: str | None = None) -> asyncio.Task[T]:
    """`coro` as a task on the running loop, in a fresh context (none of the caller's contextvars)."""
    return asyncio.get_running_loop().create_task(coro, name=name, context=contextvars.Context())
