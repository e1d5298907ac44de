"""`wan-video` without a service: arguments, exit codes, the serve command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from serve_app import cli
from serve_app.client import VideoClient
from tests.helpers.wire import sse, video


@pytest.fixture
def service(monkeypatch):
    """Routes the CLI's client to a MockTransport handler the test sets."""
    state = {"handler": None, "requests": []}

    def handler(request):
        state["requests"].append(request)
        return state["handler"](request)

    real = VideoClient
    monkeypatch.setattr(cli, "VideoClient", lambda *a, **k: real(*a, transport=httpx.MockTransport(handler), **k))
    return state


def test_generate_sends_only_given_options_follows_events_and_downloads(service, tmp_path, capsys):
    done = video(status="completed", progress=100, timings={"total_s": 0.5})

    def handler(request):
        if request.method == "POST":
            return httpx.Response(202, json=video())
        if request.url.path.endswith("/events"):
            return httpx.Response(
                200,
                content=sse(1, {"type": "queued", "queue_position": 0, "attempt": 1})
                + sse(2, {"type": "progress", "step": 1, "total_steps": 3, "eta_s": 0.2})
                + sse(3, {"type": "completed", "video": done}),
            )
        return httpx.Response(200, content=b"mp4 bytes")

    service["handler"] = handler
    out = tmp_path / "out.mp4"
    code = cli.main(
        [
            "generate",
            "a red kite",
            "--size",
            "64x64",
            "--frames",
            "9",
            "--steps",
            "3",
            "--seed",
            "7",
            "-o",
            str(out),
            "--url",
            "http://svc",
            "--api-key",
            "k",
        ]
    )
    assert code == 0 and out.read_bytes() == b"mp4 bytes"
    post = service["requests"][0]
    assert json.loads(post.content) == {
        "prompt": "a red kite",
        "size": "64x64",
        "num_frames": 9,
        "num_inference_steps": 3,
        "seed": 7,
    }
    assert post.headers["authorization"] == "Bearer k" and post.headers["prefer"] == "respond-async"
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{out}: video_abc completed 64x64 9 frames")
    assert "denoising" in captured.err  # the progress bar


def test_generate_of_a_failed_job_exits_1_with_the_reason(service, capsys):
    failed = video(status="failed", error={"code": "deadline_exceeded", "message": "stopped after step 2 of 3"})
    service["handler"] = lambda r: (
        httpx.Response(202, json=video())
        if r.method == "POST"
        else httpx.Response(200, content=sse(1, {"type": "failed", "video": failed}))
    )
    assert cli.main(["generate", "x", "--quiet", "--url", "http://svc"]) == 1
    assert "video_abc failed: deadline_exceeded: stopped after step 2 of 3" in capsys.readouterr().err


def test_service_errors_exit_2_with_the_service_message(service, capsys):
    service["handler"] = lambda r: httpx.Response(
        400, json={"error": {"code": "invalid_request", "param": "num_frames", "message": "num_frames=16 is not 4k+1"}}
    )
    assert cli.main(["generate", "x", "--frames", "16", "--url", "http://svc"]) == 2
    assert "invalid_request: num_frames=16 is not 4k+1 (param: num_frames)" in capsys.readouterr().err


@pytest.mark.parametrize("status, code", [(429, "over_capacity"), (503, "service_unavailable")])
def test_a_busy_service_exits_75_with_when_to_retry(service, capsys, status, code):
    service["handler"] = lambda r: httpx.Response(
        status,
        headers={"Retry-After": "12"},
        json={"error": {"code": code, "message": "cannot finish within 30 s now", "param": None, "retry_after_s": 12}},
    )
    assert cli.main(["generate", "x", "--url", "http://svc"]) == cli.EXIT_BUSY == 75
    err = capsys.readouterr().err
    assert code in err and "retry in 12 s" in err


def test_status_exit_code_follows_the_job(service, capsys):
    service["handler"] = lambda r: httpx.Response(200, json=video(status="failed", error={"code": "c", "message": "m"}))
    assert cli.main(["status", "video_abc", "--url", "http://svc"]) == 1
    assert json.loads(capsys.readouterr().out)["status"] == "failed"


def test_url_and_api_key_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("WAN_VIDEO_URL", "http://elsewhere:9000")
    monkeypatch.setenv("WAN_VIDEO_API_KEY", "env-key")
    args = cli.build_parser().parse_args(["list"])
    assert (args.url, args.api_key) == ("http://elsewhere:9000", "env-key")


@pytest.mark.parametrize("argv", [["generate", "x", "--size", "64by64"], ["generate", "x", "--frames", "nine"], []])
def test_usage_errors_exit_2(argv):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2


def test_serve_uses_the_serve_script_of_this_environment():
    command = cli.serve_command("serve_config.yaml")
    assert command[1:] == ["run", "serve_config.yaml"] or command[1:] == [
        "-m",
        "ray.serve.scripts",
        "run",
        "serve_config.yaml",
    ]
    # The script next to this interpreter really is Ray Serve's CLI.
    help_text = subprocess.run([*command[:-2], "run", "--help"], capture_output=True, text=True, timeout=120).stdout
    assert "CONFIG_OR_IMPORT_PATH" in help_text
    if (Path(sys.executable).parent / "serve").exists():
        assert command[0] == str(Path(sys.executable).parent / "serve")


def test_serve_with_a_missing_config_exits_2(tmp_path, capsys):
    assert cli.main(["serve", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
