"""Batch generation: a JSONL file of prompts in, a folder of mp4s out; resumable.

    python -m serve_app.batch prompts.jsonl --out results/ [--url URL] [--concurrency 4] [--api-key KEY]

Input: one JSON object per line with at least "prompt", optionally any field
of `POST /v1/videos` (size, num_frames, num_inference_steps, seed, ...) and an
"id" (letters, digits, ``._-``; default: the line number), and an "image":
the path of a picture (PNG, JPEG or WebP) that becomes the video's first frame
(image to video), relative to the batch file's folder or absolute
(serve_app/batch_image.py). Blank lines are ignored. A line that is not such an
object, or whose image file cannot be read, is reported with its number and
counted as failed; the rest of the batch runs.

Output, per item: DIR/<id>.mp4 and DIR/<id>.json (the final video object, plus
a "batch" entry with the line, id and idempotency key; for a request the
service refused, the error instead). At the end DIR/summary.json and a
one-line summary (completed / failed / skipped, total time). Exit code 0 when
every item is completed (now or in an earlier run), else 1; 2 for a usage error.

Resume: rerun the same command. An item whose DIR/<id>.mp4 exists and whose
DIR/<id>.json says completed for the same item is skipped. Every item is
submitted with `Idempotency-Key: wan-batch-<sha256 of the item>`, so a batch
that crashed (or was interrupted) after submitting an item gets the same job
back on rerun, finished or still running, instead of generating it twice,
for as long as the service keeps that job. Editing an item (or the picture
its image file holds) changes its key: it is generated anew. A job that failed keeps failing on rerun (same key, same
job) unless `--retry-failed` deletes it and submits the item again.

As a Ray job (runs on the cluster's head node, next to the application, and
reaches it at the default URL http://127.0.0.1:8000):

    ray start --head                       # a cluster with the Jobs API (dashboard)
    serve deploy serve_config.yaml         # or `serve run` in another shell
    ray job submit --working-dir . -- python -m serve_app.batch prompts.jsonl --out /abs/path/results

`--working-dir .` ships the project (and prompts.jsonl, if it lies inside it)
to the job; the job then runs in a temporary copy of that folder, so give
`--out` as an absolute path on the head node, or the results end up in the
copy. `ray job logs -f <id>` follows the progress; `ray job stop <id>` stops
the driver (submitted jobs keep running on the service, and a rerun resumes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn

from pydantic import ValidationError

from serve_app.api.protocol import CreateVideoRequest, VideoObject
from serve_app.batch_image import COLUMN as IMAGE_COLUMN
from serve_app.batch_image import ImageFile, ImageFileError, read_image, resolve_image
from serve_app.client import DEFAULT_URL, ClientError, VideoClient

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# File-name safe and never hidden: ids become DIR/<id>.mp4.
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# An item id may not take the summary's file name.
RESERVED_IDS = frozenset({"summary"})
REQUEST_FIELDS = frozenset(CreateVideoRequest.model_fields)
KEY_PREFIX = "wan-batch-"

ItemStatus = Literal["completed", "failed", "skipped"]


@dataclass(frozen=True)
class BatchItem:
    line: int
    id: str
    fields: dict[str, Any]  # request fields, prompt included
    key: str  # Idempotency-Key
    image: ImageFile | None = None  # the first frame of an image-to-video item


@dataclass(frozen=True)
class BadLine:
    line: int
    message: str


@dataclass
class ItemResult:
    id: str | None
    line: int
    status: ItemStatus
    video_id: str | None = None
    output: str | None = None
    error: dict[str, Any] | None = None


@dataclass
class Summary:
    input: str
    out: str
    total: int
    completed: int = 0
    failed: int = 0
    skipped: int = 0
    elapsed_s: float = 0.0
    items: list[ItemResult] = field(default_factory=list)


# --- input ----------------------------------------------------------------------------


def item_key(item_id: str, fields: dict[str, Any], image_sha256: str | None = None) -> str:
    """The Idempotency-Key of an item: a hash of its id, canonical fields and image's content.

    Canonical JSON (sorted keys, no spaces) so reformatting the file keeps
    the key; the id is part of it so that two items with the same prompt are
    two videos (with a random seed each), not one. The image counts by its
    bytes, not its path: another picture under the same name is another item.
    """
    keyed = {"id": item_id, **fields}
    if image_sha256 is not None:
        keyed["image_sha256"] = image_sha256
    canonical = json.dumps(keyed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return KEY_PREFIX + hashlib.sha256(canonical.encode()).hexdigest()


def parse_line(line_no: int, text: str, base_dir: Path | None = None) -> BatchItem:
    """One JSONL line -> an item; ValueError with the reason otherwise.
    `base_dir`: where a relative `image` path starts (the batch file's folder; default the cwd)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    raw_id = obj.pop("id", None)
    if raw_id is None:
        item_id = str(line_no)
    elif isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool) and ID_RE.match(str(raw_id)):
        item_id = str(raw_id)
    else:
        raise ValueError(
            f"id={raw_id!r} must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    if item_id in RESERVED_IDS:
        raise ValueError(f"id={item_id!r} is reserved (DIR/{item_id}.json is the batch summary)")
    image_value = obj.pop(IMAGE_COLUMN, None)
    unknown = sorted(set(obj) - REQUEST_FIELDS)
    if unknown:
        raise ValueError(
            f"unknown field(s) {unknown}; allowed: id, {IMAGE_COLUMN}, {', '.join(sorted(REQUEST_FIELDS))}"
        )
    if image_value is not None and obj.get("input_reference") is not None:
        raise ValueError(f"give {IMAGE_COLUMN} (a file path) or input_reference, not both")
    if "prompt" not in obj:
        raise ValueError("missing required field 'prompt'")
    try:
        # Types only; the values (4k+1 frames, sizes) are the service's to judge.
        CreateVideoRequest.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(p) for p in first.get("loc", ())) or "line"
        raise ValueError(f"{name}: {first.get('msg')} (got {first.get('input')!r})") from None
    # Last: the only check that reads a file.
    image = None if image_value is None else resolve_image(image_value, base_dir or Path.cwd())
    key = item_key(item_id, obj, image.sha256 if image else None)
    return BatchItem(line=line_no, id=item_id, fields=obj, key=key, image=image)


def load_items(path: Path) -> tuple[list[BatchItem], list[BadLine]]:
    items: list[BatchItem] = []
    bad: list[BadLine] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                item = parse_line(line_no, text, path.parent)
            except ValueError as exc:
                bad.append(BadLine(line_no, str(exc)))
                continue
            if item.id in seen:
                bad.append(BadLine(line_no, f"id={item.id!r} repeats the id of line {seen[item.id]}"))
                continue
            seen[item.id] = line_no
            items.append(item)
    return items, bad


# --- output ---------------------------------------------------------------------------


def write_json(path: Path, obj: Any) -> None:
    """Write-then-rename: a crash never leaves half a sidecar that a rerun would misread."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, ensure_ascii=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _error_dict(exc: Exception) -> dict[str, Any]:
    if isinstance(exc, ClientError):
        return {"code": exc.code, "message": exc.message, "param": exc.param, "http_status": exc.status}
    if isinstance(exc, ImageFileError):
        return {"code": exc.code, "message": str(exc), "param": IMAGE_COLUMN, "http_status": None}
    return {"code": "client_error", "message": f"{type(exc).__name__}: {exc}", "param": None, "http_status": None}


# --- running --------------------------------------------------------------------------


class BatchRunner:
    """Runs items against the service, `concurrency` at a time, one thread each."""

    # How long one item may keep waiting out 429/503 answers before it counts as failed.
    max_busy_wait_s = 1800.0

    def __init__(self, client: VideoClient, out_dir: Path, concurrency: int = 4, retry_failed: bool = False) -> None:
        self.client = client
        self.out_dir = out_dir
        self.concurrency = concurrency
        self.retry_failed = retry_failed
        self.stopping = threading.Event()

    def mp4_path(self, item: BatchItem) -> Path:
        return self.out_dir / f"{item.id}.mp4"

    def sidecar_path(self, item: BatchItem) -> Path:
        return self.out_dir / f"{item.id}.json"

    def previous(self, item: BatchItem) -> dict[str, Any] | None:
        try:
            return json.loads(self.sidecar_path(item).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def is_done(self, item: BatchItem) -> bool:
        """Done in an earlier run: the mp4 is there and the sidecar says completed, for this very item."""
        record = self.previous(item)
        return (
            self.mp4_path(item).is_file()
            and isinstance(record, dict)
            and record.get("status") == "completed"
            and (record.get("batch") or {}).get("idempotency_key") == item.key
        )

    def _batch_info(self, item: BatchItem) -> dict[str, Any]:
        info: dict[str, Any] = {"id": item.id, "line": item.line, "idempotency_key": item.key}
        if item.image is not None:
            info[IMAGE_COLUMN] = str(item.image.path)
        return info

    def _create(self, prompt: str, key: str, fields: dict[str, Any], image: bytes | None = None) -> VideoObject:
        """Create, waiting out "busy" answers (429/503): a batch is patient, it honours
        Retry-After rather than failing items the service would take a little later."""
        waited = 0.0
        while True:
            try:
                return self.client.create(prompt, image=image, idempotency_key=key, **fields)
            except ClientError as exc:
                if exc.status not in (429, 503) or waited >= self.max_busy_wait_s or self.stopping.is_set():
                    raise
                pause = min(float((exc.details or {}).get("retry_after_s") or 5), self.max_busy_wait_s - waited)
                self.stopping.wait(max(pause, 0.1))
                waited += max(pause, 0.1)

    def _submit(self, item: BatchItem) -> VideoObject:
        fields = dict(item.fields)
        prompt = fields.pop("prompt")
        image = read_image(item.image) if item.image is not None else None
        video = self._create(prompt, item.key, fields, image)
        if video.status == "failed" and self.retry_failed:
            # The key still names an earlier run's failed job; deleting the job
            # frees the key, so the same key now makes a new job.
            self.client.delete(video.id)
            video = self._create(prompt, item.key, fields, image)
        return video

    def run_item(self, item: BatchItem) -> ItemResult:
        result = ItemResult(id=item.id, line=item.line, status="failed")
        try:
            video = self._submit(item)
            result.video_id = video.id
            if video.status not in ("completed", "failed"):
                video = self.client.wait(video.id)
            record = {**video.model_dump(mode="json"), "batch": self._batch_info(item)}
            if video.status == "completed":
                # mp4 first, sidecar last: "completed" in the sidecar promises the mp4.
                self.client.download(video.id, self.mp4_path(item))
                write_json(self.sidecar_path(item), record)
                result.status, result.output = "completed", str(self.mp4_path(item))
            else:
                write_json(self.sidecar_path(item), record)
                result.error = (
                    video.error.model_dump() if video.error else {"code": "failed", "message": "no error reported"}
                )
        except Exception as exc:  # noqa: BLE001 - one item's failure must not end the batch
            result.error = _error_dict(exc)
            if self.stopping.is_set():
                result.error = {"code": "interrupted", "message": "the batch was interrupted", "param": None}
            else:
                write_json(
                    self.sidecar_path(item),
                    {"status": "failed", "error": result.error, "batch": self._batch_info(item)},
                )
        return result

    def run(self, items: list[BatchItem], bad: list[BadLine], input_path: Path, progress: bool = True) -> Summary:
        from tqdm import tqdm

        started = time.monotonic()
        summary = Summary(input=str(input_path), out=str(self.out_dir), total=len(items) + len(bad))
        bar = tqdm(total=summary.total, unit="video", disable=not progress, dynamic_ncols=True)

        def record(result: ItemResult) -> None:
            summary.items.append(result)
            setattr(summary, result.status, getattr(summary, result.status) + 1)
            if result.status == "failed" and result.error:
                label = f"line {result.line}" + (f" (id {result.id})" if result.id else "")
                tqdm.write(
                    f"{label}: failed: {result.error.get('code')}: {result.error.get('message')}", file=sys.stderr
                )
            bar.set_postfix(ok=summary.completed, failed=summary.failed, skipped=summary.skipped, refresh=False)
            bar.update(1)

        for b in bad:
            record(ItemResult(id=None, line=b.line, status="failed", error={"code": "bad_line", "message": b.message}))
        todo = []
        for item in items:
            if self.is_done(item):
                previous = self.previous(item) or {}
                record(ItemResult(item.id, item.line, "skipped", previous.get("id"), str(self.mp4_path(item))))
            else:
                todo.append(item)

        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="batch")
        try:
            futures = [pool.submit(self.run_item, item) for item in todo]
            for future in as_completed(futures):
                record(future.result())
        except KeyboardInterrupt:
            # Jobs already submitted run on in the service (a rerun picks them
            # up by their keys); workers still in flight are abandoned, not joined.
            self.stopping.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            if not self.stopping.is_set():
                pool.shutdown(wait=True)
            bar.close()
        summary.items.sort(key=lambda r: r.line)
        summary.elapsed_s = round(time.monotonic() - started, 3)
        return summary


# --- command line ---------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serve_app.batch",
        description="Generate one video per JSONL line through the running service; rerun to resume.",
    )
    parser.add_argument(
        "input",
        type=Path,
        help="JSONL file: one object per line with 'prompt', optional 'id', 'image' (a path) and request fields",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder for <id>.mp4, <id>.json, summary.json")
    parser.add_argument(
        "--url", default=os.environ.get("WAN_VIDEO_URL", DEFAULT_URL), help="service URL ($WAN_VIDEO_URL)"
    )
    parser.add_argument(
        "--api-key", default=os.environ.get("WAN_VIDEO_API_KEY"), help="bearer token ($WAN_VIDEO_API_KEY)"
    )
    parser.add_argument("--concurrency", type=int, default=4, help="items in flight at once (default 4)")
    parser.add_argument("--retry-failed", action="store_true", help="resubmit items whose job failed in an earlier run")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    """`parser`: one with `build_parser`'s options under another name (`wan-video batch`), for its messages."""
    parser = parser or build_parser()
    args = parser.parse_args(argv)
    if args.concurrency < 1:
        parser.error(f"--concurrency {args.concurrency} must be at least 1")
    if not args.input.is_file():
        parser.error(f"input {str(args.input)!r} is not a file")
    items, bad = load_items(args.input)
    args.out.mkdir(parents=True, exist_ok=True)
    with VideoClient(args.url, api_key=args.api_key) as client:
        runner = BatchRunner(client, args.out, args.concurrency, args.retry_failed)
        try:
            summary = runner.run(items, bad, args.input, progress=not args.quiet)
        except KeyboardInterrupt:
            print(
                "interrupted; submitted jobs keep running on the service. Rerun the same command to resume.",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
    write_json(args.out / "summary.json", asdict(summary))
    print(
        f"{summary.completed} completed, {summary.failed} failed, {summary.skipped} skipped "
        f"of {summary.total} in {summary.elapsed_s:.1f} s -> {args.out / 'summary.json'}"
    )
    return EXIT_OK if summary.failed == 0 else EXIT_FAILED


def exit_with(code: int) -> NoReturn:
    """Exit the process with `code`; after an interrupt, without joining abandoned workers.

    They may sit in a blocking read of an event stream that closing the client does not
    wake; a normal exit would join them for up to a read timeout. Every file on disk is
    already whole (renamed into place). `wan-video` (serve_app/cli.py) exits through this too.
    """
    if code == EXIT_INTERRUPTED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    exit_with(main())
