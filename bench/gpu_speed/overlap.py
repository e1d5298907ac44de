"""Two parts of a request at once, as the service's graph runs them: the picture's encode beside the prompt's.

serve_app/graph.py `_run` sends the prompt to the prompt encoder and the picture
to the video encoder before it awaits either, and the denoiser starts once both
have answered. `run_overlapped` does the same in one process: the image part on
a worker thread, the text part on the caller's thread, both set going before
either is waited on, and it returns only when both are done. Whoever times a
call of it therefore times both parts whole, from before the first starts to
after the later ends; `Overlap` keeps each part's own span beside that.

The image part is given its own CUDA stream by its caller (image_to_video.py),
so its kernels can run beside the text encoder's instead of queueing behind
them on the one stream, as two replicas' do.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Span:
    """When one part ran (time.perf_counter seconds)."""

    started: float
    ended: float

    @property
    def seconds(self) -> float:
        return self.ended - self.started


@dataclass(frozen=True)
class Overlap:
    """Both parts' results and spans."""

    image: Any
    text: Any
    image_span: Span
    text_span: Span

    @property
    def wall_s(self) -> float:
        """From the first part's start to the later part's end: what the pair cost the request."""
        return max(self.image_span.ended, self.text_span.ended) - min(self.image_span.started, self.text_span.started)

    @property
    def saved_s(self) -> float:
        """What running them side by side saved over one after the other."""
        return self.image_span.seconds + self.text_span.seconds - self.wall_s


def _spanned(part: Callable[[], Any]) -> tuple[Any, Span]:
    started = time.perf_counter()
    out = part()
    return out, Span(started, time.perf_counter())


def run_overlapped(
    image_part: Callable[[], Any], text_part: Callable[[], Any], pool: ThreadPoolExecutor | None = None
) -> Overlap:
    """Run `image_part` on `pool`'s worker (a fresh one without) while `text_part` runs here; return when
    both are done.

    A part's exception is raised only after the other part has finished too (the
    service cancels the other stage; here there is nothing running to leave behind).
    """
    if pool is None:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-image-encode") as fresh:
            return run_overlapped(image_part, text_part, fresh)
    image_future = pool.submit(_spanned, image_part)
    try:
        text, text_span = _spanned(text_part)
    finally:
        # An error of the text part is raised only once the image part has finished too.
        image_future.exception()
    image, image_span = image_future.result()
    return Overlap(image=image, text=text, image_span=image_span, text_span=text_span)
