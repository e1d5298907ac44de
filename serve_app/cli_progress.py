"""The progress bar of `wan-video generate` and `wan-video wait`, fed by a job's event stream."""

from __future__ import annotations

from typing import Any


class ProgressView:
    """A tqdm bar driven by SSE events: queue position while queued, steps while denoising."""

    def __init__(self, enabled: bool, label: str = "submitted") -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=None, unit="step", disable=not enabled, dynamic_ncols=True, leave=True)
        self.bar.set_description(label)

    def show_queued(self, position: int | None, eta_s: float | None) -> None:
        where = "queued" if position is None else f"queued (position {position})"
        self.bar.set_description(where)
        if eta_s is not None:
            self.bar.set_postfix_str(f"eta {eta_s:.1f}s")
        self.bar.refresh()

    def on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "queued":
            # The runner sends it when it picks the job up: position 0 means it
            # is now encoding the prompt; a retry after a crash says attempt > 1.
            position = event.get("queue_position")
            if position:
                self.show_queued(position, event.get("eta_s"))
            else:
                self.bar.set_description(
                    "starting" if (event.get("attempt") or 1) <= 1 else f"retry {event['attempt']}"
                )
                self.bar.refresh()
        elif kind == "progress":
            total, step = event.get("total_steps"), event.get("step", 0)
            if total and self.bar.total != total:
                self.bar.reset(total=total)
            self.bar.set_description("denoising")
            self.bar.n = step
            eta = event.get("eta_s")
            self.bar.set_postfix_str("" if eta is None else f"eta {eta:.1f}s")
            self.bar.refresh()
        elif kind in ("completed", "failed"):
            self.bar.set_description(kind)
            self.bar.set_postfix_str("")
            self.bar.refresh()

    def close(self) -> None:
        self.bar.close()
