"""`wan-video` and the batch runner against the real application over HTTP.

The CLI and the batch run in-process (`main([...])`), as a user's shell
would run them, against the session's Serve app.

The `ray job submit` path runs in tests/integration/test_ray_job_batch.py,
against a head node of its own (the session cluster has no dashboard, so no
Jobs API).
"""

from __future__ import annotations

import json
import uuid

import pytest
from ray._common.test_utils import wait_for_condition

from serve_app import batch, cli
from serve_app.client import VideoClient
from serve_app.video import probe_mp4

pytestmark = pytest.mark.integration

SMALL = ["--size", "64x64", "--frames", "9", "--steps", "3", "--fps", "8"]
SMALL_FIELDS = {"size": "64x64", "num_frames": 9, "num_inference_steps": 3, "fps": 8}
# ~50 ms a step on two cores: seconds of denoising, time to act mid-loop.
SLOW_FIELDS = {"size": "640x480", "num_frames": 17, "num_inference_steps": 100}


@pytest.fixture
def video_client(serve_url):
    with VideoClient(serve_url) as c:
        yield c


def _tag() -> str:
    return uuid.uuid4().hex[:8]


def _videos_with_prompts(video_client, prompts) -> list:
    return [v for v in video_client.iter_all() if v.prompt in prompts]


def test_generate_downloads_a_playable_mp4(serve_url, tmp_path, capsys, video_client):
    out = tmp_path / "kite.mp4"
    prompt = f"a red kite over a beach {_tag()}"
    assert cli.main(["generate", prompt, *SMALL, "--seed", "5", "-o", str(out), "--url", serve_url]) == 0

    info = probe_mp4(out.read_bytes())
    assert (info.frames, info.width, info.height, info.fps) == (9, 64, 64, 8.0)
    captured = capsys.readouterr()
    video_id = captured.out.split()[1]
    assert (
        captured.out.startswith(f"{out}: video_") and "completed 64x64 9 frames @8 fps, 3 steps, seed 5" in captured.out
    )
    assert "denoising" in captured.err  # the bar followed the SSE steps

    # status, list and download of the same video.
    assert cli.main(["status", video_id, "--url", serve_url]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["id"], status["status"], status["prompt"]) == (video_id, "completed", prompt)
    assert cli.main(["list", "--limit", "100", "--url", serve_url]) == 0
    listing = capsys.readouterr().out
    assert listing.startswith("ID") and video_id in listing
    thumb = tmp_path / "kite.jpg"
    assert cli.main(["download", video_id, "--thumbnail", "-o", str(thumb), "--url", serve_url]) == 0
    assert thumb.read_bytes()[:2] == b"\xff\xd8"


def test_generate_errors_map_to_exit_codes(serve_url, tmp_path, capsys):
    # Refused by validation: exit 2 with the service's message.
    assert cli.main(["generate", "x", "--size", "64x64", "--frames", "16", "--url", serve_url]) == 2
    err = capsys.readouterr().err
    assert "invalid_request" in err and "num_frames=16 is not of the form 4k+1" in err
    # Accepted, then failed (its deadline passes mid-denoising; this app runs
    # without admission, which would refuse it up front): exit 1 with the job's error.
    out = tmp_path / "never.mp4"
    code = cli.main(
        [
            "generate",
            f"too slow {_tag()}",
            "--size",
            "640x480",
            "--frames",
            "17",
            "--steps",
            "100",
            "--deadline",
            "0.5",
            "-o",
            str(out),
            "--quiet",
            "--url",
            serve_url,
        ]
    )
    assert code == 1 and not out.exists()
    assert "failed: deadline_exceeded" in capsys.readouterr().err
    # Unknown id: exit 2, not found.
    assert cli.main(["status", "video_doesnotexist", "--url", serve_url]) == 2
    assert "not_found" in capsys.readouterr().err


def test_cancel_stops_a_running_job(serve_url, video_client, capsys):
    video = video_client.create(f"a long pan {_tag()}", **SLOW_FIELDS)
    wait_for_condition(lambda: video_client.get(video.id).status == "in_progress", timeout=60, retry_interval_ms=50)
    assert cli.main(["cancel", video.id, "--url", serve_url]) == 0
    assert f"{video.id}: cancel requested" in capsys.readouterr().out
    final = video_client.wait(video.id, timeout=60)
    assert final.status == "failed" and final.error.code == "cancelled"
    assert cli.main(["status", video.id, "--url", serve_url]) == 1  # a failed job
    capsys.readouterr()
    # Cancelling a finished job is the service's 409, printed: exit 2.
    assert cli.main(["cancel", video.id, "--url", serve_url]) == 2
    assert "already failed" in capsys.readouterr().err


def test_batch_generates_resumes_and_never_duplicates(serve_url, tmp_path, video_client, capsys):
    tag = _tag()
    prompts = [f"batch lighthouse {tag}", f"batch boat {tag}", f"batch forest {tag}", f"batch invalid {tag}"]
    lines = [
        {"id": "lighthouse", "prompt": prompts[0], **SMALL_FIELDS, "seed": 1},
        {"id": "boat", "prompt": prompts[1], **SMALL_FIELDS},
        {"prompt": prompts[2], **SMALL_FIELDS, "negative_prompt": "blur"},  # id: its line number, 3
        {"id": "bad", "prompt": prompts[3], **SMALL_FIELDS, "num_frames": 16},
    ]
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "results"
    argv = [str(jsonl), "--out", str(out), "--url", serve_url, "--concurrency", "2"]

    assert batch.main(argv) == 1  # one item failed
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["total"], summary["completed"], summary["failed"], summary["skipped"]) == (4, 3, 1, 0)
    for item_id in ("lighthouse", "boat", "3"):
        info = probe_mp4((out / f"{item_id}.mp4").read_bytes())
        assert (info.frames, info.width, info.height) == (9, 64, 64)
        assert json.loads((out / f"{item_id}.json").read_text())["status"] == "completed"
    bad = json.loads((out / "bad.json").read_text())
    assert bad["status"] == "failed" and bad["error"]["code"] == "invalid_request"
    assert bad["error"]["param"] == "num_frames"
    assert "3 completed, 1 failed, 0 skipped of 4" in capsys.readouterr().out

    jobs = _videos_with_prompts(video_client, prompts)
    assert len(jobs) == 3  # the refused line never became a job

    # Rerun: the three finished items are skipped, nothing new is generated.
    assert batch.main(argv) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["completed"], summary["failed"], summary["skipped"]) == (0, 1, 3)
    assert len(_videos_with_prompts(video_client, prompts)) == 3

    # A crash after submitting but before saving the mp4: the rerun gets the
    # same job back by its Idempotency-Key and only downloads it.
    boat_job = json.loads((out / "boat.json").read_text())["id"]
    (out / "boat.mp4").unlink()
    assert batch.main(argv) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["completed"], summary["failed"], summary["skipped"]) == (1, 1, 2)
    assert json.loads((out / "boat.json").read_text())["id"] == boat_job
    assert probe_mp4((out / "boat.mp4").read_bytes()).frames == 9
    assert sorted(v.id for v in _videos_with_prompts(video_client, prompts)) == sorted(v.id for v in jobs)
