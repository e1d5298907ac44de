"""`wan-video` in a pseudo-terminal, as a person types it, against a live gateway.

Each command runs as its own process (`python -m serve_app.cli`, this tree's code) under pexpect,
so what is checked is what a person sees: the progress bar drawn in a terminal, messages,
Ctrl-C, the exit status. The service is the real gateway over HTTP on a loopback port,
in this process, with a model that takes one step when the test says so
(tests/helpers/live_gateway.py): no Ray.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys

import numpy as np
import pexpect
import pytest

from serve_app.client import ClientError, VideoClient
from serve_app.paths import PROJECT_ROOT
from serve_app.video import probe_mp4
from tests.helpers.app import free_port
from tests.helpers.images import encoded
from tests.helpers.live_gateway import LiveGateway, SteppedGenerator

SMALL = {"size": "64x64", "num_frames": 9, "num_inference_steps": 3, "fps": 8}
SMALL_ARGS = ["--size", "64x64", "--frames", "9", "--steps", "3", "--fps", "8"]
TIMEOUT_S = 30


@pytest.fixture
def live(tmp_path):
    with LiveGateway(tmp_path / "data") as gateway:
        yield gateway


@pytest.fixture
def client(live):
    with VideoClient(live.url) as c:
        yield c


def wan_video(*argv: str, cwd, url: str | None = None) -> pexpect.spawn:
    """`wan-video ARGV...` in a fresh 24x120 terminal, with this tree's code and no $WAN_VIDEO_* of the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAN_VIDEO_")}
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    args = ["-m", "serve_app.cli", *argv, *(["--url", url] if url else [])]
    return pexpect.spawn(
        sys.executable, args, cwd=str(cwd), env=env, encoding="utf-8", timeout=TIMEOUT_S, dimensions=(24, 120)
    )


def exit_status(term: pexpect.spawn) -> int:
    term.expect(pexpect.EOF)
    term.close()
    return term.exitstatus


def test_wait_reattaches_to_a_running_job_with_a_progress_bar_and_downloads(live, client, tmp_path):
    video = client.create("a red kite", **SMALL)
    live.generator.step()
    # The job is running, one step in, before anyone follows it.
    assert next(e for e in client.events(video.id) if e["type"] == "progress")["step"] == 1
    term = wan_video("wait", video.id, "-o", "kite.mp4", cwd=tmp_path, url=live.url)
    term.expect(r"denoising\s*:\s*33%.*1/3")  # the bar catches up from the job's first event
    live.generator.step()
    term.expect(r"denoising\s*:\s*67%.*2/3")
    live.generator.step()
    term.expect(rf"kite\.mp4: {video.id} completed 64x64 9 frames @8 fps, 3 steps")
    assert exit_status(term) == 0
    info = probe_mp4((tmp_path / "kite.mp4").read_bytes())
    assert (info.frames, info.width, info.height) == (9, 64, 64)


def test_wait_for_a_finished_job_downloads_at_once(live, client, tmp_path):
    live.generator.free_running = True
    done = client.create("a lamp", wait=True, **SMALL)
    term = wan_video("wait", done.id, "--no-download", cwd=tmp_path, url=live.url)
    term.expect(rf"{done.id} completed 64x64")
    assert exit_status(term) == 0
    assert not list(tmp_path.glob("*.mp4"))


def test_ctrl_c_in_wait_detaches_and_the_job_runs_on(live, client, tmp_path):
    video = client.create("a slow boat", **SMALL)
    term = wan_video("wait", video.id, cwd=tmp_path, url=live.url)
    live.generator.step()
    term.expect("1/3")
    term.sendintr()
    term.expect(rf"detached; {video.id} keeps running \(`wan-video wait {video.id}`")
    assert exit_status(term) == 130
    assert client.get(video.id).status == "in_progress"
    live.generator.step(2)
    assert client.wait(video.id, timeout=TIMEOUT_S).status == "completed"


def test_ctrl_c_in_generate_cancels_its_job(live, client, tmp_path):
    term = wan_video("generate", "a paper boat", *SMALL_ARGS, cwd=tmp_path, url=live.url)
    live.generator.step()
    term.expect("1/3")
    term.sendintr()
    term.expect(r"interrupted; cancelled (video_\w+)")
    video_id = term.match.group(1)
    assert exit_status(term) == 130
    final = client.wait(video_id, timeout=TIMEOUT_S)
    assert final.status == "failed" and final.error is not None and final.error.code == "cancelled"


def test_generate_with_an_image_uploads_it_as_the_first_frame(live, client, tmp_path):
    image = encoded(np.full((48, 80, 3), 200, np.uint8))
    (tmp_path / "cat.png").write_bytes(image)
    live.generator.free_running = True
    term = wan_video(
        "generate", "the cat wakes up", "--image", "cat.png", *SMALL_ARGS, "-q", cwd=tmp_path, url=live.url
    )
    term.expect(r"(video_\w+)\.mp4: \1 completed 64x64 9 frames")
    video_id = term.match.group(1)
    assert exit_status(term) == 0
    # The service got the file itself, as a multipart part: it reports the file's hash.
    assert client.get(video_id).input_reference_sha256 == hashlib.sha256(image).hexdigest()
    assert (tmp_path / f"{video_id}.mp4").is_file()


def test_generate_with_a_missing_image_exits_2(live, tmp_path):
    term = wan_video("generate", "x", "--image", "nope.png", cwd=tmp_path, url=live.url)
    term.expect("--image 'nope.png' is not a file")
    assert exit_status(term) == 2


def test_delete_reports_each_id_and_exits_2_if_one_failed(live, client, tmp_path):
    live.generator.free_running = True
    done = client.create("a lamp", wait=True, **SMALL)
    assert done.status == "completed"
    term = wan_video("delete", done.id, "video_missing", cwd=tmp_path, url=live.url)
    term.expect(rf"{done.id}: deleted")
    term.expect(r"video_missing: HTTP 404 not_found")
    assert exit_status(term) == 2
    with pytest.raises(ClientError) as gone:
        client.get(done.id)
    assert gone.value.status == 404


def test_presets_prints_the_services_table(live, tmp_path):
    term = wan_video("presets", cwd=tmp_path, url=live.url)
    term.expect(r"PRESET\s+SIZE\s+FRAMES\s+STEPS\s+GUIDANCE\s+FPS\s+DESCRIPTION")
    term.expect(r"preview \(default\)\s+640x480\s+17\s+20")
    term.expect(r"limits: sides 64-1280 px")
    assert exit_status(term) == 0


def test_batch_runs_a_file_and_resumes(live, tmp_path):
    live.generator.free_running = True
    lines = [{"id": "kite", "prompt": "a kite", **SMALL}, {"id": "boat", "prompt": "a boat", **SMALL}]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    term = wan_video("batch", "prompts.jsonl", "--out", "results", cwd=tmp_path, url=live.url)
    term.expect(r"2 completed, 0 failed, 0 skipped of 2")
    assert exit_status(term) == 0
    assert probe_mp4((tmp_path / "results" / "kite.mp4").read_bytes()).frames == 9
    assert (tmp_path / "results" / "boat.mp4").is_file()
    again = wan_video("batch", "prompts.jsonl", "--out", "results", cwd=tmp_path, url=live.url)
    again.expect(r"0 completed, 0 failed, 2 skipped of 2")
    assert exit_status(again) == 0


def test_ctrl_c_in_batch_exits_at_once_and_leaves_its_jobs_running(live, client, tmp_path):
    (tmp_path / "prompts.jsonl").write_text(json.dumps({"id": "kite", "prompt": "a held kite", **SMALL}) + "\n")
    term = wan_video("batch", "prompts.jsonl", "--out", "results", cwd=tmp_path, url=live.url)
    assert live.generator.started.wait(TIMEOUT_S)  # its one job is running, held at step 0
    term.expect("0/1")
    term.sendintr()
    term.expect("interrupted; submitted jobs keep running on the service. Rerun the same command to resume.")
    assert exit_status(term) == 130
    [held] = [v for v in client.list().data if v.prompt == "a held kite"]
    live.generator.step(3)  # not cancelled: it runs on to the end
    assert client.wait(held.id, timeout=TIMEOUT_S).status == "completed"


def test_batch_usage_errors_name_wan_video_batch(tmp_path):
    term = wan_video("batch", "missing.jsonl", "--out", "results", "--concurrency", "0", cwd=tmp_path)
    term.expect(r"wan-video batch: error: --concurrency 0 must be at least 1")
    assert exit_status(term) == 2


@pytest.mark.parametrize(
    "argv",
    [["list"], ["wait", "video_abc"], ["presets"], ["generate", "a kite"], ["delete", "video_abc"]],
    ids=lambda argv: argv[0],
)
def test_no_service_says_how_to_start_one(tmp_path, argv):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    term = wan_video(*argv, cwd=tmp_path, url=url)
    term.expect(rf"cannot reach {re.escape(url)}")
    term.expect(r"Start it in another terminal with `wan-video serve`")
    assert exit_status(term) == 69


def test_batch_with_no_service_says_how_to_start_one_instead_of_failing_each_item(tmp_path):
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "a kite"}\n{"prompt": "a boat"}\n')
    url = f"http://127.0.0.1:{free_port()}"
    term = wan_video("batch", "prompts.jsonl", "--out", "results", cwd=tmp_path, url=url)
    term.expect(r"Start it in another terminal with `wan-video serve`")
    assert exit_status(term) == 69
    assert not (tmp_path / "results").exists()


def test_help_lists_every_exit_code(tmp_path):
    term = wan_video("wait", "--help", cwd=tmp_path)
    term.expect(r"usage: wan-video wait")
    for code in ("0", "1", "2", "69", "75", "130"):
        term.expect(rf"\n\s+{code}\s+\w")
    assert exit_status(term) == 0


def test_stepped_generator_holds_a_job_until_stepped(live, client):
    # The fixture the terminal tests lean on: no step, no progress.
    video = client.create("held", **SMALL)
    assert live.generator.started.wait(TIMEOUT_S)
    assert client.get(video.id).progress == 0
    live.generator.step(3)
    assert client.wait(video.id, timeout=TIMEOUT_S).status == "completed"


def test_free_running_generator_needs_no_steps(tmp_path):
    with LiveGateway(tmp_path, SteppedGenerator(free_running=True)) as live, VideoClient(live.url) as c:
        assert c.create("free", wait=True, **SMALL).status == "completed"
