"""`wan-video`: the command line of the text-to-video service.

    wan-video generate "a lighthouse at dusk" --size 256x128 --frames 17 -o lighthouse.mp4
    wan-video generate "the cat wakes up" --image cat.png -o cat.mp4
    wan-video generate "a paper boat" --no-wait      -> video_...; then: wan-video wait video_...
    wan-video status video_...        wan-video list --limit 5        wan-video presets
    wan-video cancel video_...        wan-video delete video_...      wan-video download video_... -o out.mp4
    wan-video batch prompts.jsonl --out results/
    wan-video serve [--config configs/serve_gpu.yaml] [--check]

Exit codes: see EXIT_CODES_HELP (printed by every `--help`).

`--url` defaults to $WAN_VIDEO_URL, else http://127.0.0.1:8000; `--api-key`
to $WAN_VIDEO_API_KEY.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from serve_app import batch
from serve_app.api.protocol import VideoObject
from serve_app.cli_presets import format_presets, local_presets
from serve_app.cli_progress import ProgressView
from serve_app.cli_serve import add_serve_parser, cmd_serve, serve_command
from serve_app.client import DEFAULT_URL, VideoClient
from serve_app.client_wire import ClientError, ServiceUnreachable

__all__ = ["ProgressView", "build_parser", "main", "run", "serve_command"]

EXIT_OK, EXIT_FAILED, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130
# sysexits' EX_UNAVAILABLE: no service answered at --url.
EXIT_UNREACHABLE = 69
# sysexits' EX_TEMPFAIL: the service is busy (429/503); the same command may work later.
EXIT_BUSY = 75
EXIT_CODES_HELP = """exit codes:
  0    ok
  1    the job failed (generate, wait; status of a failed job; batch: an item failed)
  2    usage error, or the service refused the request (its message goes to stderr)
  69   no service answered at --url (how to start one goes to stderr)
  75   the service is busy (HTTP 429/503): the same command may work later
  130  interrupted (Ctrl-C): generate cancels its job first; wait and batch leave jobs running"""
URL_ENV, API_KEY_ENV = "WAN_VIDEO_URL", "WAN_VIDEO_API_KEY"
SIZE_RE = re.compile(r"^(\d+)x(\d+)$")
START_HINT = (
    "is the service running? Start it in another terminal with `wan-video serve` (tiny model, CPU; "
    f"`wan-video serve --config configs/serve_gpu.yaml` on a GPU), or point --url or ${URL_ENV} at a running one."
)

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


# --- following a job ------------------------------------------------------------------


def finish(client: VideoClient, final: VideoObject, output: str | None, download: bool = True) -> int:
    """Report a terminal job: its error (exit 1), or download the mp4 and say where (exit 0)."""
    if final.status != "completed":
        error = final.error
        reason = f"{error.code}: {error.message}" if error else "no error reported"
        _err(f"{final.id} failed: {reason}")
        return EXIT_FAILED
    took = f", {final.timings.total_s:.2f} s" if final.timings.total_s is not None else ""
    if not download:
        print(f"{_describe(final)}{took}")
        return EXIT_OK
    path = Path(output or f"{final.id}.mp4")
    client.download(final.id, path)
    print(f"{path}: {_describe(final)}{took}")
    return EXIT_OK


# --- generate, wait -------------------------------------------------------------------


def create_with_image(client: VideoClient, prompt: str, image: Path, fields: dict[str, Any]) -> VideoObject:
    """POST /v1/videos as multipart/form-data with the image as the file part `input_reference`,
    the way the OpenAI SDK sends `videos.create(input_reference=open(...))`; queued, as `create`."""
    data = {"prompt": prompt, **{k: str(v) for k, v in fields.items()}}
    media = mimetypes.guess_type(image.name)[0] or "application/octet-stream"
    files = {"input_reference": (image.name, image.read_bytes(), media)}
    # VideoClient's own plumbing: its errors and "unreachable" mapping apply to this request too.
    response = client._request("POST", "/v1/videos", data=data, files=files, headers={"Prefer": "respond-async"})
    return VideoObject.model_validate(response.json())


def cmd_generate(client: VideoClient, args: argparse.Namespace) -> int:
    if args.image is not None:
        if not args.image.is_file():
            _err(f"--image {str(args.image)!r} is not a file")
            return EXIT_ERROR
        video = create_with_image(client, args.prompt, args.image, generation_fields(args))
    else:
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
    return finish(client, final, args.output)


def cmd_wait(client: VideoClient, args: argparse.Namespace) -> int:
    video = client.get(args.id)  # a wrong id fails here, before any bar is drawn
    if video.status in ("completed", "failed"):
        return finish(client, video, args.output, download=not args.no_download)
    view = ProgressView(enabled=not args.quiet, label="attaching")
    try:
        # The event stream starts from the job's first event: the bar catches up at once.
        final = client.wait(video.id, on_event=view.on_event)
    except KeyboardInterrupt:
        view.close()
        # Unlike generate's, this job may be someone else's or wanted later: leave it running.
        _err(f"detached; {video.id} keeps running (`wan-video wait {video.id}` to follow it again)")
        return EXIT_INTERRUPTED
    finally:
        view.close()
    return finish(client, final, args.output, download=not args.no_download)


# --- status, list, presets, cancel, delete, download ------------------------------------


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


def cmd_presets(client: VideoClient | None, args: argparse.Namespace) -> int:
    # GET /v1/presets: VideoClient has no method for it (the lead may add one); its plumbing maps errors.
    answer = local_presets() if client is None else client._request("GET", "/v1/presets").json()
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        print(format_presets(answer))
    return EXIT_OK


def cmd_cancel(client: VideoClient, args: argparse.Namespace) -> int:
    video = client.cancel(args.id)
    print(f"{video.id}: cancel requested (status {video.status})")
    return EXIT_OK


def cmd_delete(client: VideoClient, args: argparse.Namespace) -> int:
    """Each id in turn; one that fails is reported and the rest are still deleted."""
    code = EXIT_OK
    for video_id in args.ids:
        try:
            client.delete(video_id)
        except ServiceUnreachable:
            raise
        except ClientError as exc:
            _err(f"{video_id}: {exc}")
            code = EXIT_ERROR
            continue
        print(f"{video_id}: deleted")
    return code


def cmd_download(client: VideoClient, args: argparse.Namespace) -> int:
    suffix = "jpg" if args.thumbnail else "mp4"
    path = client.download(args.id, args.output or f"{args.id}.{suffix}", "thumbnail" if args.thumbnail else "video")
    print(path)
    return EXIT_OK


# --- batch ----------------------------------------------------------------------------


def cmd_batch(client: VideoClient, args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str]) -> int:
    # One cheap request first: with no service, say how to start one instead of failing every item.
    # Not before a usage error, which batch.main reports (and which needs no service to fix).
    if args.concurrency >= 1 and args.input.is_file():
        try:
            client.list(limit=1)
        except ServiceUnreachable:
            raise
        except ClientError:
            pass  # an answer, even a refusal, means the service is there; the batch reports its own errors
    return batch.main(argv, parser=parser)


# --- parser ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument(
        "--url", default=os.environ.get(URL_ENV, DEFAULT_URL), help=f"service URL (${URL_ENV}, default {DEFAULT_URL})"
    )
    connection.add_argument("--api-key", default=os.environ.get(API_KEY_ENV), help=f"bearer token (${API_KEY_ENV})")
    connection.add_argument("--timeout", type=float, default=60.0, help="seconds per HTTP request (default 60)")
    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    formatter = argparse.RawDescriptionHelpFormatter  # keeps the exit codes' lines as written

    parser = argparse.ArgumentParser(
        prog="wan-video",
        description="Text-to-video (Wan2.2-TI2V-5B) on Ray Serve: generate and manage videos, run the service.",
        epilog=EXIT_CODES_HELP,
        formatter_class=formatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, help: str, parents: Sequence[argparse.ArgumentParser] = (connection,), conflict: str = "error"
    ) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            parents=list(parents),
            help=help,
            description=help,
            epilog=EXIT_CODES_HELP,
            formatter_class=formatter,
            conflict_handler=conflict,
        )

    gen = command("generate", "generate a video and download the mp4", (connection, quiet))
    gen.add_argument("prompt", help="what the video shows")
    gen.add_argument("-o", "--output", help="mp4 path (default VIDEO_ID.mp4)")
    gen.add_argument(
        "--image", type=Path, metavar="PATH", help="image to video: this PNG/JPEG/WebP becomes the first frame"
    )
    gen.add_argument("--preset", help="preview (service default), standard or official (see `wan-video presets`)")
    gen.add_argument("--size", type=_size, help="WIDTHxHEIGHT, multiples of 32")
    gen.add_argument("--frames", type=int, help="number of frames, 4k+1")
    gen.add_argument("--steps", type=int, help="denoising steps")
    gen.add_argument("--guidance", type=float, help="guidance scale (<= 1 turns it off)")
    gen.add_argument("--seed", type=int, help="seed (default random; the result says which)")
    gen.add_argument("--fps", type=int, help="frames per second of the mp4")
    gen.add_argument("--negative", help="negative prompt: what the video should not show")
    gen.add_argument("--deadline", type=float, help="seconds one run of the job may take")
    gen.add_argument("--no-wait", action="store_true", help="print the job id and return at once (see `wait`)")
    gen.set_defaults(run=cmd_generate)

    wait = command("wait", "follow a job with a progress bar until it ends, then download the mp4", (connection, quiet))
    wait.add_argument("id", help="video id (video_...)")
    wait.add_argument("-o", "--output", help="mp4 path (default VIDEO_ID.mp4)")
    wait.add_argument("--no-download", action="store_true", help="only wait; print the final state")
    wait.set_defaults(run=cmd_wait)

    status = command("status", "print a video object as JSON (exit 1 if it failed)")
    status.add_argument("id", help="video id (video_...)")
    status.set_defaults(run=cmd_status)

    lst = command("list", "list videos, newest first")
    lst.add_argument("--limit", type=int, default=20, help="1-100 (default 20)")
    lst.add_argument("--after", help="id of the last video of the previous page")
    lst.add_argument("--order", choices=["asc", "desc"], default="desc", help="by creation time (default desc)")
    lst.add_argument("--json", action="store_true", help="the raw list object")
    lst.set_defaults(run=cmd_list)

    presets = command("presets", "list the presets and limits the service checks requests against")
    presets.add_argument("--json", action="store_true", help="the raw answer of GET /v1/presets")
    presets.add_argument(
        "--offline", action="store_true", help="the presets this installation ships, without asking a service"
    )
    presets.set_defaults(run=cmd_presets)

    cancel = command("cancel", "stop a queued or running job")
    cancel.add_argument("id", help="video id (video_...)")
    cancel.set_defaults(run=cmd_cancel)

    delete = command("delete", "delete videos and their files (a running job is stopped first)")
    delete.add_argument("ids", nargs="+", metavar="ID", help="video ids (video_...)")
    delete.set_defaults(run=cmd_delete)

    download = command("download", "download a finished video")
    download.add_argument("id", help="video id (video_...)")
    download.add_argument("-o", "--output", help="path (default VIDEO_ID.mp4)")
    download.add_argument("--thumbnail", action="store_true", help="the JPEG thumbnail instead")
    download.set_defaults(run=cmd_download)

    # The batch runner's own options (serve_app/batch.py), so the two never disagree; its -h gives way to ours.
    bat = command(
        "batch",
        "one video per line of a JSONL file, into a folder; rerun to resume",
        (batch.build_parser(),),
        conflict="resolve",
    )
    bat.set_defaults(run=cmd_batch)

    add_serve_parser(sub)
    return parser


def _batch_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found: argparse.ArgumentParser = subparsers.choices["batch"]
    return found


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        return cmd_serve(args)
    if args.command == "presets" and args.offline:
        return cmd_presets(None, args)
    try:
        with VideoClient(args.url, api_key=args.api_key, timeout=getattr(args, "timeout", 60.0)) as client:
            if args.command == "batch":
                # The top-level parser has no options of its own: argv[0] is the command.
                return cmd_batch(client, args, _batch_parser(parser), argv[1:])
            code: int = args.run(client, args)
            return code
    except ServiceUnreachable as exc:
        _err(str(exc))
        _err(START_HINT)
        return EXIT_UNREACHABLE
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


def run() -> None:
    """The console script: `main`, then an exit that does not wait for abandoned batch workers."""
    batch.exit_with(main())


if __name__ == "__main__":
    run()
