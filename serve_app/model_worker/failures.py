"""What a failed model call becomes: an out-of-memory the worker may recover
from, or an error fit for a client (one line, no traceback) that no longer
holds on to the failed call's tensors."""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass

from serve_app.errors import ServiceError, StageFailed
from serve_app.health import Outcome, classify

log = logging.getLogger("ray.serve")

# Longest first line of an unexpected error's message that reaches a client.
MAX_ERROR_TEXT = 300


@dataclass
class CallFailure:
    kind: Outcome  # "oom", "cuda_error" or "error"
    error: BaseException  # what to raise (its traceback's frames already cleared)
    summary: str  # the original error's first line


def sort_failure(exc: Exception, stage: str, number: int) -> CallFailure:
    """Classify model call `number`'s exception and make the error to raise for it.

    Called from the `except` block that caught `exc`, whose caller must
    return rather than raise: a new exception raised there would carry the
    old one (and its frames, and their tensors) along as `__context__`.
    """
    kind = classify(exc)
    summary = first_line(exc)
    if kind == "oom":
        error: BaseException = exc
    elif isinstance(exc, ServiceError):
        error = exc  # deadline, cancellation: already a client-ready error
    else:
        log.error("%s model call %d failed", stage, number, exc_info=exc)
        error = StageFailed(f"{stage} failed: {type(exc).__name__}: {summary}", stage=stage)
    clear_frames(exc)
    return CallFailure(kind, error.with_traceback(None), summary)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else "")[:MAX_ERROR_TEXT]


def clear_frames(exc: BaseException) -> None:
    """Drop the locals of every finished frame the exception's tracebacks hold.

    A traceback keeps each frame of the failed call alive, and with them every
    tensor those frames had in local variables: an out-of-memory error would
    otherwise pin the very memory that ran out until the exception object dies.
    """
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)
        stack += [current.__cause__, current.__context__]
