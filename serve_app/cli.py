"""`wan-video`: the command line of the text-to-video service.

    wan-video generate "a lighthouse at dusk" --size 256x128 --frames 17 -o lighthouse.mp4
    wan-video status video_...        wan-video list --limit 5
    wan-video cancel video_...        wan-video download video_... -o out.mp4
    wan-video serve [--config configs/serve_gpu.yaml] [--check]

Exit codes: 0 ok; 1 the job failed (or `status` of a failed job); 2 usage
error, or an error answer of the service (its message goes to stderr);
130 interrupted (`generate` cancels its job first).

`--url` defaults to $WAN_VIDEO_URL, else http://127.0.0.1:8000; `--api-key`
to $WAN_VIDEO_API_KEY.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from serve_app.api.protocol import VideoObject
from serve_app.cli_serve import add_serve_parser, cmd_serve, serve_command
from serve_app.client import DEFAULT_URL, ClientError, VideoClient

__all__ = ["build_parser", "main", "serve_command"]

EXIT_OK, EXIT_FAILED, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130
# sysexits' EX_TEMPFAIL: the service is busy (429/503); the same command may work later.
EXIT_BUSY = 75
URL_ENV, API_KEY_ENV = "WAN_VIDEO_URL", "WAN_VIDEO_API_KEY"
SIZE_RE = re.compile(r"^(\d+)x(\d+)$")

# CLI option -> request field; only options the user gave are sent, so the
# preset on the server fills the rest.
GENERATION_OPTIONS = {
    "preset": "preset",
    "size": "size",
    "frames": "num_frames",
    "steps": "num_inference_steps",
    "guidance": "guidance_scale",
    "seed": "seed",
    "fps": "fps",
    "negative": "negative_prompt",
    "deadline": "deadline_s",
}


def _size(text: str) -> str:
    if not SIZE_RE.match(text):
        raise argparse.ArgumentTypeError(f"size {text!r} is not WIDTHxHEIGHT, e.g. 640x480")
    return text


def generation_fields(args: argparse.Namespace) -> dict[str, Any]:
    return {field: getattr(args, opt) for opt, field in GENERATION_OPTIONS.items() if getattr(args, opt) is not None}


def _err(message: str) -> None:
    print(f"wan-video: {message}", file=sys.stderr)


def _describe(video: VideoObject) -> str:
    return (
        f"{video.id} {video.status} {video.width}x{video.height} {video.num_frames} frames "
        f"@{video.fps} fps, {video.num_inference_steps} steps, seed {video.seed}"
    )


# --- generate -------------------------------------------------------------------------


class ProgressView:
    """A tqdm bar driven by SSE events: queue position while queued, steps while denoising."""

    def __init__(self, enabled: bool) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=None, unit="step", disable=not enabled, dynamic_ncols=True, leave=True)
        self.bar.set_description("submitted")

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


def cmd_generate(client: VideoClient, args: argparse.Namespace) -> int:
    video = client.create(args.prompt, **generation_fields(args))
    if args.no_wait:
        print(video.id)
        return EXIT_OK
    view = ProgressView(enabled=not args.quiet)
    try:
        if video.status == "queued":
            view.show_queued(video.queue_position, video.eta_s)
        final = client.wait(video.id, on_event=view.on_event)
    except KeyboardInterrupt:
        view.close()
        # The job would run on after we leave; nobody would fetch it.
        try:
            client.cancel(video.id)
            _err(f"interrupted; cancelled {video.id}")
        except ClientError as exc:
            _err(f"interrupted; could not cancel {video.id}: {exc}")
        return EXIT_INTERRUPTED
    finally:
        view.close()
    if final.status != "completed":
        error = final.error
        reason = f"{error.code}: {error.message}" if error else "no error reported"
        _err(f"{final.id} failed: {reason}")
        return EXIT_FAILED
    output = Path(args.output or f"{final.id}.mp4")
    client.download(final.id, output)
    took = f", {final.timings.total_s:.2f} s" if final.timings.total_s is not None else ""
    print(f"{output}: {_describe(final)}{took}")
    return EXIT_OK


# --- status, list, cancel, download -----------------------------------------------------


def cmd_status(client: VideoClient, args: argparse.Namespace) -> int:
    video = client.get(args.id)
    print(video.model_dump_json(indent=2))
    return EXIT_FAILED if video.status == "failed" else EXIT_OK


def _age(created_at: int) -> str:
    seconds = max(0, int(time.time()) - created_at)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def cmd_list(client: VideoClient, args: argparse.Namespace) -> int:
    page = client.list(limit=args.limit, after=args.after, order=args.order)
    if args.json:
        print(page.model_dump_json(indent=2))
        return EXIT_OK
    rows = [("ID", "STATUS", "PROGRESS", "SIZE", "FRAMES", "CREATED", "PROMPT")]
    for v in page.data:
        prompt = v.prompt if len(v.prompt) <= 40 else v.prompt[:37] + "..."
        rows.append((v.id, v.status, f"{v.progress}%", v.size, str(v.num_frames), _age(v.created_at), prompt))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    if page.has_more:
        print(f"(more: --after {page.last_id})")
    return EXIT_OK


def cmd_cancel(client: VideoClient, args: argparse.Namespace) -> int:
    video = client.cancel(args.id)
    print(f"{video.id}: cancel requested (status {video.status})")
    return EXIT_OK


def cmd_download(client: VideoClient, args: argparse.Namespace) -> int:
    suffix = "jpg" if args.thumbnail else "mp4"
    path = client.download(args.id, args.output or f"{args.id}.{suffix}", "thumbnail" if args.thumbnail else "video")
    print(path)
    return EXIT_OK


# --- parser ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument(
        "--url", default=os.environ.get(URL_ENV, DEFAULT_URL), help=f"service URL (${URL_ENV}, default {DEFAULT_URL})"
    )
    connection.add_argument("--api-key", default=os.environ.get(API_KEY_ENV), help=f"bearer token (${API_KEY_ENV})")
    connection.add_argument("--timeout", type=float, default=60.0, help="seconds per HTTP request (default 60)")

    parser = argparse.ArgumentParser(
        prog="wan-video", description="Text-to-video (Wan2.2-TI2V-5B) on Ray Serve: generate and manage videos."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = sub.add_parser("generate", parents=[connection], help="generate a video and download the mp4")
    gen.add_argument("prompt")
    gen.add_argument("-o", "--output", help="mp4 path (default VIDEO_ID.mp4)")
    gen.add_argument("--preset", help="preview (service default), standard or official")
    gen.add_argument("--size", type=_size, help="WIDTHxHEIGHT, multiples of 32")
    gen.add_argument("--frames", type=int, help="number of frames, 4k+1")
    gen.add_argument("--steps", type=int, help="denoising steps")
    gen.add_argument("--guidance", type=float, help="guidance scale (<= 1 turns it off)")
    gen.add_argument("--seed", type=int)
    gen.add_argument("--fps", type=int)
    gen.add_argument("--negative", help="negative prompt")
    gen.add_argument("--deadline", type=float, help="seconds one run of the job may take")
    gen.add_argument("--no-wait", action="store_true", help="print the job id and return at once")
    gen.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    gen.set_defaults(run=cmd_generate)

    status = sub.add_parser("status", parents=[connection], help="print a video object (exit 1 if it failed)")
    status.add_argument("id")
    status.set_defaults(run=cmd_status)

    lst = sub.add_parser("list", parents=[connection], help="list videos, newest first")
    lst.add_argument("--limit", type=int, default=20, help="1-100 (default 20)")
    lst.add_argument("--after", help="id of the last video of the previous page")
    lst.add_argument("--order", choices=["asc", "desc"], default="desc")
    lst.add_argument("--json", action="store_true", help="the raw list object")
    lst.set_defaults(run=cmd_list)

    cancel = sub.add_parser("cancel", parents=[connection], help="stop a queued or running job")
    cancel.add_argument("id")
    cancel.set_defaults(run=cmd_cancel)

    download = sub.add_parser("download", parents=[connection], help="download a finished video")
    download.add_argument("id")
    download.add_argument("-o", "--output", help="path (default VIDEO_ID.mp4)")
    download.add_argument("--thumbnail", action="store_true", help="the JPEG thumbnail instead")
    download.set_defaults(run=cmd_download)

    add_serve_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return cmd_serve(args)
    try:
        with VideoClient(args.url, api_key=args.api_key, timeout=args.timeout) as client:
            return args.run(client, args)
    except ClientError as exc:
        _err(str(exc))
        if exc.status in (429, 503):
            retry = (exc.details or {}).get("retry_after_s")
            if retry is not None:
                _err(f"the service is busy; retry in {retry} s")
            return EXIT_BUSY
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
